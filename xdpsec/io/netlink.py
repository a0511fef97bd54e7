"""Interfaces, routes and neighbours from the kernel, for the coordinator (pyroute2, rtnetlink).

Frames a worker transmits bypass the kernel stack, so the coordinator must tell it what the stack would have
done: which interface a destination leaves by, the next hop's MAC address and the path MTU. `resolve()` does
that with the kernel's own tables: RTM_GETROUTE (the same lookup a forwarded packet gets, fwmark included),
then the neighbour entry of the next hop.

A next hop the kernel has never talked to has no neighbour entry, and nothing would make one: the frames that
would trigger ARP/ND go out through AF_XDP, not through the stack. `solicit()` asks the kernel to resolve it
with an RTM_NEWNEIGH carrying NTF_USE (what ``ip neigh replace ADDR dev IF use`` sends): in
net/core/neighbour.c neigh_add() creates the entry and, for NTF_USE, calls neigh_event_send() instead of
updating it, which is exactly what an outgoing packet does: the entry goes INCOMPLETE and the kernel sends
ARP requests (RFC 826) or Neighbor Solicitations (RFC 4861 §7.2.2) with its usual retransmits. Unlike
iproute2 (whose default state is NUD_PERMANENT), the request carries state NUD_NONE: with NTF_USE the state
is not applied anyway, and neigh_add() exempts entries requested as PERMANENT from garbage collection, which
an address that never answers should not be. tests/netns/test_netlink.py checks it against never-seen neighbours.

All calls act on the network namespace of the calling process: create `Netlink` inside the gateway's.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xdpsec.sa import IPAddress


class NUD(enum.IntFlag):
    """Neighbour states (include/uapi/linux/neighbour.h)."""

    NONE = 0x00
    INCOMPLETE = 0x01
    REACHABLE = 0x02
    STALE = 0x04
    DELAY = 0x08
    PROBE = 0x10
    FAILED = 0x20
    NOARP = 0x40
    PERMANENT = 0x80


#: States whose link-layer address may be used to send: STALE/DELAY/PROBE are still valid addresses the
#: kernel is re-confirming (RFC 4861 §7.3.3: packets are sent to a STALE entry, which starts confirmation).
USABLE = NUD.REACHABLE | NUD.STALE | NUD.DELAY | NUD.PROBE | NUD.PERMANENT | NUD.NOARP

NTF_USE = 0x01


class RouteType(enum.IntEnum):
    """Route types (RTN_* in include/uapi/linux/rtnetlink.h) that `route()` distinguishes."""

    UNICAST = 1
    LOCAL = 2


#: RTM_GETROUTE errors that mean "no way there": no route, unreachable, prohibit, blackhole.
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL})

#: First wait between neighbour polls while a solicitation is under way, then doubled up to _POLL_MAX.
_POLL_FIRST = 0.002
_POLL_MAX = 0.05


@dataclass(frozen=True)
class Iface:
    index: int
    name: str
    mac: bytes
    mtu: int
    addrs: tuple[IPAddress, ...]
    rx_queues: int


@dataclass(frozen=True)
class NextHop:
    """Where to send a frame: out of `ifindex`, from `src_mac` to `dst_mac`, at most `mtu` bytes of IP.

    `gateway` is None for an on-link destination. `local` destinations (an address of this host) carry the
    route's interface (lo) and its MAC addresses, and are for the kernel stack, not for transmit.
    """

    ifindex: int
    ifname: str
    src_mac: bytes
    dst_mac: bytes
    mtu: int
    gateway: IPAddress | None
    local: bool


def _mac(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


class Netlink:
    """One rtnetlink socket in the current namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iface(self, name_or_index: str | int) -> Iface:
        """An interface by name or index; rx_queues from IFLA_NUM_RX_QUEUES (no /sys, which may be another
        namespace's when the process entered this one with nsenter --net)."""
        if isinstance(name_or_index, str):
            indexes = self._ipr.link_lookup(ifname=name_or_index)
            if not indexes:
                raise LookupError(f"no interface {name_or_index!r}")
            index = indexes[0]
        else:
            index = name_or_index
        link = self._ipr.link("get", index=index)[0]
        addrs = tuple(ipaddress.ip_address(a.get("IFA_ADDRESS")) for a in self._ipr.get_addr(index=index))
        return Iface(
            index=link["index"],
            name=link.get("IFLA_IFNAME"),
            mac=_mac(link.get("IFLA_ADDRESS")),
            mtu=link.get("IFLA_MTU"),
            addrs=addrs,
            rx_queues=link.get("IFLA_NUM_RX_QUEUES") or 1,
        )

    def route(self, dst: IPAddress, *, mark: int | None = None) -> tuple[int, IPAddress | None, int, bool] | None:
        """(oif, gateway, mtu, is_local) of the kernel's route to `dst`, or None if it has no usable one.

        The MTU is the route's (an explicit ``mtu`` or a learned path MTU) if it has one, else the
        interface's. Broadcast, multicast and other route types are not forwarded by us: None.
        """
        kw = {"dst": str(dst)}
        if mark is not None:
            kw["mark"] = mark
        try:
            answer = self._ipr.route("get", **kw)[0]
        except NetlinkError as e:
            if e.code in _NO_ROUTE:
                return None
            raise
        if answer["type"] not in (RouteType.UNICAST, RouteType.LOCAL):
            return None
        oif = answer.get("RTA_OIF")
        gateway = answer.get("RTA_GATEWAY")
        metrics = answer.get("RTA_METRICS")
        mtu = (metrics.get("RTAX_MTU") if metrics else None) or self._ipr.link("get", index=oif)[0].get("IFLA_MTU")
        return oif, ipaddress.ip_address(gateway) if gateway else None, mtu, answer["type"] == RouteType.LOCAL

    def neighbour(self, ifindex: int, addr: IPAddress) -> bytes | None:
        """The link-layer address of `addr` on `ifindex` if the kernel has a usable entry, else None."""
        try:
            entry = self._ipr.neigh("get", dst=str(addr), ifindex=ifindex)[0]
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None
            raise
        lladdr = entry.get("NDA_LLADDR")
        if not (NUD(entry["state"]) & USABLE) or lladdr is None:
            return None
        return _mac(lladdr)

    def solicit(self, ifindex: int, addr: IPAddress) -> None:
        """Make the kernel resolve `addr` on `ifindex` as if a packet were waiting for it (module docstring)."""
        self._ipr.neigh("replace", dst=str(addr), ifindex=ifindex, flags=NTF_USE, state=NUD.NONE)

    def resolve(self, dst: IPAddress, *, timeout: float = 1.0, mark: int | None = None) -> NextHop | None:
        """The next hop for `dst`: route, then neighbour, soliciting and polling until `timeout` if unknown.

        None if there is no route or the neighbour did not answer in time (the kernel keeps trying for a
        while; a later call may succeed).
        """
        found = self.route(dst, mark=mark)
        if found is None:
            return None
        oif, gateway, mtu, local = found
        # Name and MAC only: iface() also lists the interface's addresses, which on a gateway with a thousand
        # outer addresses made every resolution decode a thousand netlink messages.
        link = self._ipr.link("get", index=oif)[0]
        name, mac = link.get("IFLA_IFNAME"), _mac(link.get("IFLA_ADDRESS"))
        if local:
            return NextHop(oif, name, mac, mac, mtu, None, True)
        hop = gateway or dst
        dst_mac = self.neighbour(oif, hop)
        if dst_mac is None:
            dst_mac = self._solicit_and_wait(oif, hop, timeout)
        if dst_mac is None:
            return None
        return NextHop(oif, name, mac, dst_mac, mtu, gateway, False)

    def _solicit_and_wait(self, ifindex: int, addr: IPAddress, timeout: float) -> bytes | None:
        # Polling keeps this a plain request/response socket; the answer typically lands within a
        # millisecond on a live link, so the first polls are short.
        deadline = time.monotonic() + timeout
        self.solicit(ifindex, addr)
        pause = _POLL_FIRST
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)
            if (mac := self.neighbour(ifindex, addr)) is not None:
                return mac
        return None
