"""Run one fuzz target under atheris (libFuzzer, coverage-guided): ``run.py TARGET [libFuzzer flags] [DIR...]``.

The xdpsec package is imported under atheris's instrumentation, so libFuzzer sees which branches of our code
an input reached and keeps inputs that reach new ones. Everything after TARGET goes to libFuzzer as is: corpus
directories (the first one receives new inputs), ``-max_total_time=N``, ``-runs=N``,
``-artifact_prefix=DIR/`` (where a crashing input is written). An uncaught exception is a crash: libFuzzer
prints the traceback, writes the input and exits non-zero. tests/fuzz/test_fuzz.py and scripts/fuzz call this.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["xdpsec", "fuzz_targets"]):
    import fuzz_targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: run.py TARGET [libFuzzer args]; targets: {', '.join(fuzz_targets.TARGETS)}")
    target = fuzz_targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
