"""A peer that reboots (issue 7, point 3): INITIAL_CONTACT makes the other gateway forget the dead IKE SA.

    hostA ── gwA ══ wire ══ gwB ── hostB

The gateway that initiates (start_action = start) is killed hard, coordinator and workers with SIGKILL as a
power cut would, and started again with the same configuration. It remembers nothing, so it negotiates afresh and
sends N(INITIAL_CONTACT) in its IKE_AUTH (RFC 7296 §2.4). The gateway that stayed up must then hold exactly one
IKE SA, the new one, and only the new child SAs: the stale pair would otherwise sit in its data path until DPD or
the lifetimes noticed. Traffic hostA -> hostB passes again within RECOVERY seconds of the restarted gateway
being ready. Both directions are tested: gwB reboots while gwA stays, and gwA while gwB stays.

A rebooted *responder* (start_action none) sends nothing, so only its peer's DPD can notice it: not tested here
(docs/SECURITY.md lists it).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.netns.test_attacks_ike import established, ike_events, ike_pair, wait_until

pytestmark = pytest.mark.netns

RECOVERY = 10.0  # seconds from the restarted gateway answering its control socket to traffic passing again


def tunnel_passes(lab) -> bool:
    return lab.ping("hostA", lab.addr["hostB"]["v4"], count=1, timeout=1).received == 1


def child_spis(gws, node: str) -> dict[str, int]:
    return {row["direction"]: row["spi"] for row in gws.query(node, "sas")}


@pytest.mark.parametrize("reboots", ["gwB", "gwA"])
def test_a_rebooted_peer_is_replaced_through_initial_contact(make_lab, tmp_path, reboots):
    stays = "gwA" if reboots == "gwB" else "gwB"
    lab = make_lab(topology="site")
    gws, configs = ike_pair(lab, tmp_path, initiator=reboots, action="start", responder_any=False)
    try:
        wait_until("child SAs on both", lambda: len(gws.query("gwA", "sas")) == 2 == len(gws.query("gwB", "sas")))
        wait_until(f"IKE SA on {stays}", lambda: established(gws, stays))
        assert wait_until("traffic", lambda: tunnel_passes(lab), timeout=10)
        old_ike = {(s["ispi"], s["rspi"]) for s in gws.query(stays, "ike-sas")}
        old_children = child_spis(gws, stays)
        before = ike_events(lab, stays)

        proc = gws.procs.pop(reboots)
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and the workers it forked: its process group
        proc.wait(10)
        assert not tunnel_passes(lab)  # nothing forwards for the dead gateway; its peer still holds the old SAs
        gws.start(reboots, configs[reboots], gws.instances[reboots])
        gws.wait_ready()
        ready = time.monotonic()
        wait_until("traffic after the reboot", lambda: tunnel_passes(lab), timeout=RECOVERY, step=0.1)
        print(f"\n{reboots} rebooted: traffic again {time.monotonic() - ready:.1f} s after it was ready")

        # The stayer forgot the old IKE SA and its children because of INITIAL_CONTACT, not a timeout.
        ike_sas = gws.query(stays, "ike-sas")
        assert len(ike_sas) == 1 and ike_sas[0]["state"] == "established", ike_sas
        assert (ike_sas[0]["ispi"], ike_sas[0]["rspi"]) not in old_ike
        rebooted = established(gws, reboots)
        assert [(s["ispi"], s["rspi"]) for s in rebooted] == [(ike_sas[0]["ispi"], ike_sas[0]["rspi"])]
        children = child_spis(gws, stays)
        assert len(gws.query(stays, "sas")) == 2 and not set(children.values()) & set(old_children.values())
        assert children == {"in": child_spis(gws, reboots)["out"], "out": child_spis(gws, reboots)["in"]}
        moved = ike_events(lab, stays)
        assert moved.get("initial_contact_replaced", 0) - before.get("initial_contact_replaced", 0) == 1, moved
    finally:
        codes = gws.stop()
    assert codes == {"gwA": 0, "gwB": 0}, codes
