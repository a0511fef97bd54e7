"""The local path: how this host's own traffic enters and leaves the data path.

XDP runs on *received* frames only, so a packet the host itself sends (transport mode, or a gateway's own
packet to the far site) never meets the classifier on its way out. The coordinator therefore creates a veth
pair — the kernel's end `xdps0`, the data path's end `xdps1` — and routes the remote traffic selectors into it:

    local socket ─► routing table 220 (rule: "from this host, lookup 220") ─► xdps0 ═► xdps1 ─► XDP ─► worker
    worker ─► (decapsulated, for this host) ─► AF_XDP tx on xdps1 ═► xdps0 ─► kernel delivers locally

strongSwan's libipsec does the same with a TUN device (`ipsec0`) and table 220. Details that matter:
* the rule matches `iif lo` only, so forwarded traffic never takes the detour;
* the coordinator's own lookups of the peers' addresses carry BYPASS_MARK (rule 219 sends them to `main`),
  otherwise the ESP packets themselves would be routed back into the veth;
* `xdps0` is NOARP (no neighbour discovery toward our own veth), has checksum offload off (a partial checksum
  would be encrypted as is and fail at the far end) and rp_filter off;
* the routes carry an MTU below the uplinks' by the worst ESP overhead (ROUTE_MTU_OVERHEAD), so the host's own
  TCP picks segments that fit after encapsulation (strongSwan gives `ipsec0` MTU 1400 for the same reason);
  the device itself keeps the full MTU so decapsulated packets of any size can be delivered. `accept_local`
  lets the "fragmentation needed" a worker sends from the host's own address through, should one be needed.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from pathlib import Path

from xdpsec.sa import IPAddress, IPNetwork

log = logging.getLogger("xdpsec.localpath")

KERNEL_END = "xdps0"
DATAPATH_END = "xdps1"
TABLE = 220
RULE_PREF = 220
BYPASS_PREF = 219
BYPASS_MARK = 0x78647073  # "xdps": lookups with this mark ignore table 220
#: Worst-case bytes ESP adds: IPv6 outer header 40, UDP encapsulation 8, SPI and sequence 8, AES-CBC IV 16,
#: padding up to 15 and its 2 trailer bytes, HMAC-SHA-512-256 ICV 32 = 121, rounded up.
ROUTE_MTU_OVERHEAD = 128


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys") / path.replace(".", "/")
    if p.exists():
        p.write_text(value)


class LocalPath:
    def __init__(self, queues: int, mtu: int) -> None:
        self.queues = queues
        self.mtu = mtu
        self.routes: list[tuple[IPNetwork, IPAddress | None]] = []
        self.rules: list[tuple[str, ...]] = []

    def up(self, routes: list[tuple[IPNetwork, IPAddress | None]]) -> None:
        self.down(quiet=True)  # a previous run killed with SIGKILL may have left it
        q = str(self.queues)
        _ip("link", "add", KERNEL_END, "numtxqueues", q, "numrxqueues", q, "type", "veth",
            "peer", "name", DATAPATH_END, "numtxqueues", q, "numrxqueues", q)
        for dev in (KERNEL_END, DATAPATH_END):
            _ip("link", "set", dev, "mtu", str(self.mtu))
            _sysctl(f"net.ipv4.conf.{dev}.rp_filter", "0")
            _sysctl(f"net.ipv4.conf.{dev}.accept_local", "1")
            _sysctl(f"net.ipv6.conf.{dev}.accept_dad", "0")
        _ip("link", "set", KERNEL_END, "arp", "off")
        subprocess.run(["ethtool", "-K", KERNEL_END, "tx", "off"], capture_output=True)
        _ip("link", "set", DATAPATH_END, "up")
        _ip("link", "set", KERNEL_END, "up")
        for fam in ("-4", "-6"):
            for rule in (("pref", str(BYPASS_PREF), "fwmark", hex(BYPASS_MARK), "lookup", "main"),
                         ("pref", str(RULE_PREF), "iif", "lo", "lookup", str(TABLE))):
                _ip(fam, "rule", "add", *rule)
                self.rules.append((fam, *rule))
        for net, src in routes:
            args = ["route", "replace", str(net), "dev", KERNEL_END, "table", str(TABLE),
                    "mtu", str(self.mtu - ROUTE_MTU_OVERHEAD)]
            if src is not None:
                args += ["src", str(src)]
            _ip(*args)
            self.routes.append((net, src))
        log.info("local path %s/%s up: %s", KERNEL_END, DATAPATH_END,
                 ", ".join(str(n) for n, _ in routes) or "no routes")

    def down(self, quiet: bool = False) -> None:
        for fam in ("-4", "-6"):
            for pref in (BYPASS_PREF, RULE_PREF):
                while _ip(fam, "rule", "del", "pref", str(pref), check=False).returncode == 0:
                    pass
            _ip(fam, "route", "flush", "table", str(TABLE), check=False)
        if _ip("link", "del", KERNEL_END, check=False).returncode == 0 and not quiet:
            log.info("local path removed")
        self.routes.clear()
        self.rules.clear()


def local_routes(children, local_addrs: set[IPAddress]) -> list[tuple[IPNetwork, IPAddress | None]]:
    """Routes into the local path: each remote selector of a child whose local selectors include one of our
    addresses (that address becomes the source the kernel picks)."""
    routes: dict[IPNetwork, IPAddress | None] = {}
    for local_ts, remote_ts in children:
        for ts in remote_ts:
            net = ts.net if hasattr(ts, "net") else ipaddress.ip_network(ts)
            src = next((a for a in sorted(local_addrs, key=str) if a.version == net.version
                        and any(a in (lt.net if hasattr(lt, "net") else ipaddress.ip_network(lt))
                                for lt in local_ts)), None)
            if src is not None:
                routes.setdefault(net, src)
    return sorted(routes.items(), key=lambda r: (r[0].version, str(r[0])))
