"""The namespace lab: the quick start, the end-to-end tests and the benchmarks all run in it.

Every node is a network namespace; every link is a veth pair whose two ends both live in lab namespaces
(created there directly with ``ip -n A link add ... peer ... netns B``, never passing through the root
namespace), with ``queues`` rx/tx queues because the gateways' AF_XDP workers bind one socket per queue::

     site-to-site (tunnel mode)

       hostA ──────── gwA ═════ wire ═════ gwB ──────── hostB
       a0            lan0   wan0   (br0)   wan0   lan0          b0
       198.51.100.10/25  .1 | 192.0.2.1/24  192.0.2.2/24 | .129   198.51.100.130/25
       2001:db8:a::10/64 ::1| 2001:db8:f::1/64 ::2       | 2001:db8:b::1  2001:db8:b::10/64

     site-to-site behind a NAT (``site_to_site(nat=True)``; hosts, lan links and gwB as above)

       hostA ─── gwA ─────────────────────── nat ═════════════════ wire ═════ gwB ─── hostB
                 wan0 203.0.113.2/24     in0 .1   out0 192.0.2.3/24    (br0)   wan0 192.0.2.2/24
                      2001:db8:e::2/64       ::1       2001:db8:f::3/64                2001:db8:f::2/64

     ``nat`` masquerades everything leaving ``out0`` with nftables, source ports randomised into NAT_PORTS
     (``masquerade random``: even a free port is rewritten, as a busy carrier-grade NAT would), and forwards
     back what its connection tracking knows. gwA's default route points at it; gwB routes hostA's network to
     192.0.2.3 and never learns 203.0.113.0/24: the NAT's outside address is the only gwA it can reach, the
     tunnel endpoint it sees (RFC 7296 §2.23). ``nat`` forwards like a gateway; in ``Lab.addr`` its inside
     port is ``lan_*``, its outside port ``wan_*``.

     host-to-host (transport mode)

       hostC ═════ wire2 ═════ hostD
       c0 203.0.113.1/24    d0 203.0.113.2/24   (2001:db8:c::1/64, ::2)

     hub and spokes (``hub()``: one responder for many peers, road-warrior style)

       hostH ─── gwH wan0 192.0.2.1/24 ═══ hubwire (br0) ═══ wan0 192.0.2.1N/24 gwSN ─── hostSN   (N = 1..3)
       198.51.100.10/25  lan0 .1/25                           lan0 198.51.100.(97+32N)/27   .(98+32N)/27
       2001:db8:a::10/64 ::1/64   2001:db8:f::1/64  2001:db8:f::1N/64   2001:db8:N::1/64    2001:db8:N::10/64

     Each spoke's LAN is its own /27 of 198.51.100.128/25 (spoke 1: .128/27, 2: .160/27, 3: .192/27); gwH
     routes each to its spoke, every spoke routes 198.51.100.0/25 to gwH.

``wire``, ``wire2`` and ``hubwire`` are plain bridges: the wire between the protecting nodes, where a capture sees what
really crossed. (On the gateways themselves tcpdump is blind to XDP: frames redirected to AF_XDP never reach
the receive taps, and AF_XDP transmissions bypass the transmit taps.)

Hosts route by default via their gateway; each gateway routes the other site via the other's wan address,
forwards IPv4 and IPv6 and has rp_filter off. IPv6 duplicate address detection is off everywhere so addresses
work at once.

Namespaces are named ``<prefix><tag>-<pid>-<node>`` (``xs3fa2-4242-gwA``): two labs can coexist, and the pid of
the owning process tells `cleanup_stale` which leftovers belong to dead runs (pid 0: a lab made by
``python -m xdpsec.lab up``, which lives until ``down``). Commands run through ``nsenter --net`` rather than
``ip netns exec``, which remounts /sys and would hide the BPF pins under /sys/fs/bpf.

Teardown always runs (context manager exit, a failed build, interpreter exit): tracked processes get SIGTERM
then SIGKILL, anything else left in a lab namespace is killed, and the namespaces are deleted, which destroys
their veths.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
DEFAULT_PREFIX = "xs"
#: Seconds a tracked process has between SIGTERM and SIGKILL at teardown.
GRACE = 2.0


@dataclass(frozen=True)
class Port:
    """One end of a veth: its node, interface name, role on a gateway ("lan"/"wan", "" on hosts), addresses."""

    node: str
    ifname: str
    role: str
    v4: str
    v6: str


BRIDGE_PORT = "bridge"  # role of a port enslaved to the node's bridge br0 (the wire nodes)
WIRE_BRIDGE = "br0"

SITE_LINKS = (
    (Port("hostA", "a0", "", "198.51.100.10/25", "2001:db8:a::10/64"),
     Port("gwA", "lan0", "lan", "198.51.100.1/25", "2001:db8:a::1/64")),
    (Port("gwA", "wan0", "wan", "192.0.2.1/24", "2001:db8:f::1/64"), Port("wire", "wa", BRIDGE_PORT, "", "")),
    (Port("wire", "wb", BRIDGE_PORT, "", ""), Port("gwB", "wan0", "wan", "192.0.2.2/24", "2001:db8:f::2/64")),
    (Port("gwB", "lan0", "lan", "198.51.100.129/25", "2001:db8:b::1/64"),
     Port("hostB", "b0", "", "198.51.100.130/25", "2001:db8:b::10/64")),
)
SITE_ROUTES = {  # node -> (destination, via)
    "hostA": (("default", "198.51.100.1"), ("default", "2001:db8:a::1")),
    "hostB": (("default", "198.51.100.129"), ("default", "2001:db8:b::1")),
    "gwA": (("198.51.100.128/25", "192.0.2.2"), ("2001:db8:b::/64", "2001:db8:f::2")),
    "gwB": (("198.51.100.0/25", "192.0.2.1"), ("2001:db8:a::/64", "2001:db8:f::1")),
}
GATEWAYS = ("gwA", "gwB")

NAT_NODE = "nat"
NAT_INSIDE, NAT_OUTSIDE = "in0", "out0"
#: The range ``nat`` maps TCP and UDP source ports into: none of the IKE/NAT-T ports 500 and 4500 stays as is.
NAT_PORTS = (1024, 65535)
NAT_SITE_LINKS = (
    SITE_LINKS[0],
    (Port("gwA", "wan0", "wan", "203.0.113.2/24", "2001:db8:e::2/64"),
     Port(NAT_NODE, NAT_INSIDE, "lan", "203.0.113.1/24", "2001:db8:e::1/64")),
    (Port(NAT_NODE, NAT_OUTSIDE, "wan", "192.0.2.3/24", "2001:db8:f::3/64"), Port("wire", "wa", BRIDGE_PORT, "", "")),
    *SITE_LINKS[2:],
)
NAT_SITE_ROUTES = {
    "hostA": SITE_ROUTES["hostA"],
    "hostB": SITE_ROUTES["hostB"],
    "gwA": (("default", "203.0.113.1"), ("default", "2001:db8:e::1")),
    "gwB": (("198.51.100.0/25", "192.0.2.3"), ("2001:db8:a::/64", "2001:db8:f::3")),
    NAT_NODE: (("198.51.100.0/25", "203.0.113.2"), ("2001:db8:a::/64", "2001:db8:e::2"),
               ("198.51.100.128/25", "192.0.2.2"), ("2001:db8:b::/64", "2001:db8:f::2")),
}
# One inet table NATs IPv4 and IPv6 alike. Ports need a transport protocol in the rule (nft refuses "to :port"
# otherwise); ICMP echo gets its identifier randomised by the second rule.
_NAT_RULESET = f"""
table inet xdpsec_lab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{NAT_OUTSIDE}" meta l4proto {{ tcp, udp }} masquerade to :{NAT_PORTS[0]}-{NAT_PORTS[1]} random
        oifname "{NAT_OUTSIDE}" masquerade random
    }}
}}
"""

HOST_LINKS = (
    (Port("hostC", "c0", "", "203.0.113.1/24", "2001:db8:c::1/64"), Port("wire2", "wc", BRIDGE_PORT, "", "")),
    (Port("wire2", "wd", BRIDGE_PORT, "", ""), Port("hostD", "d0", "", "203.0.113.2/24", "2001:db8:c::2/64")),
)

HUB_SPOKES = 3
HUB_WIRE = "hubwire"


def _hub_links(spokes: int) -> tuple:
    links = [(Port("hostH", "h0", "", "198.51.100.10/25", "2001:db8:a::10/64"),
              Port("gwH", "lan0", "lan", "198.51.100.1/25", "2001:db8:a::1/64")),
             (Port("gwH", "wan0", "wan", "192.0.2.1/24", "2001:db8:f::1/64"),
              Port(HUB_WIRE, "wh", BRIDGE_PORT, "", ""))]
    for n in range(1, spokes + 1):
        lan = 128 + 32 * (n - 1)
        links += [(Port(HUB_WIRE, f"w{n}", BRIDGE_PORT, "", ""),
                   Port(f"gwS{n}", "wan0", "wan", f"192.0.2.{10 + n}/24", f"2001:db8:f::{10 + n}/64")),
                  (Port(f"gwS{n}", "lan0", "lan", f"198.51.100.{lan + 1}/27", f"2001:db8:{n}::1/64"),
                   Port(f"hostS{n}", f"s{n}", "", f"198.51.100.{lan + 2}/27", f"2001:db8:{n}::10/64"))]
    return tuple(links)


def _hub_routes(spokes: int) -> dict:
    routes: dict = {"hostH": (("default", "198.51.100.1"), ("default", "2001:db8:a::1")), "gwH": ()}
    for n in range(1, spokes + 1):
        lan = 128 + 32 * (n - 1)
        routes["gwH"] += ((f"198.51.100.{lan}/27", f"192.0.2.{10 + n}"), (f"2001:db8:{n}::/64", f"2001:db8:f::{10 + n}"))
        routes[f"gwS{n}"] = (("198.51.100.0/25", "192.0.2.1"), ("2001:db8:a::/64", "2001:db8:f::1"))
        routes[f"hostS{n}"] = (("default", f"198.51.100.{lan + 1}"), ("default", f"2001:db8:{n}::1"))
    return routes


NODES = frozenset(p.node for links in (SITE_LINKS, NAT_SITE_LINKS, HOST_LINKS, _hub_links(HUB_SPOKES))
                  for link in links for p in link)

_COMMON_SYSCTLS = (
    # RFC 4862 §5.4: DAD would keep fresh addresses tentative for a second; lab addresses are unique by design.
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    # Router solicitations are only noise in captures: nobody here sends router advertisements.
    "net.ipv6.conf.default.router_solicitations=0",
)
_GATEWAY_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.conf.default.forwarding=1",
    # Decrypted tunnel traffic arrives on an interface the reverse route does not point at.
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)


class LabError(RuntimeError):
    """A lab command failed; the message names the node, the command and its stderr."""


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtts: tuple[float, ...]  # milliseconds

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


@dataclass(frozen=True)
class TransferResult:
    bytes: int  # received
    bytes_sent: int
    sha256_sent: str
    sha256_received: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.bytes == self.bytes_sent and self.sha256_sent == self.sha256_received


@dataclass(frozen=True)
class BlastResult:
    sent: int
    received: int | None  # None without a sink
    seconds: float


class Capture:
    """tcpdump writing to a pcap in the lab's temporary directory (deleted at teardown)."""

    def __init__(self, proc: subprocess.Popen, path: Path) -> None:
        self.proc = proc
        self.path = path

    def wait(self, timeout: float = 10) -> Path:
        """Wait for a capture started with ``count`` to finish, then return the pcap."""
        self.proc.wait(timeout)
        return self.path

    def stop(self, timeout: float = 5) -> Path:
        """Stop capturing and return the pcap.

        Packets still in the kernel's capture ring when tcpdump gets SIGTERM are lost, so first wait until
        the file has stopped growing (tcpdump writes each packet as it reads it: -U, --immediate-mode).
        """
        if self.proc.poll() is None:
            self._settle()
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.path

    def _settle(self, quiet: float = 0.1, limit: float = 1.0) -> None:
        deadline = time.monotonic() + limit
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.path.stat().st_size if self.path.exists() else 0
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return
            time.sleep(0.02)


