"""Many tunnels between two xdpsec gateways (issue 4 point 7) at a size the suite can afford.

scripts/scale.py does the work, the same run that records the 1,000-tunnel figures in docs/BENCHMARKS.md:
one IKE SA and one child SA per tunnel, each tunnel on an outer address of its own (the responder chooses a
connection by address), each child a /32 host pair, so 64 tunnels put 128 host-pair policies in each SPD.
Every tunnel must come up, carry its datagram, be rekeyed (a new outbound SPI) and carry one again, and be
deleted on both sides, within a bounded time.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests.netns.conftest import TEST_PREFIX

pytestmark = pytest.mark.netns

TUNNELS = 64
BUDGET = 120.0  # seconds for the whole run, lab included
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "scale.py"


def _scale():
    spec = importlib.util.spec_from_file_location("scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tunnels_come_up_carry_rekey_and_go():
    start = time.monotonic()
    result = _scale().run(TUNNELS, timeout=BUDGET / 2, prefix=TEST_PREFIX)
    elapsed = time.monotonic() - start

    assert "error" not in result, (result.get("error"), result.get("log_tail"))
    assert result["initiated_by"] == "start_action"
    assert result["lost_before_rekey"] == [], "tunnels that did not carry their datagram"
    assert result["lost_after_rekey"] == [], "tunnels that stopped carrying after their rekey"
    assert result["tunnels_per_s"] > 0
    for phase in ("usage_up", "usage_rekeyed", "usage_down"):
        for node in ("gwA", "gwB"):
            usage = result[phase][node]
            assert usage["coordinator"]["rss_kib"] > 0 and len(usage["workers"]) == 2, (phase, node, usage)
    assert elapsed < BUDGET, f"{TUNNELS} tunnels took {elapsed:.0f} s"
