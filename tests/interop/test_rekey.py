"""Rekeying under load against strongSwan 5.9 (issue 4, point 8): a numbered UDP stream each way through the
tunnel while the child SA and the IKE SA are rekeyed, once with strongSwan initiating every rekey
(``swanctl --rekey``) and once with xdpsec initiating them (``xdpsec rekey``); every datagram is counted at its
receiver: none lost, none duplicated.

    hostA ── gwA (xdpsec) ══ ESP in UDP 4500 ══ gwB (charon, kernel-libipsec) ── hostB

The two roles exercise both halves of make-before-break (RFC 7296 §2.8) in xdpsec's data path: as the rekey's
responder it installs the new pair but keeps sending on the old one until charon's Delete (charon, initiator,
switches on our response); as the initiator it sends on the new pair as soon as it has charon's response
(charon installs its new outbound SA only when our Delete arrives) and keeps decrypting the old inbound SA until
that Delete is answered.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.netns.test_rekey import Streams, clean
from xdpsec.control import request, socket_path
from xdpsec.labconf import Gateways, PairSpec, lab_psk, render_ike, site_sides
from xdpsec.labswan import SwanError, start_charon, swanctl_conn

pytestmark = pytest.mark.interop

RATE = 300          # datagrams per second each way: well within what charon's userspace ESP forwards
REKEY_EVERY = 1.5   # seconds between steps
REKEY_DONE = 5.0    # seconds a rekey may take to show on gwA
CHILD, IKE = "child", "ike"
PLAN = (CHILD, IKE, CHILD, CHILD, IKE, CHILD)  # 4 child and 2 IKE rekeys, all started by one side
SECONDS = (len(PLAN) + 2) * REKEY_EVERY + 4


def wait(pred, what: str, timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(step)


class Mixed:
    """xdpsec on gwA (it initiates the tunnel), charon on gwB, PSK, AES-GCM: the tunnel up."""

    def __init__(self, lab, tmp_path):
        self.lab = lab
        a, b = site_sides(lab, workers=1)
        spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1)
        psk = lab_psk()
        path = tmp_path / f"{a.instance}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_ike(a, spec, psk=psk, initiator=True, state_dir=str(tmp_path / "state")))
        conf = swanctl_conn("lab", local_addrs=[b.local_addr], remote_addrs=[b.remote_addr],
                            local_id=b.local_addr, remote_id=b.remote_addr, local_ts=b.local_ts,
                            remote_ts=b.remote_ts, auth="psk", psk=psk.encode(), proposals=spec.ike_proposal,
                            esp_proposals=spec.proposal, mode="tunnel")
        self.charon = start_charon(lab, "gwB", conf)
        self.gws = Gateways(lab)
        self.instance = a.instance
        self.gws.start("gwA", path, a.instance)
        self.gws.wait_ready()
        wait(lambda: self.child().get("state") == "installed", "up", 20.0)

    def child(self) -> dict:
        """gwA's child as `xdpsec status` shows it: the pair that carries its traffic."""
        (conn,) = self.gws.query("gwA", "status")["connections"]
        return conn["children"][0]

    def ike_spis(self) -> set[str]:
        return {i["ispi"] for i in self.gws.query("gwA", "ike-sas") if i["state"] == "established"}

    def rekey(self, by_swan: bool, what: str) -> None:
        """Start one rekey and wait until gwA shows its result."""
        child, ike = self.child()["out_spi"], self.ike_spis()
        if by_swan:
            self.charon.swanctl("--rekey", "--child" if what == CHILD else "--ike", "net" if what == CHILD else "lab")
        else:
            request(socket_path(self.instance), "rekey", {"conn": "lab", "child": None, "ike": what == IKE})
        if what == CHILD:
            wait(lambda: self.child().get("out_spi") not in (child, None), "child rekeyed", REKEY_DONE)
        else:
            wait(lambda: (now := self.ike_spis()) and not now & ike, "IKE SA rekeyed", REKEY_DONE)

    def debug(self) -> str:
        return f"--- xdpsec gwA:\n{self.gws.log('gwA')}\n--- charon gwB:\n{self.charon.log()[-4000:]}"

    def close(self) -> list[int]:
        self.charon.stop()
        return list(self.gws.stop().values())


@pytest.fixture
def mixed(swan_lab, tmp_path):
    setup = Mixed(swan_lab, tmp_path)
    yield setup
    codes = setup.close()
    assert codes == [0], (codes, setup.gws.log("gwA"))


@pytest.mark.parametrize("by_swan", [True, False], ids=["strongswan-initiates", "xdpsec-initiates"])
def test_no_packet_lost_or_duplicated_across_rekeys_with_strongswan(mixed, by_swan):
    lab = mixed.lab
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=8).received >= 2, mixed.debug()
    children, ikes = {mixed.child()["out_spi"]}, set(mixed.ike_spis())
    with Streams(lab, SECONDS, rate=RATE) as streams:
        time.sleep(REKEY_EVERY)
        for what in PLAN:
            try:
                mixed.rekey(by_swan, what)
            except (AssertionError, SwanError) as e:
                raise AssertionError(f"{e}\n{mixed.debug()}") from e
            children.add(mixed.child()["out_spi"])
            ikes |= mixed.ike_spis()
            time.sleep(REKEY_EVERY)
        report = streams.report()
    assert clean(report), (report, mixed.debug())
    assert len(children) == PLAN.count(CHILD) + 1 and len(ikes) == PLAN.count(IKE) + 1, (children, ikes)
    (swan_ike,) = mixed.charon.list_sas().values()
    installed = [c for c in swan_ike["child-sas"].values() if c["state"] == "INSTALLED"]
    assert len(installed) == 1 and int(installed[0]["spi-in"], 16) == int(mixed.child()["out_spi"], 16), swan_ike
