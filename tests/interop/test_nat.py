"""IKEv2 and ESP through a real NAT: gwA sits behind the lab's masquerading node (``site_to_site(nat=True)``).

    hostA ─ gwA (xdpsec, 203.0.113.2, initiator) ─ nat (nftables masquerade, ports randomised) ═ wire ═ gwB ─ hostB

gwB never sees 203.0.113.2: it talks to the NAT's outside address 192.0.2.3, at whatever source ports the NAT
chose. What RFC 7296 §2.23 and RFC 3948 require, checked from outside the daemons:

* NAT detection: gwA finds itself translated (NAT_DETECTION_DESTINATION_IP does not hash to what it sent
  from) and gwB finds its peer translated; the IKE SA floats from UDP 500 to 4500 after IKE_SA_INIT;
* gwB answers the NAT's mapped port of the 4500 flow, and its child SAs encapsulate ESP in UDP to that port;
  gwA's own SAs keep 4500 on both ends (it cannot see the mapping);
* the capture on ``wire`` sees only the NAT's outside address and gwB, IKE_SA_INIT from a rewritten port 500,
  ESP-in-UDP from and to one rewritten port 4500 (the same port gwB reports), nothing in clear;
* traffic crosses both ways: pings (IPv4 and IPv6 inside) and TCP transfers with their SHA-256 compared.

First the lab alone, without IPsec: the NAT really rewrites ports 500 and 4500 and forwards the answers
back (with a plain ``masquerade`` it would keep them, and every port check below would fail).

The peer on gwB is strongSwan's charon (an independent implementation) or xdpsec itself, whose responder
accepts the peer at the NAT's address or at any address (``remote_addrs = ["%any"]``).

xdpsec sends no NAT keepalives (RFC 3948 §2.3): nothing here waits for one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from xdpsec.lab import NAT_NODE, NAT_PORTS, Lab
from xdpsec.labconf import MARKER, Gateways, PairSpec, Side, lab_psk, render_ike, site_sides, wire_report
from xdpsec.labswan import start_charon, swanctl_conn

pytestmark = pytest.mark.interop

TEST_PREFIX = "xst"
TOOLS = ("ip", "nsenter", "ping", "tcpdump", "nft")
IKE_PORT, NATT_PORT = 500, 4500  # RFC 7296 §2; RFC 3948 §2.1
NON_ESP_MARKER = b"\0\0\0\0"  # RFC 3948 §2.2: IKE on port 4500
KEEPALIVE = b"\xff"  # RFC 3948 §2.3
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"
TRANSFER = 2 * 2**20


def wait(pred, timeout=20.0, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture
def nat_lab() -> Lab:
    """hostA - gwA - nat = wire = gwB - hostB, torn down with everything started in it."""
    if os.geteuid() != 0:
        pytest.skip("NAT lab tests need root (network namespaces, nftables)")
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    lab = Lab(prefix=TEST_PREFIX)
    try:
        yield lab.site_to_site(nat=True)
    finally:
        lab.teardown()


@pytest.fixture
def gateways(nat_lab):
    """xdpsec gateways in the NAT lab; each must exit 0 on SIGTERM."""
    gws = Gateways(nat_lab)
    yield gws
    codes = gws.stop()
    assert all(c == 0 for c in codes.values()), (codes, {n: gws.log(n) for n in codes})


def write_config(directory: Path, instance: str, text: str) -> Path:
    path = directory / f"{instance}.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the PSK
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def responder_config(side: Side, spec: PairSpec, *, psk: str, remote_addrs: str, state_dir: str) -> str:
    """gwB's xdpsec configuration: the peer's identity stays gwA's own address (what gwA claims in IKE_AUTH),
    but the peer is reached at ``remote_addrs``, the NAT's outside address or "%any" (RFC 7296 §2.23)."""
    text = render_ike(side, spec, psk=psk, initiator=False, state_dir=state_dir)
    line = f'remote_addrs = ["{side.remote_addr}"]'
    assert text.count(line) == 1, text
    return text.replace(line, f'remote_addrs = ["{remote_addrs}"]')


def start_gwa(lab, gws: Gateways, tmp_path: Path, spec: PairSpec, psk: str) -> Side:
    a, _b = site_sides(lab, workers=spec.workers)
    text = render_ike(a, spec, psk=psk, initiator=True, state_dir=str(tmp_path / "state-a"))
    gws.start("gwA", write_config(tmp_path, a.instance, text), a.instance)
    return a


# -- what crossed the wire -----------------------------------------------------------------------------------


def _kind(udp: UDP) -> str:
    payload = bytes(udp.payload)
    if IKE_PORT in (udp.sport, udp.dport) or payload.startswith(NON_ESP_MARKER):
        return "ike"
    return "keepalive" if payload == KEEPALIVE else "esp"