# Traffic helpers run inside namespaces as `python -c`: no import path, no netcat, no iperf.
_TCP_RECEIVER = """
import hashlib, json, socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as srv:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(timeout)
    print("ready", flush=True)
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(timeout)
        digest, n = hashlib.sha256(), 0
        while chunk := conn.recv(1 << 16):
            digest.update(chunk)
            n += len(chunk)
print(json.dumps({"bytes": n, "sha256": digest.hexdigest()}))
"""
_TCP_SENDER = """
import hashlib, json, os, socket, sys, time
addr, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
digest, sent = hashlib.sha256(), 0
start = time.monotonic()
with socket.create_connection((addr, port), timeout=timeout) as s:
    while sent < size:
        chunk = os.urandom(min(1 << 16, size - sent))
        s.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the receiver closes after EOF: everything arrived
print(json.dumps({"bytes": sent, "sha256": digest.hexdigest(), "seconds": time.monotonic() - start}))
"""
_UDP_SINK = """
import json, socket, sys
addr, port, count, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((addr, port))
    print("ready", flush=True)
    s.settimeout(idle * 4)  # first datagram: allow for the sender's start-up
    n = 0
    try:
        while n < count:
            s.recv(1 << 16)
            n += 1
            s.settimeout(idle)
    except TimeoutError:
        pass
print(json.dumps({"received": n}))
"""
_UDP_SENDER = """
import json, socket, sys, time
addr, port, size, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
payload = bytes(size)
sent = 0
start = time.monotonic()
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.connect((addr, port))
    for i in range(count):
        if rate > 0:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        try:
            s.send(payload)
            sent += 1
        except OSError:  # ENOBUFS, or ECONNREFUSED from an earlier ICMP error: counted as not sent
            pass
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))
"""


