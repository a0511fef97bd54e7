"""IkeManager: every IKE SA of the gateway, the datagrams between them and the shell, timers, events.

Sans-IO (aioquic's shape): the shell calls `receive_datagram(data, local, remote, now)` for each UDP payload
(without the non-ESP marker on port 4500), then sends `datagrams_to_send()`, sleeps until `get_timer()`, calls
`handle_timer(now)`, and drains `next_event()`. `now` is UNIX time in seconds: certificate validity is checked
against it.

Routing (RFC 7296 §2.6): an IKE SA is found by *our* SPI, the responder SPI of messages from an original
initiator (I flag set) and the initiator SPI otherwise. A new IKE_SA_INIT request (responder SPI zero) creates
a half-open SA, bounded by `max_half_open`; its retransmissions are recognised by (initiator SPI, peer) and
answered from the SA's cache. From `cookie_threshold` half-open SAs on, a new request must echo a COOKIE
(§2.6, cookie.py): without one it gets a stateless N(COOKIE) and creates nothing (`cookie_sent`, `cookie_ok`,
`cookie_bad` count them). Messages for SPIs we do not know are dropped: §2.21.4 allows INVALID_IKE_SPI
there but does not require it, and an unauthenticated answer to spoofed sources would make us a reflector.
Nothing a peer sends makes `receive_datagram` raise.

Rekeying (tasks/child_rekey.py, tasks/ike_rekey.py) is driven by each SA's lifetimes, or by `rekey_child` and
`rekey_ike`. An IKE SA born of a rekey is adopted here under its own SPI. Child SAs whose IKE SA died because a
rekey went unanswered are kept as orphans until their hard lifetime, then reported down. `stats` counts what
happened (`retransmit`, `child_rekey`, `ike_rekey`, `rekey_failed`, `ike_established`, drops by reason) and
`handshakes` keeps the last durations from the first IKE_SA_INIT to IKE_AUTH done.

Many peers on one `%any` connection may ask for the same traffic; the data path gives each peer's child its
own policies, and two for the same selectors would let the first silently take the second's traffic. So a
responder's new child asks the shell's `ts_in_use` hook whether another peer's child holds traffic its
narrowed selectors overlap, and answers TS_UNACCEPTABLE if so (RFC 7296 §2.9; in IKE_AUTH the IKE SA still
comes up without the child, §2.21.2). Rekeys are not asked: they keep their own child's selectors.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable, Sequence

from xdpsec.ike import wire
from xdpsec.ike.conf import ChildConfig, IkeConnConfig, StartAction
from xdpsec.ike.consts import ExchangeType
from xdpsec.ike.cookie import CookieJar, Verdict, challenge, scan
from xdpsec.ike.events import ChildDown, Event
from xdpsec.ike.sa import Addr, Child, ChildState, IkeSA, Services, State
from xdpsec.ike.tasks.child_create import ChildCreate
from xdpsec.ike.tasks.child_rekey import ChildRekey
from xdpsec.ike.tasks.ike_auth import IkeAuth
from xdpsec.ike.tasks.ike_init import IkeInit
from xdpsec.ike.tasks.ike_intermediate import IkeIntermediate
from xdpsec.ike.tasks.ike_rekey import IkeRekey
from xdpsec.ike.tasks.informational import DeleteChild
from xdpsec.sa import IPAddress

_HALF_OPEN = (State.CREATED, State.CONNECTING)
HANDSHAKES_KEPT = 1024
#: Half-open IKE SAs from which on IKE_SA_INIT needs a COOKIE (§2.6); strongSwan's charon.cookie_threshold is 10.
COOKIE_THRESHOLD = 64

Usage = Callable[[int], "tuple[int, int] | None"]
#: (conn, child, peer, local_ts, remote_ts) -> whether another peer's child holds traffic these overlap. `peer`
#: is the new child's peer as the data path tells peers apart: (address, ESP-in-UDP port behind a NAT or None).
TsInUse = Callable[[str, str, "tuple[IPAddress, int | None]", tuple, tuple], bool]


class IkeManager:
    def __init__(self, conns: Sequence[IkeConnConfig], *, rng: Callable[[int], bytes] = os.urandom,
                 spi_in_use: Callable[[int], bool] = lambda spi: False, max_half_open: int = 1024,
                 usage: Usage | None = None, cookie_threshold: int = COOKIE_THRESHOLD,
                 max_per_peer: int = 0, ts_in_use: TsInUse | None = None):
        self.conns = {c.name: c for c in conns}
        self.stats: Counter[str] = Counter()
        #: Seconds from the first IKE_SA_INIT to IKE_AUTH done, the latest HANDSHAKES_KEPT of them.
        self.handshakes: deque[float] = deque(maxlen=HANDSHAKES_KEPT)
        self._orphans: list[tuple[str, Child]] = []
        self._rng = rng
        self._spi_in_use = spi_in_use
        self._max_half_open = max_half_open
        self._max_per_peer = max_per_peer  # IKE SAs a responder keeps for one peer address; 0 = no bound
        self._cookie_threshold = cookie_threshold  # at or above max_half_open: no cookies, the limit alone
        self._cookies = CookieJar(rng)
        self._ts_hook = ts_in_use
        self._sas: dict[int, IkeSA] = {}                    # by our SPI
        self._half_open: dict[tuple[int, Addr], IkeSA] = {}  # responder: (peer's SPI, peer) -> SA
        self._child_spis: set[int] = set()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Addr, Addr]] = []
        self._services = Services(rng=rng, new_child_spi=self._new_child_spi, emit=self._emit,
                                  send=lambda data, local, remote: self._out.append((data, local, remote)),
                                  count=self._count, reinitiate=self._reinitiate,
                                  initial_contact=self._initial_contact, new_ike_spi=self._new_ike_spi,
                                  adopt=self._adopt, orphan=self._orphan, usage=usage,
                                  established=self._established, ts_in_use=self._ts_in_use)
        self._now = 0.0
        #: Re-raise internal errors instead of counting them: for tests, which must see our bugs.
        self.strict = False

    def _initial_contact(self, new: IkeSA) -> None:
        """RFC 7296 §2.4: INITIAL_CONTACT from an authenticated peer: forget our other IKE SAs with that identity
        on that connection (no Delete is sent: the peer no longer knows them)."""
        for ike in list(self._sas.values()):
            if ike is not new and ike.name == new.name and ike.peer_id == new.peer_id \
                    and ike.state == State.ESTABLISHED:
                self._count("initial_contact_replaced")
                ike.die("replaced: the peer sent INITIAL_CONTACT")

    def _established(self, ike: IkeSA) -> None:
        self._count("ike_established")
        self.handshakes.append(max(0.0, ike.now - ike.created))

    def _ts_in_use(self, ike: IkeSA, child: str, local_ts: tuple, remote_ts: tuple) -> bool:
        """A responder's new child (not a rekey) narrowed to these selectors: may it have them? The shell's hook
        decides (it knows which peer's child holds what); without one, yes. Refusals count as `ts_in_use`."""
        if self._ts_hook is None:
            return False
        peer = (ike.remote[0], ike.remote[1] if ike.nat else None)
        if not self._ts_hook(ike.name, child, peer, local_ts, remote_ts):
            return False
        self._count("ts_in_use")
        return True

    def _adopt(self, ike: IkeSA) -> None:
        self._sas[ike.my_spi] = ike

    def _orphan(self, ike: IkeSA, children: list[Child]) -> None:
        """Children of an IKE SA that died because a rekey went unanswered: in the data path until their hard
        lifetime (none configured: down now)."""
        for child in children:
            if child.expire_at is None or child.expire_at <= self._now:
                self._emit(ChildDown(ike.name, child.name, child.out.spi, child.inb.spi))
            else:
                self._orphans.append((ike.name, child))

    # --- the shell's API ----------------------------------------------------------------------------------

    def initiate(self, conn: str, child: str | None, now: float) -> None:
        """Bring up `child` of `conn` (all children if None): in IKE_AUTH when no IKE SA exists yet,
        else with CREATE_CHILD_SA on the established one."""
        self._now = now
        cfg = self._conn(conn)
        children = self._children(cfg, child)
        ike = self._active(conn)
        if ike is None:
            if not cfg.local_addrs or not cfg.remote_addrs:
                raise ValueError(f"{conn}: initiating needs a local and a remote address")
            ike = IkeSA(cfg, initiator=True, ispi=self._new_ike_spi(), local=(cfg.local_addrs[0], cfg.local_port),
                        remote=(cfg.remote_addrs[0], cfg.remote_port), services=self._services, now=now)
            self._sas[ike.ispi] = ike
            ike.queue([IkeInit(ike, initiator=True)], now)
            ike.queue([IkeIntermediate(ike, initiator=True)], now)  # RFC 9370; dropped unsent if none chosen
            first, children = children[0], children[1:]
            ike.queue([IkeAuth(ike, initiator=True),
                       ChildCreate(ike, initiator=True, child=first, in_ike_auth=True)], now)
        for c in children:
            ike.queue([ChildCreate(ike, initiator=True, child=c)], now)
        self._sweep()

    def terminate(self, conn: str, now: float) -> None:
        """Delete every IKE SA of `conn` (INFORMATIONAL Delete, §1.4.1); ChildDown/IkeDown follow."""
        self._now = now
        self._conn(conn)
        for ike in [s for s in self._sas.values() if s.name == conn]:
            ike.delete("terminated", now)
        self._sweep()

    def terminate_child(self, conn: str, child: str, now: float) -> None:
        """Delete the child SAs named `child` of `conn` (§1.4.1)."""
        self._now = now
        for ike in [s for s in self._sas.values() if s.name == conn and s.state == State.ESTABLISHED]:
            for c in [c for c in ike.children if c.name == child]:
                c.state = ChildState.DELETING
                ike.queue([DeleteChild(ike, initiator=True, in_spi=c.inb.spi, protocol=c.inb.protocol)], now)
        self._sweep()

    def terminate_child_spi(self, in_spi: int, now: float) -> bool:
        """Delete the one child pair whose inbound SPI is `in_spi` (§1.4.1); False if no established IKE SA
        holds it. By SPI, not name: every peer of a `%any` responder has a child of that name."""
        self._now = now
        for ike in self._sas.values():
            pair = next((c for c in ike.children if c.inb.spi == in_spi), None)
            if pair is None or ike.state != State.ESTABLISHED:
                continue
            pair.state = ChildState.DELETING  # neither rekeyed nor expired while its Delete is on the way
            ike.queue([DeleteChild(ike, initiator=True, in_spi=in_spi, protocol=pair.inb.protocol)], now)
            return True
        return False

    def rekey_child(self, conn: str, child: str | None, now: float) -> int:
        """Rekey the child SAs named `child` of `conn` (all of them if None) now (§2.8); how many were queued."""
        self._now = now
        self._conn(conn)
        queued = 0
        for ike in [s for s in self._sas.values() if s.name == conn and s.usable]:
            for c in ike.children:
                if c.state == ChildState.INSTALLED and (child is None or c.name == child):
                    ike.queue([ChildRekey(ike, initiator=True, old=c)], now)
                    queued += 1
        self._sweep()
        return queued

    def rekey_ike(self, conn: str, now: float) -> int:
        """Rekey the IKE SAs of `conn` now (§2.18); how many were queued."""
        self._now = now
        self._conn(conn)
        sas = [s for s in self._sas.values() if s.name == conn and s.usable]
        for ike in sas:
            ike.queue([IkeRekey(ike, initiator=True)], now)
        self._sweep()
        return len(sas)

    def rekey(self, conn: str, child: str | None, ike: bool, now: float) -> int:
        """The operator's `rekey` (swanctl --rekey): the IKE SA with `ike`, else one child or all of them."""
        return self.rekey_ike(conn, now) if ike else self.rekey_child(conn, child, now)

    def reconfigure(self, conns: Sequence[IkeConnConfig], now: float) -> dict[str, list[str]]:
        """Adopt a new set of connections: removed ones are deleted, changed ones deleted and started again
        (start_action = start), added ones started; unchanged ones keep their SAs untouched."""
        self._now = now
        new = {c.name: c for c in conns}
        diff: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
        for name in sorted(self.conns.keys() | new.keys()):
            old_cfg, new_cfg = self.conns.get(name), new.get(name)
            kind = ("added" if old_cfg is None else "removed" if new_cfg is None
                    else "unchanged" if old_cfg == new_cfg else "changed")
            diff[kind].append(name)
            if kind in ("removed", "changed"):
                self.terminate(name, now)
        self.conns = new
        for name in diff["added"] + diff["changed"]:
            for c in new[name].children:
                if c.start_action == StartAction.START:
                    self.initiate(name, c.name, now)
        self._sweep()
        return diff

    def receive_datagram(self, data: bytes, local: tuple[IPAddress, int], remote: tuple[IPAddress, int],
                         now: float) -> None:
        self._now = now
        if self._answered_statelessly(data, local, remote, now):
            return
        try:
            msg = wire.decode(data)
        except wire.IkeError:
            self._count("malformed")
            return
        except Exception:  # a parser bug must not take the gateway down; count it loudly
            self._count("parser_bug")
            if self.strict:
                raise
            return
        try:
            ike = self._route(msg, local, remote, now)
            if ike is not None:
                ike.receive(msg, bytes(data), local, remote, now)
        except Exception:  # same: one peer's message must not stop the others
            self._count("internal_error")
            if self.strict:
                raise
        self._sweep()

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[IPAddress, int], tuple[IPAddress, int]]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        timers = [t for t in (ike.get_timer() for ike in self._sas.values()) if t is not None]
        timers += [child.expire_at for _conn, child in self._orphans]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        for ike in list(self._sas.values()):
            ike.now = now
            ike.handle_timer(now)
        for conn, child in [o for o in self._orphans if o[1].expire_at <= now]:
            self._orphans.remove((conn, child))
            self._count("orphan_expired")
            self._emit(ChildDown(conn, child.name, child.out.spi, child.inb.spi))
        self._sweep()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def ike_sas(self) -> list[dict]:
        return [ike.info() for ike in self._sas.values() if ike.state != State.DEAD]

    def holds_child(self, in_spi: int) -> bool:
        """Whether the child pair with this inbound SPI is still ours: no ChildDown for it was emitted yet (an
        orphan is still ours), even if the shell has not acted on the latest events."""
        return in_spi in self._child_spis

    # --- routing ------------------------------------------------------------------------------------------

    def _route(self, msg: wire.Message, local: Addr, remote: Addr, now: float) -> IkeSA | None:
        ispi, rspi = int.from_bytes(msg.ispi, "big"), int.from_bytes(msg.rspi, "big")
        if msg.exchange == ExchangeType.IKE_SA_INIT and rspi == 0 and not msg.is_response:
            return self._responder_for(msg, local, remote, now)
        ike = self._sas.get(rspi if msg.is_initiator else ispi)
        if ike is None or (ike.initiator == msg.is_initiator) or ike.state == State.DEAD:
            self._count("unknown_spi")
            return None
        peer_spi = ispi if msg.is_initiator else rspi
        if ike.initiator and ike.rspi == 0 and msg.exchange == ExchangeType.IKE_SA_INIT:
            return ike  # the IKE_SA_INIT response tells us the responder's SPI
        if peer_spi != (ike.ispi if msg.is_initiator else ike.rspi):
            self._count("unknown_spi")
            return None
        return ike

    def _responder_for(self, msg: wire.Message, local: Addr, remote: Addr, now: float) -> IkeSA | None:
        ispi = int.from_bytes(msg.ispi, "big")
        ike = self._half_open.get((ispi, remote))
        if ike is not None:
            return ike  # a retransmitted IKE_SA_INIT: the SA answers from its cache
        if msg.msg_id != 0:
            self._count("message_id_out_of_window")  # §2.2: IKE_SA_INIT is message 0; an SA for it would never end
            return None
        cfg = self._conn_for(local[0], remote[0])
        if cfg is None:
            self._count("no_matching_conn")
            return None
        if len(self._half_open) >= self._max_half_open:
            self._count("half_open_limit")
            return None
        if self._max_per_peer and sum(sa.remote[0] == remote[0] for sa in self._sas.values()) >= self._max_per_peer:
            self._count("per_peer_limit")  # one address cannot take the whole table (behind a NAT: raise it)
            return None
        ike = IkeSA(cfg, initiator=False, ispi=ispi, local=local, remote=remote, services=self._services, now=now)
        ike.rspi = self._new_ike_spi()
        self._sas[ike.rspi] = ike
        self._half_open[(ispi, remote)] = ike
        return ike

    def _answered_statelessly(self, data: bytes, local: Addr, remote: Addr, now: float) -> bool:
        """§2.6, under load: a new IKE SA's IKE_SA_INIT request gets state only if it echoes the cookie we made
        for its Ni, address and SPI; any other is answered with a fresh N(COOKIE) (or dropped if it has no Ni)
        and forgotten. Runs before the full decoding and holds nothing: a flood costs a header, a payload walk
        and a MAC each. True when the datagram was dealt with here."""
        if len(self._half_open) < self._cookie_threshold:
            return False
        try:
            h = wire.decode_header(data)
        except wire.IkeError:
            return False  # the usual path counts it
        if h.exchange != ExchangeType.IKE_SA_INIT or h.is_response or any(h.rspi) or h.msg_id != 0 \
                or (int.from_bytes(h.ispi, "big"), remote) in self._half_open \
                or self._conn_for(local[0], remote[0]) is None:
            return False  # not a new SA's first request, or one we would not answer anyway: the usual path
        found = scan(bytes(data), h.next_payload)
        if found is None or found[0] is None:
            self._count("malformed")  # nothing to bind a cookie to; with state it would get INVALID_SYNTAX
            return True
        ni, cookie = found
        verdict = self._cookies.check(cookie, ni, remote[0], h.ispi, now)
        if verdict != Verdict.MISSING:
            self._count(verdict.value)
        if verdict == Verdict.VALID:
            return False
        self._count("cookie_sent")
        self._out.append((challenge(h.ispi, h.msg_id, self._cookies.make(ni, remote[0], h.ispi, now)), local, remote))
        return True

    @property
    def half_open(self) -> int:
        """IKE SAs we answered whose initiator has not authenticated yet (the cookie threshold counts them)."""
        return len(self._half_open)

    def _conn_for(self, local: IPAddress, remote: IPAddress) -> IkeConnConfig | None:
        """The first connection whose addresses allow this pair (empty lists allow any address)."""
        for cfg in self.conns.values():
            if (not cfg.local_addrs or local in cfg.local_addrs) and (not cfg.remote_addrs
                                                                       or remote in cfg.remote_addrs):
                return cfg
        return None

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        for key, ike in list(self._half_open.items()):
            if ike.state not in _HALF_OPEN:
                del self._half_open[key]
        for spi, ike in list(self._sas.items()):
            if ike.state == State.DEAD:
                del self._sas[spi]

    def _emit(self, event: Event) -> None:
        if isinstance(event, ChildDown):
            self._child_spis.discard(event.in_spi)
        self._events.append(event)

    def _count(self, what: str) -> None:
        self.stats[what] += 1

    def _new_ike_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._rng(8), "big")
            if spi and spi not in self._sas:
                return spi

    def _new_child_spi(self) -> int:
        """A fresh inbound SPI: not reserved (RFC 4303 §2.1), not ours already, not in the data path."""
        while True:
            spi = int.from_bytes(self._rng(4), "big")
            if spi >= 0x100 and spi not in self._child_spis and not self._spi_in_use(spi):
                self._child_spis.add(spi)
                return spi

    def _reinitiate(self, conn: str, child: str | None) -> None:
        """DPD action restart (after the peer was declared dead)."""
        self.initiate(conn, child, self._now)

    def _conn(self, name: str) -> IkeConnConfig:
        try:
            return self.conns[name]
        except KeyError:
            raise ValueError(f"no connection named {name!r}") from None

    def _children(self, cfg: IkeConnConfig, child: str | None) -> list[ChildConfig]:
        if child is None:
            if not cfg.children:
                raise ValueError(f"{cfg.name}: no children to initiate")
            return list(cfg.children)
        found = [c for c in cfg.children if c.name == child]
        if not found:
            raise ValueError(f"{cfg.name}: no child named {child!r}")
        return found

    def _active(self, conn: str) -> IkeSA | None:
        """An IKE SA of `conn` that can carry more children: established (not replaced by a rekey), or ours and
        still connecting."""
        return next((s for s in self._sas.values() if s.name == conn and (
            s.usable or (s.initiator and s.state in _HALF_OPEN))), None)