def udp_flows(pcap: Path) -> tuple[Counter, set[str]]:
    """(src, sport, dst, dport, kind) -> packets for every UDP datagram, and every routable IP address seen."""
    flows: Counter = Counter()
    addresses: set[str] = set()
    for pkt in rdpcap(str(pcap)):
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            continue
        addresses |= {a for a in (ip.src, ip.dst) if not ipaddress.ip_address(a).is_link_local
                      and not ipaddress.ip_address(a).is_multicast and a != "::"}
        if UDP in pkt:
            udp = pkt[UDP]
            flows[(ip.src, udp.sport, ip.dst, udp.dport, _kind(udp))] += 1
    return flows, addresses


def check_wire(pcap: Path, nat_out: str, gw_b: str) -> int:
    """Everything between the NAT and gwB is IKE or ESP-in-UDP from rewritten ports; returns the NAT's mapping
    of gwA's port 4500."""
    flows, addresses = udp_flows(pcap)
    assert addresses == {nat_out, gw_b}, addresses  # gwA's and the hosts' addresses never cross the NAT
    init_ports = {sport for (src, sport, dst, dport, _k) in flows if (src, dst, dport) == (nat_out, gw_b, IKE_PORT)}
    assert len(init_ports) == 1 and init_ports != {IKE_PORT}, flows  # IKE_SA_INIT, from a rewritten port 500
    natt = {(s, sp, d, dp, k): n for (s, sp, d, dp, k), n in flows.items() if NATT_PORT in (sp, dp)}
    mapped = {sp if s == nat_out else dp for (s, sp, _d, dp, _k) in natt}
    assert len(mapped) == 1, natt  # one mapping carries IKE_AUTH onwards and all ESP (RFC 3948 §2.1)
    (port,) = mapped
    assert port != NATT_PORT and NAT_PORTS[0] <= port <= NAT_PORTS[1], port
    assert set(natt) <= {(nat_out, port, gw_b, NATT_PORT, k) for k in ("ike", "esp")} | {
        (gw_b, NATT_PORT, nat_out, port, k) for k in ("ike", "esp")}, natt
    # The float (§2.23): IKE_AUTH went to 4500, and ESP flowed both ways through the mapping.
    assert natt.get((nat_out, port, gw_b, NATT_PORT, "ike"), 0) >= 1, natt
    assert natt.get((nat_out, port, gw_b, NATT_PORT, "esp"), 0) > 500, natt
    assert natt.get((gw_b, NATT_PORT, nat_out, port, "esp"), 0) > 500, natt
    seen = wire_report(pcap, nat_out, gw_b)
    assert seen["marker"] == 0, seen
    return port


def traffic_both_ways(lab: Lab, logs) -> None:
    """Pings (IPv4 and IPv6 inside the tunnel) and a TCP transfer each way, checksums compared."""
    for src, dst_node in (("hostA", "hostB"), ("hostB", "hostA")):
        for family in ("v4", "v6"):
            dst = lab.addr[dst_node][family]
            ping = lab.ping(src, dst, count=4, timeout=8)
            assert ping.received >= 3, (src, dst, ping, logs())
            lab.run(src, "ping", "-c", "1", "-W", "1", "-p", MARKER.hex(), dst, check=False)
        xfer = lab.tcp_transfer(src, dst_node, lab.addr[dst_node]["v4"], size=TRANSFER, timeout=90)
        assert xfer.ok, (xfer, logs())


# -- the lab alone ------------------------------------------------------------------------------------------

_UDP_ECHO = """
import json, socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.settimeout(10)
    print("ready", flush=True)
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
print(json.dumps(peer))
"""
_UDP_ASK = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.settimeout(5)
    s.sendto(b"ping", (sys.argv[3], int(sys.argv[2])))
    print(s.recv(2048).decode())
