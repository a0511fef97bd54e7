"""Two xdpsec gateways in the namespace lab negotiate a hybrid post-quantum IKE SA (x25519 + ML-KEM-768 over
IKE_INTERMEDIATE, RFC 9370/9242) from the configuration's proposal string, and the child SA carries traffic.
With a hybrid PFS child proposal as well, every rekey runs ML-KEM again in IKE_FOLLOWUP_KE (RFC 9370 §2.2.4):

    hostA -- gwA ==== IKE_SA_INIT, IKE_INTERMEDIATE (ML-KEM), IKE_AUTH; then ESP ==== gwB -- hostB
                 ==== CREATE_CHILD_SA (x25519) + IKE_FOLLOWUP_KE (ML-KEM), INFORMATIONAL (Delete) ====

Evidence that the follow-up exchange happened, from two independent sources: a capture of UDP 500/4500 on the
wire read by tshark (the IKE header is not encrypted: exchange type 44, RFC 9370 §3.1, request and response,
under the SPIs of the IKE SA it ran on), and each core's `additional_ke` counter, which counts a completed
additional key exchange (IKE_INTERMEDIATE or IKE_FOLLOWUP_KE) once per side. That the new keys agree is shown
by traffic: the pings after a rekey are counted on the new inbound SA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.netns.test_ike_e2e import wait_for_sas
from xdpsec.control import request, socket_path
from xdpsec.crypto.kem import Kem
from xdpsec.labconf import MARKER, Gateways, PairSpec, lab_psk, render_ike, site_sides, wire_report

pytestmark = pytest.mark.netns

PQ = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
PQ_ESP = "aes256gcm16-x25519-ke1_mlkem768"  # PFS: x25519 in CREATE_CHILD_SA, ML-KEM-768 in IKE_FOLLOWUP_KE
IKE_FOLLOWUP_KE = 44  # RFC 9370 §3.1 (IANA "IKEv2 Exchange Types")
IKE_PORTS = "udp port 500 or udp port 4500"
REKEY_DONE = 15.0     # seconds a rekey may take to show on both sides (a busy shared machine)


def test_hybrid_ike_tunnel_passes_traffic(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1,
                                       ike_proposal=PQ))
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    assert len(wait_for_sas(gws, gb, 2)) == 2, gws.log(gb)
    for gw in (ga, gb):
        (ike,) = gws.query(gw, "ike-sas")
        assert ike["state"] == "established", ike
        assert ike["algorithms"]["addke"] == [Kem.ML_KEM_768], ike  # `xdpsec ike-sas` shows the extra exchange
    dst = lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0")
    assert lab.ping("hostA", dst, count=5, timeout=8).received >= 4
    lab.run("hostA", "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["esp"] >= 8 and seen["marker"] == 0, seen


# --- hybrid PFS children and rekeys ---------------------------------------------------------------------------


@pytest.fixture
def hybrid(make_lab, tmp_path):
    """gwA and gwB with a hybrid IKE proposal and a hybrid PFS child proposal, the tunnel up.

    `labconf.write_pair` cannot write these (it derives manual keys from the child proposal, and a proposal
    with a key exchange has none), so both files come from `render_ike` here."""
    started: list[Gateways] = []

    def up() -> tuple:
        lab = make_lab(topology="site")
        spec = PairSpec(mode="tunnel", proposal=PQ_ESP, keying="ike", workers=1, ike_proposal=PQ)
        a, b = site_sides(lab, workers=spec.workers)
        psk = lab_psk()
        gws = Gateways(lab)
        started.append(gws)
        for node, side in (("gwA", a), ("gwB", b)):
            path = tmp_path / f"{side.instance}.toml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(render_ike(side, spec, psk=psk, initiator=side is a, state_dir=str(tmp_path / "state")))
            gws.start(node, path, side.instance)
        gws.wait_ready()
        for node in ("gwA", "gwB"):
            assert len(wait_for_sas(gws, node, 2)) == 2, _logs(gws)
        return lab, gws

    yield up
    for gws in started:
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, _logs(gws))


def _logs(gws) -> str:
    return "".join(f"\n--- {node}:\n{gws.log(node)}" for node in ("gwA", "gwB"))


def _ike(gws, node: str) -> dict:
    """The node's one established IKE SA, as `xdpsec ike-sas --json` shows it."""
    (ike,) = [i for i in gws.query(node, "ike-sas") if i["state"] == "established"]
    return ike


