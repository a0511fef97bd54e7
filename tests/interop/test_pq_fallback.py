"""A hybrid post-quantum proposal list against strongSwan 5.9, which knows neither RFC 9370 nor ML-KEM.

xdpsec on gwA offers `aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none`, which expands to two proposals, the
hybrid one first (SA proposal 1 with an ADDKE1 = ML-KEM-768 transform, Transform Type 6) and the classic one
(proposal 2), plus N(INTERMEDIATE_EXCHANGE_SUPPORTED). charon on gwB is configured with the classic proposal
only. Whoever initiates, the IKE SA must come up on the classic proposal with no IKE_INTERMEDIATE exchange,
and the tunnel must carry traffic:

* xdpsec initiates: charon parses an SA payload with a transform type it does not know; RFC 7296 §3.3.6 has it
  skip that proposal and choose the next.
* charon initiates: it offers only classic transforms; xdpsec's hybrid proposal does not fit them (ADDKE1 has
  no NONE there), its classic one does.

The same holds one level down, for a child with hybrid PFS (`aes256gcm16-x25519-ke1_mlkem768-ke1_none`, RFC 9370
§2.2.4): the child comes up in IKE_AUTH, and its rekey, from either side, settles on x25519 alone without an
IKE_FOLLOWUP_KE exchange.
"""

from __future__ import annotations

import os
import time

import pytest

from xdpsec.control import request, socket_path
from xdpsec.labconf import MARKER, Gateways, PairSpec, lab_psk, render_ike, site_sides, wire_report
from xdpsec.labswan import SwanError, start_charon, swanctl_conn

pytestmark = pytest.mark.interop

XDPSEC_IKE = "aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none"  # = [hybrid, classic]
SWAN_IKE = "aes128gcm16-prfsha256-x25519"
ESP = "aes128gcm16"


def _wait(pred, timeout=20.0, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture
def fallback(swan_lab, tmp_path):
    started = []

    def up(xdpsec_initiates: bool, esp: str = ESP, swan_esp: str = ESP):
        lab = swan_lab
        spec = PairSpec(mode="tunnel", proposal=esp, keying="ike", ike_proposal=XDPSEC_IKE, workers=1)
        a, b = site_sides(lab, workers=spec.workers)
        psk = lab_psk()
        text = render_ike(a, spec, initiator=xdpsec_initiates, state_dir=str(tmp_path / "state"), psk=psk)
        path = tmp_path / f"{a.instance}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        conf = swanctl_conn("lab", local_addrs=[b.local_addr], remote_addrs=[b.remote_addr], local_ts=b.local_ts,
                            remote_ts=b.remote_ts, auth="psk", proposals=SWAN_IKE, esp_proposals=swan_esp,
                            mode="tunnel", local_id=b.local_addr, remote_id=b.remote_addr, psk=psk.encode())
        charon = start_charon(lab, "gwB", conf)
        gws = Gateways(lab)
        gws.start("gwA", path, a.instance)
        started.append((gws, charon))
        gws.wait_ready()
        if not xdpsec_initiates:
            try:
                charon.initiate("net")
            except SwanError as e:
                raise SwanError(f"{e}\n--- xdpsec on gwA:\n{gws.log('gwA')}") from e
        return lab, gws, charon

    yield up
    for gws, charon in started:
        charon.stop()
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, gws.log("gwA"))


@pytest.mark.parametrize("xdpsec_initiates", [True, False], ids=["xdpsec-initiates", "strongswan-initiates"])
def test_pq_list_falls_back_to_classic_with_strongswan(fallback, xdpsec_initiates):
    lab, gws, charon = fallback(xdpsec_initiates)
    rows = _wait(lambda: len(gws.query("gwA", "sas")) == 2 and gws.query("gwA", "sas"))
    assert rows, (gws.log("gwA"), charon.log()[-4000:])
    (ike,) = gws.query("gwA", "ike-sas")
    assert ike["state"] == "established" and ike["algorithms"]["addke"] == [], ike
    swan_ike = charon.list_sas()["lab"]
    assert swan_ike["state"] == "ESTABLISHED" and swan_ike["dh-group"] == "CURVE_25519", swan_ike
    assert "IKE_INTERMEDIATE" not in charon.log()
    dst = lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0")
    assert lab.ping("hostA", dst, count=4, timeout=8).received >= 3
    lab.run("hostA", "ping", "-c", "1", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["esp"] >= 6 and seen["marker"] == 0, seen


# --- hybrid PFS for the child -------------------------------------------------------------------------------

PFS_ESP = "aes256gcm16-x25519-ke1_mlkem768-ke1_none"  # = [x25519 + ADDKE1 ML-KEM-768, x25519 alone]
SWAN_PFS_ESP = "aes256gcm16-x25519"


def _child_spis(gws) -> tuple[str, str] | None:
    """gwA's one installed child as (in SPI, out SPI), hex; None while there is not exactly one."""
    rows = [i for i in gws.query("gwA", "ike-sas") if i["state"] == "established"]
    children = [c for i in rows for c in i["children"] if c["state"] == "installed"]
    return (children[0]["in_spi"], children[0]["out_spi"]) if len(children) == 1 else None


def _swan_child(sas: dict, out_spi: str) -> dict | None:
    """charon's installed child whose inbound SPI is our outbound one."""
    return next((c for ike in sas.values() for c in ike.get("child-sas", {}).values()
                 if c["state"] == "INSTALLED" and int(c["spi-in"], 16) == int(out_spi, 16)), None)


@pytest.mark.parametrize("by_swan", [False, True], ids=["xdpsec-rekeys", "strongswan-rekeys"])
def test_hybrid_pfs_child_falls_back_to_classic_with_strongswan(fallback, by_swan):
    """The child in IKE_AUTH carries no key exchange at all (RFC 7296 §1.2); its rekey is where PFS and
    RFC 9370 apply. xdpsec rekeying: charon reads proposal 1 with an ADDKE1 transform (type 6) it does not
    know, skips it (§3.3.6) and picks proposal 2, x25519 alone. charon rekeying: it offers x25519 alone, which
    fits xdpsec's classic proposal. Either way no IKE_FOLLOWUP_KE runs and the new pair carries traffic."""
    lab, gws, charon = fallback(True, esp=PFS_ESP, swan_esp=SWAN_PFS_ESP)
    old = _wait(lambda: _child_spis(gws))
    assert old, (gws.log("gwA"), charon.log()[-4000:])
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=4, timeout=8).received >= 3, gws.log("gwA")
    if by_swan:
        charon.rekey("net")
    else:
        request(socket_path(gws.instances["gwA"]), "rekey", {"conn": "lab", "child": None, "ike": False},
                timeout=10.0)
    new = _wait(lambda: (s := _child_spis(gws)) and not set(s) & set(old) and s)
    assert new, (old, gws.log("gwA"), charon.log()[-4000:])
    swan = charon.wait_sas(lambda sas: _swan_child(sas, new[1]) is not None, timeout=20)
    child = _swan_child(swan, new[1])
    assert int(child["spi-out"], 16) == int(new[0], 16), (child, new)
    assert child.get("dh-group") == "CURVE_25519", child  # classic PFS: the rekey ran x25519 only
    assert gws.query("gwA", "stats")["ike"].get("additional_ke", 0) == 0  # neither IKE_INTERMEDIATE nor FOLLOWUP
    assert lab.ping("hostA", dst, count=4, timeout=8).received >= 3, (gws.log("gwA"), charon.log()[-4000:])