"""


@pytest.mark.parametrize("port", [IKE_PORT, NATT_PORT])
def test_nat_lab_rewrites_source_ports(nat_lab, port):
    """Without any IPsec: gwA's datagram reaches gwB from the NAT's outside address at a rewritten port, and
    the answer finds its way back through the mapping."""
    lab = nat_lab
    gw_a, gw_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    echo = lab.popen("gwB", sys.executable, "-c", _UDP_ECHO, gw_b, str(port), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready", echo.communicate(timeout=5)
    assert lab.run("gwA", sys.executable, "-c", _UDP_ASK, gw_a, str(port), gw_b).stdout.strip() == "ping"
    host, mapped = json.loads(echo.communicate(timeout=10)[0])
    assert host == lab.addr[NAT_NODE]["wan_v4"], host
    assert mapped != port and NAT_PORTS[0] <= mapped <= NAT_PORTS[1], mapped
    for family in ("v4", "v6"):  # and plain forwarding through the NAT works for both families
        assert lab.ping("hostA", lab.addr["hostB"][family], count=2).ok


# -- the scenarios -------------------------------------------------------------------------------------------


def test_xdpsec_behind_nat_with_strongswan(requires_charon, nat_lab, gateways, tmp_path):
    lab, gws = nat_lab, gateways
    nat_out, gw_b = lab.addr[NAT_NODE]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    spec = PairSpec(mode="tunnel", proposal=ESP_PROPOSAL, keying="ike", ike_proposal=IKE_PROPOSAL, workers=1)
    psk = lab_psk()
    _a, b = site_sides(lab)
    conf = swanctl_conn("lab", local_addrs=[gw_b], remote_addrs="%any", local_id=b.local_addr,
                        remote_id=b.remote_addr, local_ts=b.local_ts, remote_ts=b.remote_ts, auth="psk",
                        psk=psk.encode(), proposals=IKE_PROPOSAL, esp_proposals=ESP_PROPOSAL)
    charon = start_charon(lab, "gwB", conf)
    try:
        cap = lab.capture("wire", "br0")
        start_gwa(lab, gws, tmp_path, spec, psk)
        gws.wait_ready()

        def logs():
            return gws.log("gwA"), charon.log()[-3000:]

        assert wait(lambda: len(gws.query("gwA", "sas")) == 2), logs()
        assert gws.sa("gwA", "out")["encap"] == f"{NATT_PORT}->{NATT_PORT}"  # gwA cannot see the mapping
        (ike,) = gws.query("gwA", "ike-sas")
        # We are translated (§2.23); charon's libipsec always claims to be, so "remote" is True too.
        assert ike["nat"]["local"] and ike["local"] == f"{lab.addr['gwA']['wan_v4']}[{NATT_PORT}]", ike
        assert ike["remote"] == f"{gw_b}[{NATT_PORT}]", ike
        swan = charon.wait_sas(lambda s: "lab" in s and any(
            c["state"] == "INSTALLED" for c in s["lab"].get("child-sas", {}).values()))["lab"]
        assert swan["remote-host"] == nat_out and swan.get("nat-remote") == "yes", swan

        traffic_both_ways(lab, logs)
        port = check_wire(cap.stop(), nat_out, gw_b)
        assert int(swan["remote-port"]) == port, (swan, port)  # charon answers the NAT's mapping
        child = next(c for c in swan["child-sas"].values() if c["state"] == "INSTALLED")
        assert child.get("encap") == "yes", child
    finally:
        charon.stop()


@pytest.mark.parametrize("peer", ["nat-address", "%any"])
def test_xdpsec_behind_nat_with_xdpsec(nat_lab, gateways, tmp_path, peer):
    lab, gws = nat_lab, gateways
    nat_out, gw_b = lab.addr[NAT_NODE]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    spec = PairSpec(mode="tunnel", proposal=ESP_PROPOSAL, keying="ike", ike_proposal=IKE_PROPOSAL, workers=1)
    psk = lab_psk()
    _a, b = site_sides(lab, workers=spec.workers)
    text = responder_config(b, spec, psk=psk, remote_addrs=nat_out if peer == "nat-address" else "%any",
                            state_dir=str(tmp_path / "state-b"))
    gws.start("gwB", write_config(tmp_path, b.instance, text), b.instance)
    gws.wait_ready()
    cap = lab.capture("wire", "br0")
    start_gwa(lab, gws, tmp_path, spec, psk)
    gws.wait_ready()

    def logs():
        return gws.log("gwA"), gws.log("gwB")

    for node in ("gwA", "gwB"):
        assert wait(lambda n=node: len(gws.query(n, "sas")) == 2), logs()
    (ike_a,) = gws.query("gwA", "ike-sas")
    (ike_b,) = gws.query("gwB", "ike-sas")
    # §2.23: each side finds exactly the translation that is there.
    assert ike_a["nat"] == {"local": True, "remote": False}, ike_a
    assert ike_b["nat"] == {"local": False, "remote": True}, ike_b
    assert gws.sa("gwA", "out")["encap"] == f"{NATT_PORT}->{NATT_PORT}"

    traffic_both_ways(lab, logs)
    port = check_wire(cap.stop(), nat_out, gw_b)
    assert ike_b["remote"] == f"{nat_out}[{port}]", (ike_b, port)
    out_b = gws.sa("gwB", "out")
    assert (out_b["remote"], out_b["encap"]) == (nat_out, f"{NATT_PORT}->{port}"), out_b
    assert out_b["packets"] > 500 and gws.sa("gwB", "in")["packets"] > 500, gws.query("gwB", "sas")