def _only_ike_but(gws, node: str, old_ispi: str) -> dict | None:
    """The node's IKE SA if it has exactly one, established, and not the one with initiator SPI `old_ispi`."""
    rows = gws.query(node, "ike-sas")
    ok = len(rows) == 1 and rows[0]["ispi"] != old_ispi and rows[0]["state"] == "established"
    return rows[0] if ok else None


def _child_spis(gws, node: str) -> tuple[str, str] | None:
    """(in, out) SPIs of the node's one installed child, None while there is not exactly one."""
    try:
        children = [c for c in _ike(gws, node)["children"] if c["state"] == "installed"]
    except ValueError:
        return None  # two IKE SAs for a moment, during an IKE rekey
    return (children[0]["in_spi"], children[0]["out_spi"]) if len(children) == 1 else None


def _additional_ke(gws, node: str) -> int:
    return gws.query(node, "stats")["ike"].get("additional_ke", 0)


def _wait(pred, what: str, gws, timeout: float = REKEY_DONE):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s{_logs(gws)}")
        time.sleep(0.1)
    return value


def _rekey(gws, node: str, *, ike: bool) -> None:
    """`xdpsec rekey lab [--ike]` through the control socket."""
    request(socket_path(gws.instances[node]), "rekey", {"conn": "lab", "child": None, "ike": ike}, timeout=10.0)


