"""The fuzz targets in the suite: every seed and regression input replayed, then each target fuzzed for a bounded
time (atheris, coverage-guided; 5 s per target, about 45 s in all).

A replayed input passes when the target raises nothing but the named errors (tests/fuzz/fuzz_targets.py). A
fuzzing run passes when libFuzzer exits 0; on a crash the test fails with libFuzzer's output and the crashing
input, to be saved under tests/fuzz/regressions/<target>/ (scripts/fuzz does that itself).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import fuzz_targets as ft
import pytest

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("XDPSEC_FUZZ_SECONDS", "5"))


def _inputs() -> list[tuple[str, Path]]:
    found = []
    for kind in ("corpus", "regressions"):
        for target in ft.TARGETS:
            directory = HERE / kind / target
            if directory.is_dir():
                found += [(target, f) for f in sorted(directory.iterdir()) if f.is_file()]
    return found


INPUTS = _inputs()


def test_every_target_has_a_seed_corpus():
    seeded = {target for target, path in INPUTS if path.parent.parent.name == "corpus"}
    assert seeded == set(ft.TARGETS)


@pytest.mark.parametrize(("target", "path"), INPUTS, ids=[f"{t}/{p.parent.parent.name}/{p.name[:12]}"
                                                           for t, p in INPUTS])
def test_replay(target, path):
    ft.TARGETS[target](path.read_bytes())


def test_the_esp_seeds_decrypt_and_forward():
    """The corpus is only useful if it reaches past the ICV: a seed frame of each data-path target must come
    out of gwB's core as a forwarded inner packet (the fixed keys of fuzz_targets.py made it)."""
    for target, scenarios in (("esp", ft.ESP_SCENARIOS), ("udp_encap", ft.UDP_SCENARIOS),
                              ("ah", ft.AH_SCENARIOS)):
        forwarded = 0
        for t, path in INPUTS:
            data = path.read_bytes()
            if t != target or path.parent.parent.name != "corpus" or data[0] // len(scenarios) != ft.Shape.FRAME:
                continue
            out_p, in_p = ft._PAIRS[scenarios[data[0] % len(scenarios)]]
            core = ft._core(in_p)
            kind = ft.Kind.AH if target == "ah" else ft.Kind.ESP_UDP if target == "udp_encap" else ft.Kind.ESP
            forwarded += len(core.process(1, data[1:], kind, ft.SA_INDEX, ft.ETH_HLEN))
        assert forwarded, target


def test_the_ike_seeds_reach_an_established_sa():
    """The IKE corpus replays a deterministic exchange: its IKE_AUTH response still authenticates today (if key
    derivation or the exchange changed, regenerate the corpus with tests/fuzz/make_corpus.py)."""
    auth_response = next(path.read_bytes() for t, path in INPUTS
                         if t == "ike" and path.read_bytes()[0] == ft.IkeStage.INITIATOR_AFTER_AUTH)
    mgr, side = ft.ike_stage(ft.IkeStage.INITIATOR_AFTER_AUTH)
    with ft.deterministic_ike(side):
        mgr.receive_datagram(auth_response[1:], ft.IKE_A, ft.IKE_B, ft.T0)
    assert [sa["state"] for sa in mgr.ike_sas()] == ["established"]


@pytest.mark.parametrize("target", list(ft.TARGETS))
def test_fuzz_bounded(target, tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (scripts/setup.sh installs it)")
    work = tmp_path / "corpus"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HERE / "run.py"), target, f"-max_total_time={SECONDS}", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(work), str(HERE / "corpus" / target)],
        capture_output=True, text=True, timeout=SECONDS + 60)
    crashes = [p for p in tmp_path.iterdir() if p.is_file()]
    assert proc.returncode == 0 and not crashes, (
        f"{target}: crash; input {[c.read_bytes()[:200] for c in crashes]}\n{proc.stderr[-4000:]}")
