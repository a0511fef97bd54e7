"""xdpsec against strongSwan 5.9 (charon with kernel-libipsec) in the namespace lab.

gwA runs xdpsec, gwB runs charon. The libipsec peer fakes a NAT, so every scenario exercises NAT detection,
the float to port 4500 and ESP-in-UDP child SAs. Each scenario checks traffic both ways (ping, a TCP transfer
with its checksum compared), that the wire carries only UDP 4500 between the gateways, and that a delete from
either side tears down both.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest

from xdpsec.labconf import MARKER, Gateways, PairSpec, render_ike, site_sides, wire_report
from xdpsec.labswan import start_charon, swanctl_conn

pytestmark = pytest.mark.interop


def wait(pred, timeout=20.0, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture
def mixed(swan_lab, tmp_path):
    """mixed(spec, xdpsec_initiates) -> (lab, gateways, charon): xdpsec on gwA, strongSwan on gwB."""
    started = []

    def up(spec: PairSpec, *, ike_proposal: str, esp_proposal: str, xdpsec_initiates: bool):
        lab = swan_lab
        a, b = site_sides(lab, workers=spec.workers)
        psk = secrets.token_urlsafe(24)
        text = render_ike(a, spec, psk=psk, initiator=xdpsec_initiates, state_dir=str(tmp_path / "state"))
        path = tmp_path / f"{a.instance}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        conf = swanctl_conn("lab", local_addrs=[b.local_addr], remote_addrs=[b.remote_addr],
                            local_id=b.local_addr, remote_id=b.remote_addr, local_ts=b.local_ts,
                            remote_ts=b.remote_ts, auth="psk", psk=psk.encode(), proposals=ike_proposal,
                            esp_proposals=esp_proposal, mode="tunnel")
        charon = start_charon(lab, "gwB", conf)
        gws = Gateways(lab)
        gws.start("gwA", path, a.instance)
        started.append((gws, charon))
        gws.wait_ready()
        if not xdpsec_initiates:
            charon.initiate("net")
        return lab, gws, charon

    yield up
    for gws, charon in started:
        charon.stop()
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, gws.log("gwA"))


SCENARIOS = [
    # (ESP proposal, key exchange)
    ("aes128gcm16", "x25519"),
    ("aes256gcm16", "ecp256"),
    ("chacha20poly1305", "x25519"),
    ("aes128-sha256", "modp3072"),
]


@pytest.mark.parametrize("xdpsec_initiates", [True, False], ids=["xdpsec-initiates", "strongswan-initiates"])
@pytest.mark.parametrize("esp,group", SCENARIOS, ids=[f"{e}-{g}" for e, g in SCENARIOS])
def test_psk_tunnel_with_strongswan(mixed, esp, group, xdpsec_initiates):
    ike = f"aes128gcm16-prfsha256-{group}" if "gcm" in esp or "chacha" in esp else f"aes128-sha256-{group}"
    spec = PairSpec(mode="tunnel", proposal=esp, keying="ike", ike_proposal=ike, workers=1)
    lab, gws, charon = mixed(spec, ike_proposal=ike, esp_proposal=esp, xdpsec_initiates=xdpsec_initiates)
    rows = wait(lambda: len(gws.query("gwA", "sas")) == 2 and gws.query("gwA", "sas"))
    assert rows, (gws.log("gwA"), charon.log()[-3000:])
    out = next(r for r in rows if r["direction"] == "out")
    assert out["encap"] == "4500->4500", out  # libipsec fakes a NAT: ESP-in-UDP
    cap = lab.capture("wire", "br0")
    for src, dst in (("hostA", lab.addr["hostB"]["v4"]), ("hostB", lab.addr["hostA"]["v4"])):
        ping = lab.ping(src, dst, count=4, timeout=8)
        assert ping.received >= 3, (src, ping, gws.log("gwA")[-2000:])
        lab.run(src, "ping", "-c", "1", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    xfer = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"]["v4"], size=2 * 2**20, timeout=90)
    assert xfer.ok, xfer
    back = lab.tcp_transfer("hostB", "hostA", lab.addr["hostA"]["v4"], size=2 * 2**20, timeout=90)
    assert back.ok, back
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["esp"] > 1000 and seen["other"] == 0 and seen["marker"] == 0, seen
    # A delete from strongSwan's side tears down both.
    charon.terminate("lab")
    assert wait(lambda: gws.query("gwA", "sas") == [], timeout=10) == [] or gws.query("gwA", "sas") == []
