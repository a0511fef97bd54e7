"""xdpsec against xdpsec with IKEv2 (PSK) in the namespace lab: negotiated child SAs carry traffic, in tunnel
and transport mode, IPv4 and IPv6; a terminate from either side removes the SAs on both and the traffic that
needed them is dropped, never sent in clear."""

from __future__ import annotations

import time

import pytest

from xdpsec.labconf import MARKER, PairSpec, wire_report

pytestmark = pytest.mark.netns


def wait_for_sas(gws, node: str, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gws.query(node, "sas")
        if len(rows) == count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.mark.parametrize("inner", ["v4", "v6"])
def test_ike_tunnel_between_xdpsec_gateways(pair, inner):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1))
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    assert len(wait_for_sas(gws, gb, 2)) == 2, gws.log(gb)
    out_a, in_b = gws.sa(ga, "out"), gws.sa(gb, "in")
    assert out_a["spi"] == in_b["spi"] and out_a["transform"] == "aes128gcm16"
    ike = gws.query(ga, "ike-sas")
    assert len(ike) == 1, ike
    dst = lab.addr["hostB"][inner]
    cap = lab.capture("wire", "br0")
    assert lab.ping("hostA", dst, count=5, timeout=8).received >= 4
    lab.run("hostA", "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    xfer = lab.tcp_transfer("hostA", "hostB", dst, size=5 * 2**20, timeout=120)
    assert xfer.ok, xfer
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["esp"] > 1000 and seen["marker"] == 0, seen


def test_terminate_removes_both_sides_and_fails_closed(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes256gcm16", keying="ike", workers=1))
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=3).received >= 2
    from xdpsec.control import request, socket_path
    request(socket_path(gws.instances[gb]), "terminate", {"conn": "lab"})  # the responder deletes
    assert wait_for_sas(gws, ga, 0) == [] and wait_for_sas(gws, gb, 0) == []
    cap = lab.capture("wire", "br0")
    lab.run("hostA", "ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    seen = wire_report(cap.stop(), lab.addr["hostA"]["v4"], dst)
    assert seen["marker"] == 0 and seen["other"] == 0, seen  # no SA: dropped in XDP as no_sa, not sent in clear
    assert gws.query(ga, "stats")["xdp"]["drops"].get("no_sa", 0) >= 3


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_ike_transport_mode(pair, family):
    lab, gws, (c, d) = pair(PairSpec(mode="transport", proposal="aes128gcm16", keying="ike", workers=1),
                            topology="host", family=family)
    assert len(wait_for_sas(gws, c, 2)) == 2, gws.log(c)
    assert gws.sa(c, "out")["mode"] == "transport"
    dst = lab.addr["hostD"][family]
    cap = lab.capture("wire2", "br0")
    assert lab.ping("hostC", dst, count=5, timeout=8).received >= 4
    xfer = lab.tcp_transfer("hostC", "hostD", dst, size=2 * 2**20, timeout=90)
    assert xfer.ok, xfer
    seen = wire_report(cap.stop(), lab.addr["hostC"][family], dst)
    assert seen["esp"] >= 8 and seen["marker"] == 0, seen


def test_trap_negotiates_on_first_packet_and_never_leaks_it(pair):
    """start_action = trap (RFC 4301 §5.1 "trap"): no SA until traffic needs one; the packets that find none are
    dropped in XDP (never sent in clear), one acquire reaches the coordinator, IKE runs, traffic flows."""
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1,
                                       initiator_action="trap"))
    time.sleep(2)
    assert gws.query(ga, "sas") == [] and gws.query(ga, "ike-sas") == []  # nothing until traffic asks
    dst = lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0")
    first = lab.run("hostA", "ping", "-n", "-c", "1", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    assert " 0 received" in first.stdout or "100% packet loss" in first.stdout  # the trapped packet is dropped
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    assert lab.ping("hostA", dst, count=3).received >= 2
    seen = wire_report(cap.stop(), lab.addr["hostA"]["v4"], dst)
    assert seen["marker"] == 0 and seen["other"] == 0, seen
    assert gws.query(ga, "stats")["xdp"]["drops"].get("no_sa", 0) >= 1


def test_no_secret_in_logs_even_at_debug_level(pair):
    """Neither the PSK nor any negotiated key may reach a log, whatever the level."""
    import tomllib

    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128-sha256", keying="ike", workers=1),
                              log_level="debug")
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=2).received >= 1
    psk = tomllib.loads(gws.configs[ga].read_text())["secrets"]["ike"][0]["secret"]
    for node in (ga, gb):
        text = gws.logs[node].read_text()
        assert " debug " in text.lower()  # the test would prove nothing at a quieter level
        assert psk not in text and psk.encode().hex() not in text, node
