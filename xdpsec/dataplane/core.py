"""What a worker does to one frame, without any I/O: the sans-IO heart of the data path.

The XDP classifier has already decided what a frame is (its `kind`) and which SA it belongs to; the core
applies the SA (ESP/AH, tunnel/transport), forwards the result the way a router would (TTL, next hop, MTU,
ICMP errors, fragmentation) and hands back the frames to transmit as `(port slot, frame bytes)`. The AF_XDP
worker (xdpsec/worker.py) feeds it from UMEM rings; tests and the in-memory data plane feed it directly.

Next hops come from the kernel's routing and neighbour tables, which only the coordinator reads (netlink).
The core keeps a bounded cache of them. On a miss it records a request (`take_requests()`) and holds the
finished IP packet in a small bounded queue per next hop, as the kernel's ARP queue does; the coordinator
answers with `set_route()` once the kernel has resolved it and the held packets leave (`take_ready()`), or are
counted as `no_route`/`no_neighbor` drops if there is no way out. A full queue drops as `no_neighbor`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from xdpsec.abi import Drop, DropReason, Kind
from xdpsec.dataplane.inplace import FALLBACK, InPlan, OutPlan
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.sa import IPAddress, Mode, SAParams
from xdpsec.wire import icmp, ip
from xdpsec.wire.eth import ETH_P_IP, ETH_P_IPV6

ETH_HLEN = 14
FIB_MAX = 65536          # cached destinations per worker
REQUESTS_MAX = 1024      # outstanding next-hop requests per worker
#: Packets held while a next hop is resolved. A tunnel's first burst goes to a host nobody asked for yet, so the
#: queue is sized like the kernel's own (unres_qlen_bytes 212992: about 100 full-size packets per neighbour),
#: and bounded in bytes per worker as well: a flood toward unresolvable hosts holds at most HOLD_BYTES.
HOLD_PER_DST = 64        # packets per unresolved next hop
HOLD_DSTS = 256          # unresolved next hops with packets held
HOLD_BYTES = 1 << 20     # bytes held in all, per worker
#: Bytes kept in reserve below the path MTU when telling a sender how big it may go: ESP pads to the cipher's
#: block (up to 15 bytes for AES-CBC) so the exact overhead depends on the length; being 16 bytes conservative
#: guarantees the sender's next packet fits.
PMTU_SLACK = 16


@dataclass(frozen=True, slots=True)
class Port:
    """An interface the data path transmits on, as the core needs to know it."""

    slot: int
    name: str
    mac: bytes
    mtu: int
    addrs: tuple[IPAddress, ...] = ()

    def addr(self, version: int) -> IPAddress | None:
        return next((a for a in self.addrs if a.version == version), None)


@dataclass(frozen=True, slots=True)
class Route:
    """Where packets to one destination leave: the port, and the Ethernet header for each family."""

    slot: int
    eth4: bytes
    eth6: bytes
    mtu: int
    local: bool = False  # the destination is this host: the port is the local-delivery veth

    @classmethod
    def make(cls, slot: int, src_mac: bytes, dst_mac: bytes, mtu: int, local: bool = False) -> Route:
        return cls(slot, dst_mac + src_mac + ETH_P_IP.to_bytes(2, "big"),
                   dst_mac + src_mac + ETH_P_IPV6.to_bytes(2, "big"), mtu, local)

    def eth(self, version: int) -> bytes:
        return self.eth4 if version == 4 else self.eth6


@dataclass(slots=True)
class SACounters:
    packets: int = 0
    bytes: int = 0
    drops: Counter | None = None

    def drop(self, reason: int) -> None:
        if self.drops is None:
            self.drops = Counter()
        self.drops[reason] += 1


#: Sentinel cached for destinations the coordinator found no usable route for.
NO_ROUTE = None


class PacketCore:
    def __init__(self, wid: int, ports: dict[int, Port]) -> None:
        self.wid = wid
        self.ports = ports
        self.out: dict[int, OutboundSA] = {}
        self.inb: dict[int, InboundSA] = {}
        self.sa_stats: dict[int, SACounters] = {}
        # The in-place fast path's per-SA plans (xdpsec/dataplane/inplace.py), for SAs it handles.
        self._out_plans: dict[int, OutPlan] = {}
        self._in_plans: dict[int, InPlan] = {}
        self.fib: dict[bytes, Route | None] = {}
        self._requests: dict[bytes, None] = {}  # ordered set
        # next hop -> [(sa index or -1, IP packet, TTL still to be decremented)]
        self._held: dict[bytes, list[tuple[int, bytes, bool]]] = {}
        self._held_bytes = 0
        self._ready: list[tuple[int, bytes]] = []
        self.drops: Counter[int] = Counter()
        self.rx = 0
        self.tx = 0
        self.dummies = 0
        self.icmp_sent = 0
        # Called with (sa_index, seq) after each outbound packet and (sa_index, seq) after each inbound one;
        # the worker persists them so a restart neither reuses nor re-accepts a sequence number.
        self.on_inbound_seq: Callable[[int, int], None] | None = None

    # --- SAD shard -------------------------------------------------------------------------------------------
    def add_outbound(self, index: int, params: SAParams, next_seq: int = 1,
                     reserve: Callable[[OutboundSA], int] | None = None) -> None:
        self.out[index] = OutboundSA(params, next_seq=next_seq, reserve=reserve)
        self.sa_stats[index] = SACounters()
        self._plan(index)

    def add_inbound(self, index: int, params: SAParams, highest_seq: int = 0) -> None:
        sa = InboundSA(params)
        if highest_seq:
            # Everything up to the highest sequence number seen before a restart counts as seen: a replay of an
            # old packet must not slip through a window that forgot it.
            sa.window.restore(highest_seq)
        self.inb[index] = sa
        self.sa_stats[index] = SACounters()
        self._plan(index)

    def update(self, index: int, params: SAParams) -> None:
        """New outer addresses/ports for an SA (the peer moved behind its NAT), same SPI and keys: the sequence
        counter and the replay window carry over, so no number is used or accepted twice."""
        if (old := self.out.get(index)) is not None:
            sa = OutboundSA(params, next_seq=old.seq + 1, reserve=old._reserve)
            sa.seq_limit = old.seq_limit
            self.out[index] = sa
        elif (old_in := self.inb.get(index)) is not None:
            sa_in = InboundSA(params)
            sa_in.window = old_in.window
            self.inb[index] = sa_in
        self._plan(index)

    def remove(self, index: int) -> None:
        self.out.pop(index, None)
        self.inb.pop(index, None)
        self.sa_stats.pop(index, None)
        self._plan(index)

    def _plan(self, index: int) -> None:
        """(Re)build or forget the fast-path plan of SA `index` after any change to it: a plan holds the SA
        object itself, so it never outlives or shadows the SAD entry."""
        self._out_plans.pop(index, None)
        self._in_plans.pop(index, None)
        if (sa := self.out.get(index)) is not None and (plan := OutPlan.build(sa, index)) is not None:
            self._out_plans[index] = plan
        elif (sa_in := self.inb.get(index)) is not None and (plan_in := InPlan.build(sa_in, index)) is not None:
            self._in_plans[index] = plan_in

    # --- next hops -------------------------------------------------------------------------------------------
    def set_route(self, dst: bytes, route: Route | None) -> None:
        if len(self.fib) >= FIB_MAX and dst not in self.fib:
            self.fib.pop(next(iter(self.fib)))  # oldest first: the cache is bounded, the kernel is the truth
        self.fib[dst] = route
        self._requests.pop(dst, None)
        for sa_index, pkt, decrement in self._unhold(dst):
            if route is None:
                self.count_drop(DropReason.NO_ROUTE, sa_index)
                continue
            if decrement and not route.local:
                buf = bytearray(pkt)
                if not ip.decrement_ttl(buf):
                    self.count_drop(DropReason.TTL_EXCEEDED, sa_index)
                    continue
                pkt = bytes(buf)
            self._ready.append((route.slot, route.eth(pkt[0] >> 4) + pkt))

    def unresolved(self, dst: bytes) -> None:
        """The coordinator could not resolve `dst` this time: drop what waits for it (it will ask again)."""
        for sa_index, _pkt, _decrement in self._unhold(dst):
            self.count_drop(DropReason.NO_NEIGHBOR, sa_index)

    def forget_routes(self) -> None:
        self.fib.clear()

    def take_requests(self) -> list[bytes]:
        out = list(self._requests)
        self._requests.clear()
        return out

    def take_ready(self) -> list[tuple[int, bytes]]:
        """Frames released by set_route() for packets that were waiting for their next hop."""
        out, self._ready = self._ready, []
        self.tx += len(out)
        return out

    def _route(self, dst: bytes) -> Route | None:
        """The route to `dst`, or None after asking the coordinator for it (the caller holds the packet)."""
        try:
            route = self.fib[dst]
        except KeyError:
            if len(self._requests) < REQUESTS_MAX:
                self._requests[dst] = None
            return None
        if route is None:
            raise Drop(DropReason.NO_ROUTE)
        return route

    def _hold(self, dst: bytes, sa_index: int, pkt: bytes, decrement: bool = False) -> None:
        held = self._held.get(dst)
        if held is None:
            if len(self._held) >= HOLD_DSTS:
                raise Drop(DropReason.NO_NEIGHBOR)
            held = self._held[dst] = []
        if len(held) >= HOLD_PER_DST or self._held_bytes + len(pkt) > HOLD_BYTES:
            raise Drop(DropReason.NO_NEIGHBOR)
        held.append((sa_index, pkt, decrement))
        self._held_bytes += len(pkt)

    def _unhold(self, dst: bytes) -> list[tuple[int, bytes, bool]]:
        held = self._held.pop(dst, [])
        self._held_bytes -= sum(len(pkt) for _sa, pkt, _dec in held)
        return held

    # --- packets ---------------------------------------------------------------------------------------------
    def process_frame(self, slot: int, buf: memoryview, addr: int, length: int, kind: int, sa_index: int,
                      l3_off: int, out: list, frame_size: int = 2048) -> tuple[int, int, int] | None:
        """Process the classified frame at buf[addr:addr + length], a UMEM frame of `frame_size` bytes.

        Returns (egress slot, start, length) when the result was built in place in the same frame (the
        caller transmits that descriptor and must not reuse the frame until it completes); otherwise None,
        the frame is the caller's again, and any frames to send were appended to `out` as (slot, bytes)
        copies. The in-place path (inplace.py) takes ESP tunnel-mode AEAD SAs and ordinary packets;
        everything else, and every packet it declines, goes through `process` unchanged.
        """
        if kind == Kind.PROTECT:
            plan = self._out_plans.get(sa_index)
        elif kind == Kind.ESP or kind == Kind.ESP_UDP:
            plan = self._in_plans.get(sa_index)
        else:
            plan = None
        if plan is not None and length > l3_off:
            lo = addr & -frame_size
            self.rx += 1
            try:
                if kind == Kind.PROTECT:
                    res = plan.run(self, buf, addr + l3_off, length - l3_off, lo, lo + frame_size)
                else:
                    res = plan.run(self, buf, addr + l3_off, length - l3_off, out)
            except Drop as d:
                self.count_drop(d.reason, sa_index)
                res = None
            if res is not FALLBACK:
                self.tx += len(out) + (res is not None)
                return res
            self.rx -= 1  # counted again by process()
        out += self.process(slot, buf[addr:addr + length], kind, sa_index, l3_off)
        return None

    def process(self, slot: int, frame: bytes | bytearray | memoryview, kind: int, sa_index: int,
                l3_off: int) -> list[tuple[int, bytes]]:
        """Process one classified frame that arrived on port `slot`; return the frames to transmit."""
        self.rx += 1
        out: list[tuple[int, bytes]] = []
        try:
            if kind == Kind.PROTECT:
                self._outbound(slot, frame, sa_index, l3_off, out)
            elif kind in (Kind.ESP, Kind.ESP_UDP, Kind.AH):
                self._inbound(frame, sa_index, l3_off, out)
            else:
                raise Drop(DropReason.BAD_META)
        except Drop as d:
            self.count_drop(d.reason, sa_index)
        self.tx += len(out)
        return out

    def count_drop(self, reason: int, sa_index: int | None = None) -> None:
        self.drops[reason] += 1
        if sa_index is not None and (st := self.sa_stats.get(sa_index)) is not None:
            st.drop(reason)

    def _ip_packet(self, frame, l3_off: int) -> tuple[bytearray, ip.IPInfo]:
        pkt = frame[l3_off:]
        # XDP sees frames before the kernel checks anything: a router must verify the header checksum itself
        # (RFC 1812 §5.2.2).
        info = ip.parse(pkt, verify_checksum=True)
        return bytearray(pkt[:info.total_len]), info

    def _outbound(self, slot: int, frame, sa_index: int, l3_off: int, out: list) -> None:
        sa = self.out.get(sa_index)
        if sa is None:
            raise Drop(DropReason.NO_SA)
        pkt, info = self._ip_packet(frame, l3_off)
        if sa.params.mode == Mode.TUNNEL and not ip.decrement_ttl(pkt):
            # We forward the inner packet: RFC 1812 §5.3.1 applies before encapsulation.
            self._reply_icmp(slot, frame, icmp.time_exceeded(bytes(pkt), self._src_for(slot, info.version)), out)
            raise Drop(DropReason.TTL_EXCEEDED)
        route = self._route(sa.params.remote.packed)
        outer = protect(sa, bytes(pkt))
        if route is None:
            self._count_sa(sa_index, outer)
            self._hold(sa.params.remote.packed, sa_index, outer)
            return
        if len(outer) > route.mtu:
            inner_mtu = route.mtu - (len(outer) - len(pkt)) - PMTU_SLACK
            if info.version == 4 and not info.df and inner_mtu >= 68:
                # Red-side fragmentation (RFC 4301 §8.1): fragment the inner packet so that each fragment fits
                # after encapsulation, and the far gateway never has to reassemble ESP.
                for piece in ip.fragment_ipv4(bytes(pkt), inner_mtu & ~7):
                    self._emit(route, sa_index, protect(sa, piece), out)
                return
            err = icmp.too_big(bytes(pkt), max(inner_mtu, 68 if info.version == 4 else 1280),
                               self._src_for(slot, info.version))
            self._reply_icmp(slot, frame, err, out)
            raise Drop(DropReason.TOO_BIG)
        self._emit(route, sa_index, outer, out)

    def _emit(self, route: Route, sa_index: int, outer: bytes, out: list) -> None:
        self._count_sa(sa_index, outer)
        out.append((route.slot, route.eth(outer[0] >> 4) + outer))

    def _count_sa(self, sa_index: int, pkt: bytes) -> None:
        st = self.sa_stats[sa_index]
        st.packets += 1
        st.bytes += len(pkt)

    def _inbound(self, frame, sa_index: int, l3_off: int, out: list) -> None:
        sa = self.inb.get(sa_index)
        if sa is None:
            raise Drop(DropReason.UNKNOWN_SPI)
        pkt, _info = self._ip_packet(frame, l3_off)
        inner = unprotect(sa, bytes(pkt))
        st = self.sa_stats[sa_index]
        st.packets += 1
        st.bytes += len(pkt)
        if self.on_inbound_seq is not None:
            self.on_inbound_seq(sa_index, sa.window.top)
        if inner is None:  # an ESP dummy packet (RFC 4303 §2.6): authenticated, then discarded by design
            self.dummies += 1
            return
        self.forward(bytearray(inner), out, decrement=True, sa_index=sa_index)

    def forward(self, pkt: bytearray, out: list, *, decrement: bool, sa_index: int = -1) -> None:
        """Send an IP packet toward its destination as the kernel's tables say (inner packets after decap)."""
        info = ip.parse(pkt)
        route = self._route(info.dst)
        if route is None:  # the TTL is decremented on release, once the route says whether it is for us
            self._hold(info.dst, sa_index, bytes(pkt), decrement)
            return
        if decrement and not route.local and not ip.decrement_ttl(pkt):
            raise Drop(DropReason.TTL_EXCEEDED)
        if len(pkt) > route.mtu:
            if info.version == 4 and not info.df:
                for piece in ip.fragment_ipv4(bytes(pkt), route.mtu):
                    out.append((route.slot, route.eth(4) + piece))
                return
            raise Drop(DropReason.TOO_BIG)
        out.append((route.slot, route.eth(info.version) + bytes(pkt)))

    def _src_for(self, slot: int, version: int) -> IPAddress:
        port = self.ports.get(slot)
        addr = port.addr(version) if port else None
        if addr is None:  # no address of that family on the port: use any of ours rather than stay silent
            addr = next((a for p in self.ports.values() for a in p.addrs if a.version == version), None)
        return addr or (ipaddress.IPv4Address(0) if version == 4 else ipaddress.IPv6Address(0))

    def _reply_icmp(self, slot: int, frame, err: bytes | None, out: list) -> None:
        """Send an ICMP error back the way the offending frame came: to its sender's MAC, out of its port."""
        if err is None:
            return
        src_mac = bytes(frame[6:12])
        port = self.ports.get(slot)
        if port is None:
            return
        ethertype = ETH_P_IP if err[0] >> 4 == 4 else ETH_P_IPV6
        out.append((slot, src_mac + port.mac + ethertype.to_bytes(2, "big") + err))
        self.icmp_sent += 1