def _ike_messages(pcap) -> set[tuple[int, bool, str, int]]:
    """(exchange type, is a response, initiator SPI, message ID) of every IKE message in the capture, as
    tshark's ISAKMP dissector reads the unencrypted header (RFC 7296 §3.1) on UDP 500 and, after the non-ESP
    marker, 4500. A set: the ML-KEM payloads make IKE_FOLLOWUP_KE messages large enough to go as several
    RFC 7383 fragments, each with the message's header."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=,",
                          "-e", "isakmp.exchangetype", "-e", "isakmp.flag_r", "-e", "isakmp.ispi",
                          "-e", "isakmp.messageid"], capture_output=True, text=True, timeout=30, check=True)
    messages = set()
    for line in out.stdout.splitlines():
        exch, response, ispi, msg_id = line.split(",")
        messages.add((int(exch), response in ("1", "True"), ispi.replace(":", ""), int(msg_id, 0)))
    return messages


def _followups(pcap) -> dict[str, list[bool]]:
    """Initiator SPI -> the IKE_FOLLOWUP_KE messages seen under it (False: request, True: response)."""
    seen: dict[str, list[bool]] = {}
    for exch, response, ispi, _msg_id in sorted(_ike_messages(pcap)):
        if exch == IKE_FOLLOWUP_KE:
            seen.setdefault(ispi, []).append(response)
    return seen


def _ping_through(lab, gws, in_spi_b: str) -> None:
    """Bounded pings hostA -> hostB, decrypted at gwB by the inbound SA `in_spi_b` (and answered)."""
    def packets() -> int:
        return next((r["packets"] for r in gws.query("gwB", "sas")
                     if r["direction"] == "in" and int(r["spi"], 16) == int(in_spi_b, 16)), -1)

    assert packets() >= 0, (in_spi_b, gws.query("gwB", "sas"))
    before = packets()
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=5, timeout=8).received >= 4, _logs(gws)
    # Worker counters reach `sas` with the worker's next snapshot: allow it a moment.
    _wait(lambda: packets() - before >= 4, f"4 pings counted on gwB's inbound SA {in_spi_b}", gws, 5.0)


@pytest.fixture
def needs_tshark() -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is needed to read IKE exchange types from the capture")


def test_child_rekey_with_hybrid_pfs_runs_followup_ke(hybrid, needs_tshark):
    lab, gws = hybrid()
    old = {n: _child_spis(gws, n) for n in ("gwA", "gwB")}
    assert old["gwA"] == old["gwB"][::-1], old  # gwA's inbound SA is gwB's outbound one, and back
    _ping_through(lab, gws, old["gwB"][0])
    ispi = _ike(gws, "gwA")["ispi"]
    ke_before = {n: _additional_ke(gws, n) for n in ("gwA", "gwB")}
    assert all(n >= 1 for n in ke_before.values()), ke_before  # IKE_INTERMEDIATE's ML-KEM

    cap = lab.capture("wire", "br0", filter=IKE_PORTS)
    try:
        _rekey(gws, "gwA", ike=False)
        new = {n: _wait(lambda n=n: (s := _child_spis(gws, n)) and not set(s) & set(old[n]) and s,
                        f"{n}'s child rekeyed", gws) for n in ("gwA", "gwB")}
    finally:
        pcap = cap.stop()
    assert new["gwA"] == new["gwB"][::-1], new
    _ping_through(lab, gws, new["gwB"][0])
    # The old pair is gone from the data path: one inbound and one outbound SA each, the new ones.
    for n in ("gwA", "gwB"):
        rows = _wait(lambda n=n: len(r := gws.query(n, "sas")) == 2 and r, f"{n}'s old pair removed", gws)
        assert {int(r["spi"], 16) for r in rows} == {int(s, 16) for s in new[n]}, rows

    followups = _followups(pcap)
    assert sorted(followups.get(ispi, [])) == [False, True], (followups, ispi)  # one request, one response
    assert {n: _additional_ke(gws, n) - ke_before[n] for n in ke_before} == {"gwA": 1, "gwB": 1}


@pytest.mark.parametrize("by", ["gwA", "gwB"], ids=["original-initiator-rekeys", "original-responder-rekeys"])
def test_ike_rekey_of_hybrid_sa_runs_followup_ke(hybrid, needs_tshark, by):
    lab, gws = hybrid()
    other = "gwB" if by == "gwA" else "gwA"
    old_ike = {n: _ike(gws, n) for n in ("gwA", "gwB")}
    children = {n: _child_spis(gws, n) for n in ("gwA", "gwB")}
    ke_before = {n: _additional_ke(gws, n) for n in ("gwA", "gwB")}
    old_spis = {(i["ispi"], i["rspi"]) for i in old_ike.values()}
    assert len(old_spis) == 1, old_ike

    cap = lab.capture("wire", "br0", filter=IKE_PORTS)
    try:
        _rekey(gws, by, ike=True)
        new_ike = {n: _wait(lambda n=n: _only_ike_but(gws, n, old_ike[n]["ispi"]),
                            f"{n}'s IKE SA rekeyed and the old one gone", gws) for n in ("gwA", "gwB")}
        # The children moved to the new IKE SA unchanged (their keys do not depend on it, RFC 7296 §2.18).
        assert {n: _child_spis(gws, n) for n in children} == children, (children, new_ike)
        _ping_through(lab, gws, children["gwB"][0])
        # A child rekey on the new IKE SA: its CREATE_CHILD_SA and IKE_FOLLOWUP_KE are protected with the keys
        # the hybrid rekey derived (SKEYSEED over SK(0) | Ni | Nr | SK(1), RFC 9370 §2.2.4): both sides agree.
        _rekey(gws, other, ike=False)
        rekeyed = {n: _wait(lambda n=n: (s := _child_spis(gws, n)) and not set(s) & set(children[n]) and s,
                            f"{n}'s child rekeyed on the new IKE SA", gws) for n in ("gwA", "gwB")}
    finally:
        pcap = cap.stop()
    (old_ispi, _), = old_spis
    new_spis = {(i["ispi"], i["rspi"]) for i in new_ike.values()}
    assert len(new_spis) == 1 and not new_spis & old_spis, (old_spis, new_spis)
    (new_ispi, _), = new_spis
    for n in ("gwA", "gwB"):
        assert new_ike[n]["algorithms"]["addke"] == [Kem.ML_KEM_768], new_ike[n]
        assert new_ike[n]["initiator"] == (n == by), new_ike[n]  # the rekey's initiator (§2.18)
    assert rekeyed["gwA"] == rekeyed["gwB"][::-1], rekeyed
    _ping_through(lab, gws, rekeyed["gwB"][0])

    followups = _followups(pcap)
    # The IKE rekey's follow-up ran on the old SA, the child rekey's on the new one: one round trip each.
    assert sorted(followups.get(old_ispi, [])) == [False, True], (followups, old_ispi)
    assert sorted(followups.get(new_ispi, [])) == [False, True], (followups, new_ispi)
    assert {n: _additional_ke(gws, n) - ke_before[n] for n in ke_before} == {"gwA": 2, "gwB": 2}
