"""xdpsec.io.netlink against a real kernel, inside a lab gateway's namespace.

The checks run in a child Python started with ``nsenter --net`` into gwA (Netlink acts on its caller's
namespace); the child prints JSON and the test compares it with what `ip` reports about the same lab. The
expected MACs come from `ip -j link` in the peer namespaces, never from the module under test.
"""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.netns

QUEUES, MTU = 3, 1400  # not the defaults, so a value that was merely defaulted cannot pass

_PRELUDE = """
import ipaddress, json, time
from dataclasses import asdict
from xdpsec.io.netlink import Netlink

def hop(value):
    if value is None:
        return None
    out = asdict(value)
    for key, item in out.items():
        if isinstance(item, bytes):
            out[key] = item.hex()
        elif not isinstance(item, (int, str, bool, type(None))):
            out[key] = str(item) if not isinstance(item, tuple) else [str(x) for x in item]
    return out

def timed_resolve(nl, dst, **kw):
    start = time.monotonic()
    result = nl.resolve(ipaddress.ip_address(dst), **kw)
    return {"hop": hop(result), "seconds": time.monotonic() - start}

nl = Netlink()
"""


@pytest.fixture
def lab(make_lab):
    return make_lab(queues=QUEUES, mtu=MTU, topology="site")


def in_gwa(lab, body: str):
    """Run `body` (which sets `result`) in gwA with a fresh Netlink `nl`; return `result` from JSON."""
    out = lab.run("gwA", sys.executable, "-c", _PRELUDE + body + "\nprint(json.dumps(result))", timeout=30)
    return json.loads(out.stdout)


def mac(lab, node: str, ifname: str) -> str:
    link = json.loads(lab.run(node, "ip", "-j", "link", "show", ifname).stdout)[0]
    return link["address"].replace(":", "")


def neigh_entries(lab, node: str) -> str:
    return lab.run(node, "ip", "neigh", "show").stdout


@pytest.mark.parametrize(
    ("dst", "ifname", "gateway", "peer"),
    [
        ("198.51.100.10", "lan0", None, ("hostA", "a0")),  # on-link
        ("2001:db8:a::10", "lan0", None, ("hostA", "a0")),
        ("198.51.100.130", "wan0", "192.0.2.2", ("gwB", "wan0")),  # via the other gateway
        ("2001:db8:b::10", "wan0", "2001:db8:f::2", ("gwB", "wan0")),
    ],
)
def test_resolve_never_seen_neighbour(lab, dst, ifname, gateway, peer):
    assert neigh_entries(lab, "gwA").strip() == ""  # the kernel has never talked to anyone
    result = in_gwa(lab, f"""
before = nl.neighbour(nl.iface({ifname!r}).index, ipaddress.ip_address({gateway or dst!r}))
result = {{"before": before, **timed_resolve(nl, {dst!r}, timeout=1.0)}}
""")
    assert result["before"] is None
    assert result["seconds"] < 1.0
    hop = result["hop"]
    assert hop is not None, neigh_entries(lab, "gwA")
    assert hop["ifname"] == ifname
    assert hop["dst_mac"] == mac(lab, *peer)
    assert hop["src_mac"] == mac(lab, "gwA", ifname)
    assert hop["mtu"] == MTU
    assert hop["gateway"] == gateway
    assert hop["local"] is False


@pytest.mark.parametrize("dst", ["203.0.113.99", "2001:db8:c::99"])
def test_unroutable_is_none(lab, dst):
    # gwA has routes to both sites and the transfer net, no default route.
    assert in_gwa(lab, f"result = timed_resolve(nl, {dst!r})")["hop"] is None


@pytest.mark.parametrize("dst", ["198.51.100.50", "2001:db8:a::50"])
def test_silent_neighbour_gives_none_within_the_bound(lab, dst):
    result = in_gwa(lab, f"result = timed_resolve(nl, {dst!r}, timeout=0.3)")
    assert result["hop"] is None
    assert 0.3 <= result["seconds"] < 0.8


@pytest.mark.parametrize("dst", ["192.0.2.1", "198.51.100.1", "2001:db8:f::1"])
def test_local_address(lab, dst):
    hop = in_gwa(lab, f"result = timed_resolve(nl, {dst!r})")["hop"]
    assert hop["local"] is True
    assert (hop["ifname"], hop["ifindex"]) == ("lo", 1)


def test_route_mtu_from_route_metrics(lab):
    lab.run("gwA", "ip", "route", "add", "198.51.100.130/32", "via", "192.0.2.2", "mtu", "1280")
    hop = in_gwa(lab, "result = timed_resolve(nl, '198.51.100.130')")["hop"]
    assert hop["mtu"] == 1280


def test_route_honours_fwmark(lab):
    lab.run("gwA", "ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.2", "table", "100")
    lab.run("gwA", "ip", "rule", "add", "fwmark", "7", "table", "100")
    result = in_gwa(lab, """
dst = ipaddress.ip_address("203.0.113.5")
marked = nl.route(dst, mark=7)
result = {"plain": nl.route(dst), "marked": [marked[0], str(marked[1]), marked[2], marked[3]]}
""")
    assert result["plain"] is None
    wan0 = json.loads(lab.run("gwA", "ip", "-j", "link", "show", "wan0").stdout)[0]["ifindex"]
    assert result["marked"] == [wan0, "192.0.2.2", MTU, False]


def test_iface(lab):
    result = in_gwa(lab, "result = hop(nl.iface('wan0'))")
    link = json.loads(lab.run("gwA", "ip", "-j", "link", "show", "wan0").stdout)[0]
    assert result["index"] == link["ifindex"]
    assert result["mac"] == mac(lab, "gwA", "wan0")
    assert (result["mtu"], result["rx_queues"]) == (MTU, QUEUES)
    assert {"192.0.2.1", "2001:db8:f::1"} <= set(result["addrs"])
    assert in_gwa(lab, "result = nl.iface(1).name") == "lo"


def test_known_neighbour_needs_no_solicitation(lab):
    lab.run("gwA", "ip", "neigh", "add", "198.51.100.77", "lladdr", "02:00:00:00:00:77", "dev", "lan0",
            "nud", "permanent")
    hop = in_gwa(lab, "result = timed_resolve(nl, '198.51.100.77', timeout=0.01)")["hop"]
    assert hop["dst_mac"] == "020000000077"