def _netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def _parse_name(name: str, prefix: str) -> tuple[str, int, str] | None:
    """``xs3fa2-4242-gwA`` -> (run, pid, node) if it is a lab namespace under ``prefix``, else None."""
    if not name.startswith(prefix):
        return None
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in NODES:
        return None
    return f"{parts[0]}-{parts[1]}", int(parts[1]), parts[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _delete_netns(name: str) -> None:
    """Kill whatever still runs in the namespace (it would keep it, and its veths, alive) and delete it."""
    for pid in _netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def lab_namespaces(prefix: str = DEFAULT_PREFIX) -> dict[str, list[str]]:
    """Existing lab namespaces under ``prefix``, grouped by run (``xs3fa2-4242``)."""
    runs: dict[str, list[str]] = {}
    names = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    for name in names:
        if parsed := _parse_name(name, prefix):
            runs.setdefault(parsed[0], []).append(name)
    return runs


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete the namespaces of labs whose owning process is dead; returns the names deleted.

    Labs of live processes and persistent labs (pid 0, from ``python -m xdpsec.lab up``) are left alone.
    """
    removed = []
    for names in lab_namespaces(prefix).values():
        for name in names:
            _run, pid, _node = _parse_name(name, prefix)  # type: ignore[misc]
            if pid != 0 and not _alive(pid):
                _delete_netns(name)
                removed.append(name)
    return removed


def _read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """First line of a helper's stdout, or LabError (with its stderr) if it died or stayed silent."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            line = proc.stdout.readline()
            if line:
                return line.strip()
    proc.kill()
    _out, err = proc.communicate()
    raise LabError(f"{what} did not start: {err.strip() or 'no output'}")


class Lab:
    """A set of namespaces wired as in the module picture; a context manager that always tears down.

    ``addr[node]`` holds strings: on hosts ``v4``, ``v6`` (addresses), ``net_v4``, ``net_v6`` (their
    networks) and ``if`` (interface name); on gateways the same keys prefixed by the interface's role:
    ``lan_v4``, ``lan_v6``, ``lan_net_v4``, ``lan_net_v6``, ``lan_if``, ``wan_v4``, ..., ``wan_if``.
    """

    def __init__(
        self,
        *,
        queues: int = 2,
        mtu: int = 1500,
        tag: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        persistent: bool = False,
    ) -> None:
        tag = secrets.token_hex(2) if tag is None else tag
        if not re.fullmatch(r"[A-Za-z0-9_.]*", prefix + tag):
            raise ValueError(f"prefix and tag must be letters, digits, '_' or '.': {prefix!r}, {tag!r}")
        self.queues = queues
        self.mtu = mtu
        self.run_name = f"{prefix}{tag}-{0 if persistent else os.getpid()}"
        self.persistent = persistent
        self.addr: dict[str, dict[str, str]] = {}
        self._namespaces: dict[str, str] = {}  # node -> namespace, in creation order
        self._procs: list[subprocess.Popen] = []
        self._tmp: Path | None = None
        if not persistent:
            atexit.register(self.teardown)

    # -- context manager -------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- building --------------------------------------------------------------------------------------

    def site_to_site(self, *, nat: bool = False) -> Lab:
        """hostA - gwA = gwB - hostB, routed and forwarding (module picture); with ``nat`` gwA sits behind
        the masquerading node ``nat``: hostA - gwA - nat = gwB - hostB."""
        if nat:
            return self._build(NAT_SITE_LINKS, NAT_SITE_ROUTES, (*GATEWAYS, NAT_NODE), self._masquerade)
        return self._build(SITE_LINKS, SITE_ROUTES, GATEWAYS)

    def hub(self, spokes: int = HUB_SPOKES) -> Lab:
        """gwH (with hostH) and 1..3 spoke gateways gwSN (each with hostSN) on one wire (module picture)."""
        if not 1 <= spokes <= HUB_SPOKES:
            raise ValueError(f"spokes: 1..{HUB_SPOKES}")
        gateways = ("gwH", *(f"gwS{n}" for n in range(1, spokes + 1)))
        return self._build(_hub_links(spokes), _hub_routes(spokes), gateways)

    def host_to_host(self) -> Lab:
        """hostC = hostD on one link."""
        return self._build(HOST_LINKS, {}, ())

    def _build(self, links, routes: dict, gateways: tuple[str, ...],
               finish: Callable[[], None] | None = None) -> Lab:
        nodes = list(dict.fromkeys(p.node for link in links for p in link))
        if clash := [n for n in nodes if n in self._namespaces]:
            raise LabError(f"{self.run_name}: already built: {', '.join(clash)}")
        try:
            for node in nodes:
                self._add_node(node, gateway=node in gateways)
            for left, right in links:
                self._add_link(left, right)
            for left, right in links:
                self._add_addresses(left)
                self._add_addresses(right)
            for node, node_routes in routes.items():
                for dst, via in node_routes:
                    family = "-6" if ":" in via else "-4"
                    self._ip(node, family, "route", "add", dst, "via", via)
            if finish is not None:
                finish()
        except BaseException:
            self.teardown()
            raise
        return self

    def _masquerade(self) -> None:
        """Load the ``nat`` node's nftables ruleset (module picture) once its links and routes exist."""
        self.run(NAT_NODE, "nft", "-f", "-", input=_NAT_RULESET)

    def _add_node(self, node: str, *, gateway: bool) -> None:
        name = f"{self.run_name}-{node}"
        subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=True)
        self._namespaces[node] = name
        self.run(node, "sysctl", "-q", "-w", *_COMMON_SYSCTLS, *(_GATEWAY_SYSCTLS if gateway else ()))
        self._ip(node, "link", "set", "lo", "up")

    def _add_link(self, left: Port, right: Port) -> None:
        # Both ends are created inside lab namespaces: the peer is born in `right`'s namespace.
        dims = ("mtu", str(self.mtu), "numtxqueues", str(self.queues), "numrxqueues", str(self.queues))
        self._ip(left.node, "link", "add", left.ifname, *dims,
                 "type", "veth", "peer", "name", right.ifname, "netns", self.ns(right.node), *dims)

    def _add_addresses(self, port: Port) -> None:
        if port.role == BRIDGE_PORT:
            if self.run(port.node, "ip", "link", "show", WIRE_BRIDGE, check=False).returncode:
                self._ip(port.node, "link", "add", WIRE_BRIDGE, "type", "bridge", "mcast_snooping", "0",
                         "stp_state", "0", "forward_delay", "0")
                self._ip(port.node, "link", "set", WIRE_BRIDGE, "up")
            self._ip(port.node, "link", "set", port.ifname, "master", WIRE_BRIDGE, "up")
            self.addr.setdefault(port.node, {})["if"] = WIRE_BRIDGE
            return
        self._ip(port.node, "link", "set", port.ifname, "up")
        self._ip(port.node, "-4", "addr", "add", port.v4, "dev", port.ifname)
        self._ip(port.node, "-6", "addr", "add", port.v6, "dev", port.ifname, "nodad")
        key = f"{port.role}_" if port.role else ""
        entry = self.addr.setdefault(port.node, {})
        for family, cidr in (("v4", port.v4), ("v6", port.v6)):
            iface = ipaddress.ip_interface(cidr)
            entry[f"{key}{family}"] = str(iface.ip)
            entry[f"{key}net_{family}"] = str(iface.network)
        entry[f"{key}if"] = port.ifname
        if not port.role:
            # A host's stack leaves TCP/UDP checksums for the "hardware" to finish (CHECKSUM_PARTIAL); over a
            # veth nobody ever does, and XDP/AF_XDP hand the unfinished checksum to the gateway's worker, which
            # would encrypt it as is. A real NIC always delivers finished checksums, so hosts send them here too.
            subprocess.run([*self.nsenter(port.node), "ethtool", "-K", port.ifname, "tx", "off"],
                           capture_output=True, check=False)

    def _ip(self, node: str, *args: str) -> None:
        cmd = ["ip", "-n", self.ns(node), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            raise LabError(f"{node}: {' '.join(cmd)}: {out.stderr.strip()}")

    # -- using -----------------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return list(self._namespaces)

    def ns(self, node: str) -> str:
        """The namespace name of a node (``gwA`` -> ``xs3fa2-4242-gwA``)."""
        try:
            return self._namespaces[node]
        except KeyError:
            raise KeyError(f"{node!r} is not part of lab {self.run_name} (nodes: {self.nodes})") from None

    def nsenter(self, node: str) -> list[str]:
        """The command prefix that runs a program in the node's namespace (and sees /sys/fs/bpf)."""
        return ["nsenter", f"--net={_netns_path(self.ns(node))}", "--"]

    def run(
        self, node: str, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run a command in the node's namespace and return its (text) output; LabError if check fails."""
        out = subprocess.run(
            [*self.nsenter(node), *cmd], capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and out.returncode:
            raise LabError(f"{node}: {' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
        return out

    def popen(self, node: str, *cmd: str, **kw) -> subprocess.Popen:
        """Start a command in the node's namespace; it is killed (with its process group) at teardown.

        It always gets a session of its own, so teardown reaches whatever it forks as well.
        """
        kw["start_new_session"] = True
        proc = subprocess.Popen([*self.nsenter(node), *cmd], **kw)
        self._procs.append(proc)
        return proc

    def ping(self, src_node: str, dst_addr: str, *, count: int = 3, timeout: float = 5) -> PingResult:
        out = self.run(src_node, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1",
                       "-w", str(max(1, round(timeout))), dst_addr, check=False, timeout=timeout + 5)
        totals = re.search(r"(\d+) packets transmitted, (\d+) received", out.stdout)
        rtts = tuple(float(t) for t in re.findall(r"time=([\d.]+) ms", out.stdout))
        if not totals:
            raise LabError(f"{src_node}: ping {dst_addr}: {out.stderr.strip() or out.stdout.strip()}")
        return PingResult(int(totals[1]), int(totals[2]), rtts)

    def capture(self, node: str, iface: str, *, filter: str = "", count: int | None = None,
                timeout: float = 5) -> Capture:
        """Start tcpdump on an interface; returns once it is listening. Read the pcap with scapy's rdpcap."""
        path = self._tmpdir() / f"{node}-{iface}-{len(self._procs)}.pcap"
        # -B: a 16 MiB kernel buffer, so that full-rate transfers lose as little of the capture as possible.
        cmd = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-B", "16384", "-Z", "root", "-w", str(path)]
        if count is not None:
            cmd += ["-c", str(count)]
        if filter:
            cmd.append(filter)
        proc = self.popen(node, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump says "listening on IFACE" on stderr once the capture is armed.
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0 and sel.select(left):
                line = proc.stderr.readline()
                if "listening on" in line:
                    return Capture(proc, path)
                if not line:
                    break
        proc.kill()
        raise LabError(f"{node}: tcpdump on {iface} did not start: {proc.communicate()[1].strip()}")

    def tcp_transfer(self, src_node: str, dst_node: str, dst_addr: str, *, size: int = 20 * 2**20,
                     port: int = 5201, timeout: float = 60) -> TransferResult:
        """Stream ``size`` random bytes over TCP and compare the SHA-256 of what was sent and received."""
        receiver = self.popen(dst_node, sys.executable, "-c", _TCP_RECEIVER, dst_addr, str(port), str(timeout),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _read_line(receiver, timeout, f"{dst_node}: TCP receiver")
        sent = json.loads(self.run(src_node, sys.executable, "-c", _TCP_SENDER, dst_addr, str(port), str(size),
                                   str(timeout), timeout=timeout + 5).stdout)
        out, err = receiver.communicate(timeout=timeout)
        if receiver.returncode:
            raise LabError(f"{dst_node}: TCP receiver: {err.strip()}")
        received = json.loads(out)
        return TransferResult(received["bytes"], sent["bytes"], sent["sha256"], received["sha256"],
                              sent["seconds"])

    def udp_blast(self, src_node: str, dst_addr: str, *, size: int, count: int, rate: float | None = None,
                  port: int = 5202, sink: str | None = None, idle: float = 1.0) -> BlastResult:
        """Send ``count`` UDP datagrams of ``size`` payload bytes (at ``rate`` per second if given).

        With ``sink`` (the node owning ``dst_addr``) a receiver counts what arrives, waiting until ``count``
        datagrams or ``idle`` seconds of silence.
        """
        receiver = None
        if sink is not None:
            receiver = self.popen(sink, sys.executable, "-c", _UDP_SINK, dst_addr, str(port), str(count),
                                  str(idle), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _read_line(receiver, 10, f"{sink}: UDP sink")
        limit = 30 + (count / rate if rate else 0)
        sent = json.loads(self.run(src_node, sys.executable, "-c", _UDP_SENDER, dst_addr, str(port), str(size),
                                   str(count), str(rate or 0), timeout=limit).stdout)
        received = None
        if receiver is not None:
            received = json.loads(receiver.communicate(timeout=idle * 4 + 10)[0])["received"]
        return BlastResult(sent["sent"], received, sent["seconds"])

    # -- teardown --------------------------------------------------------------------------------------

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.run_name}-"))
        return self._tmp

    def _stop_processes(self) -> None:
        running = [p for p in self._procs if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in self._procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self._procs.clear()

    def teardown(self) -> None:
        """Kill tracked processes, delete the namespaces and the temporary files. Idempotent."""
        self._stop_processes()
        for name in reversed(self._namespaces.values()):
            _delete_netns(name)
        self._namespaces.clear()
        self.addr.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        atexit.unregister(self.teardown)


# -- command line ----------------------------------------------------------------------------------------


def _show(prefix: str) -> None:
    runs = lab_namespaces(prefix)
    if not runs:
        print(f"no lab namespaces under prefix {prefix!r}")
    for run, names in runs.items():
        print(f"{run}:")
        for name in names:
            node = name.rsplit("-", 1)[1]
            addrs = subprocess.run(["ip", "-n", name, "-br", "addr"], capture_output=True, text=True).stdout
            print(f"  {node:6} nsenter --net={_netns_path(name)} bash")
            for line in addrs.splitlines():
                if not line.startswith("lo "):
                    print(f"           {' '.join(line.split())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xdpsec.lab", description="The xdpsec namespace lab.")
    parser.add_argument("action", choices=("up", "down", "show"))
    parser.add_argument("--topology", choices=("site", "site-nat", "host", "both"), default="both",
                        help="site-nat: site-to-site with gwA behind a NAT (alone: its nodes are the site's)")
    parser.add_argument("--queues", type=int, default=2)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--tag", default="lab", help="names become <prefix><tag>-0-<node>")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces)")
    if args.action == "up":
        lab = Lab(queues=args.queues, mtu=args.mtu, tag=args.tag, prefix=args.prefix, persistent=True)
        if args.topology in ("site", "site-nat", "both"):
            lab.site_to_site(nat=args.topology == "site-nat")
        if args.topology in ("host", "both"):
            lab.host_to_host()
    elif args.action == "down":
        for run, names in lab_namespaces(args.prefix).items():
            if run == f"{args.prefix}{args.tag}-0":
                for name in names:
                    _delete_netns(name)
                print(f"deleted {run}")
        for name in cleanup_stale(args.prefix):
            print(f"deleted stale {name}")
        return 0
    _show(args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
