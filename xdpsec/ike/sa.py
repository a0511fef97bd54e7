"""One IKE SA: its state, message IDs, the window of one, retransmission, SK protection and the task queue.

Exchanges are tasks (xdpsec/ike/tasks/, after strongSwan's libcharon): as initiator of an exchange the SA
takes the next group of queued tasks, lets each `build()` into one request, and hands the response to each
task's `process()`; as responder it creates the tasks for the exchange type, lets each `process()` the request
and `build()` the response. Everything here is what the tasks share and must not each get wrong:

* Message IDs and the window of one (RFC 7296 §2.3): our requests go out one at a time, numbered from 0;
  a response is accepted only for the outstanding request. The peer's requests must arrive in order; the
  last response is cached and resent, unprocessed, when the same request comes again (§2.1).
* Retransmission (§2.1, §2.4): `retransmit_timeout` × 1.8ⁿ; after `retransmit_tries` resends and one more
  timeout the peer is declared dead and the SA deleted.
* SK payload protection (§3.14) for every exchange after IKE_SA_INIT; a message failing integrity is dropped
  and counted, never answered.
* The state machine, as data (`ACCEPTS`): which requests a responder takes in which state.
* NAT traversal's address tracking (§2.23): once a NAT is detected, follow the peer's address and port
  from the latest authenticated message.
* Lifetimes (lifetime.py): each child and the IKE SA itself carry a rekey and an expiry deadline; the timer
  queues a rekey task (tasks/child_rekey.py, tasks/ike_rekey.py) or a delete when one falls due. A rekey
  whose request is never answered ends the IKE SA (§2.4) but not its child SAs, which the manager keeps in
  the data path until their hard lifetime: a peer whose IKE daemon is gone may still carry their traffic.

Nothing here does I/O or reads the clock: the manager passes `now` in and collects datagrams and events.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from xdpsec.crypto.ikecipher import IkeCipher, IntegrityError
from xdpsec.ike import fragment, wire
from xdpsec.ike.conf import DpdAction, Fragmentation, IkeConnConfig, IkeProposal
from xdpsec.ike.consts import ExchangeType, HeaderFlag, NotifyType, PayloadType
from xdpsec.ike.events import ChildDown, ChildUp, Event, Failure, IkeDown
from xdpsec.ike.keys import IkeKeys
from xdpsec.ike.lifetime import USAGE_INTERVAL, Verdict, deadlines, uniform, usage_verdict
from xdpsec.ike.tasks import Inbound, Status, Task, notify, notify_name, responder_tasks
from xdpsec.sa import IPAddress, SAParams, UdpEncap

Addr = tuple[IPAddress, int]

#: strongSwan's factor: the n-th retransmission waits retransmit_timeout * 1.8**n.
BACKOFF = 1.8
#: RFC 3948 §2.3: a one-octet 0xFF UDP payload, sent when nothing else went out for this long (its suggested 20 s).
NAT_KEEPALIVE = b"\xff"
NAT_KEEPALIVE_INTERVAL = 20.0
#: A responder's IKE SA that never completes IKE_AUTH is forgotten after this (strongSwan's half_open_timeout).
HALF_OPEN_TIMEOUT = 30.0
NATT_PORT = 4500  # RFC 3948 §2.1
#: An IKE SA replaced by a rekey that the peer (the rekey's initiator) never deletes is forgotten after this.
REKEYED_GRACE = 60.0
#: RFC 7296 §2.25: after TEMPORARY_FAILURE or a failed rekey, wait this long before trying again.
REKEY_RETRY = 10.0


class State(enum.Enum):
    CREATED = "created"          # nothing exchanged yet
    CONNECTING = "connecting"    # IKE_SA_INIT done: keys exist, nobody is authenticated (half-open)
    ESTABLISHED = "established"  # IKE_AUTH done
    DELETING = "deleting"        # our Delete of the IKE SA is on its way
    DEAD = "dead"                # the manager forgets it


#: Requests a responder accepts per state (RFC 7296 §1.2-§1.4; §2.2: IKE_SA_INIT then IKE_AUTH, then the rest).
ACCEPTS: dict[State, frozenset[ExchangeType]] = {
    State.CREATED: frozenset({ExchangeType.IKE_SA_INIT}),
    State.CONNECTING: frozenset({ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH}),  # RFC 9242 §3
    State.ESTABLISHED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE,  # RFC 9370 §2.2.4
                                  ExchangeType.INFORMATIONAL}),
    State.DELETING: frozenset({ExchangeType.INFORMATIONAL}),
    State.DEAD: frozenset(),
}


@dataclass
class Services:
    """What an IKE SA needs from its manager."""

    rng: Callable[[int], bytes]
    new_child_spi: Callable[[], int]
    emit: Callable[[Event], None]
    send: Callable[[bytes, Addr, Addr], None]
    count: Callable[[str], None]
    reinitiate: Callable[[str, str | None], None]
    initial_contact: Callable[[IkeSA], None] = lambda ike: None  # the peer said this is its only IKE SA
    new_ike_spi: Callable[[], int] = lambda: 0
    adopt: Callable[[IkeSA], None] = lambda ike: None             # a new IKE SA from a rekey: route to it
    orphan: Callable[[IkeSA, list[Child]], None] = lambda ike, children: None  # keep until their hard lifetime
    usage: Callable[[int], tuple[int, int] | None] = lambda spi: None          # (bytes, packets) by inbound SPI
    established: Callable[[IkeSA], None] = lambda ike: None       # IKE_AUTH done (statistics)
    #: A new child's narrowed (local, remote) selectors overlap a child of another peer (manager.py says why).
    ts_in_use: Callable[[IkeSA, str, tuple, tuple], bool] = lambda ike, child, local, remote: False


class ChildState(enum.Enum):
    INSTALLED = "installed"  # carrying traffic
    REKEYING = "rekeying"    # our CREATE_CHILD_SA with REKEY_SA for it is outstanding
    REKEYED = "rekeyed"      # replaced by a newer pair: its Delete is on the way (ours or the peer's)
    DELETING = "deleting"    # our Delete for it is queued or outstanding


@dataclass(eq=False)
class Child:
    """A child SA pair as negotiated; `out`/`inb` are what ChildUp carried. Compared by identity: rekey tasks
    hold on to the pair they replace."""

    name: str
    out: SAParams
    inb: SAParams
    state: ChildState = ChildState.INSTALLED
    rekey_at: float | None = None
    expire_at: float | None = None

    @property
    def alive(self) -> bool:
        """Still ours to rekey or expire (not already replaced or being deleted)."""
        return self.state in (ChildState.INSTALLED, ChildState.REKEYING)


@dataclass
class _Outstanding:
    msg_id: int
    exchange: ExchangeType
    tasks: list[Task]
    datagrams: tuple[bytes, ...]  # the request, or its RFC 7383 fragments: all resent on each retransmission
    sent_at: float
    tries: int = 0


@dataclass
class _CachedResponse:
    msg_id: int
    request_digest: bytes
    datagrams: tuple[bytes, ...]


@dataclass
class Crypto:
    """The IKE SA's keys once IKE_SA_INIT is done. Never logged: no repr."""

    proposal: IkeProposal
    keys: IkeKeys = field(repr=False)
    outbound: IkeCipher = field(repr=False)
    inbound: IkeCipher = field(repr=False)

    @classmethod
    def create(cls, p: IkeProposal, keys: IkeKeys, initiator: bool) -> Crypto:
        """SK_ei/SK_ai protect what the SA's original initiator sends (§2.14)."""
        i_to_r = IkeCipher(p.encr, p.encr_key_bits, p.integ, keys.sk_ei, keys.sk_ai)
        r_to_i = IkeCipher(p.encr, p.encr_key_bits, p.integ, keys.sk_er, keys.sk_ar)
        return cls(p, keys, *((i_to_r, r_to_i) if initiator else (r_to_i, i_to_r)))


class IkeSA:
    def __init__(self, conn: IkeConnConfig, *, initiator: bool, ispi: int, local: Addr, remote: Addr,
                 services: Services, now: float):
        self.conn = conn
        self.initiator = initiator
        self.ispi = ispi
        self.rspi = 0
        self.local = local
        self.remote = remote
        self.services = services
        self.state = State.CREATED
        self.created = now
        self.now = now  # the latest time the manager passed in; certificate checks need it (UNIX time)
        self.last_heard = now
        self.last_sent = now
        self.crypto: Crypto | None = None
        # Keys that take over once the response being built has gone out: a responder's IKE_INTERMEDIATE
        # response is still protected with the keys before its additional key exchange (RFC 9370 §2.2.2).
        self.next_crypto: Crypto | None = None
        self.intermediate = None  # tasks/ike_intermediate.Progress when IKE_SA_INIT chose additional KEs
        # RFC 9370 §2.2.4 (tasks/followup_ke.py): what multi-KE CREATE_CHILD_SA sequences are about, in either
        # role, and the responder's sequences by the link it gave out.
        self.multi_ke: set = set()
        self.followups: dict = {}
        # IKE_SA_INIT material that IKE_AUTH signs (§2.15) and child keys derive from (§2.17).
        self.ni = b""
        self.nr = b""
        self.init_request = b""
        self.init_response = b""
        # NAT traversal (§2.23): is our side / the peer's side translated? Either one makes us float to 4500.
        self.nat_local = False
        self.nat_remote = False
        self.peer_hash_algorithms: tuple[int, ...] = ()
        self.peer_id: tuple[int, bytes] | None = None  # the authenticated peer identity (ID type, data)
        self.peer_certreq = False
        self.peer_fragmentation = False  # RFC 7383 §2.3: the peer announced IKE fragmentation in IKE_SA_INIT
        self._reassembly = {False: fragment.Reassembly(), True: fragment.Reassembly()}  # requests, responses
        self.children: list[Child] = []
        self.announced = False  # IkeUp was emitted, so IkeDown must follow
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.rekeyed_at: float | None = None  # replaced by a new IKE SA at this time; only its Delete remains
        #: The old SA of a rekey collision we won, whose Delete waits for this redundant SA to end (§2.8.2,
        #: tasks/ike_rekey.py): set on the redundant SA, acted on in `die`.
        self.releases: IkeSA | None = None
        self.usage_at: float | None = None    # next comparison of the children's byte/packet counts
        self._next_request_id = 0
        self._next_peer_id = 0
        self._outstanding: _Outstanding | None = None
        self._cached: _CachedResponse | None = None
        self._queue: deque[list[Task]] = deque()

    def _transmit(self, data: bytes, local: Addr, remote: Addr) -> None:
        self.last_sent = self.now
        self.services.send(data, local, remote)

    def _transmit_all(self, datagrams: tuple[bytes, ...]) -> None:
        for data in datagrams:
            self._transmit(data, self.local, self.remote)

    # --- identity -----------------------------------------------------------------------------------------

    @property
    def my_spi(self) -> int:
        return self.ispi if self.initiator else self.rspi

    @property
    def nat(self) -> bool:
        return self.nat_local or self.nat_remote

    @property
    def name(self) -> str:
        return self.conn.name

    @property
    def rekeyed(self) -> bool:
        return self.rekeyed_at is not None

    @property
    def usable(self) -> bool:
        """Established and not replaced: new exchanges for this connection may run on it."""
        return self.state == State.ESTABLISHED and not self.rekeyed

    def outstanding_tasks(self) -> list[Task]:
        return list(self._outstanding.tasks) if self._outstanding is not None else []

    def queued_tasks(self) -> list[Task]:
        return [t for group in self._queue for t in group]

    def start_lifetime(self, now: float) -> None:
        """The IKE SA is established (by IKE_AUTH or a rekey): schedule its own rekey and end."""
        self.rekey_at, self.expire_at = deadlines(self.conn.lifetime, now, self.services.rng)
        self.usage_at = now + USAGE_INTERVAL if self.services.usage is not None else None

    def add_child(self, child: Child, now: float) -> None:
        """A new pair: keep it and schedule its rekey and end by its configuration's lifetime."""
        cfg = self.child_config(child.name)
        if cfg is not None:
            child.rekey_at, child.expire_at = deadlines(cfg.lifetime, now, self.services.rng)
        self.children.append(child)

    def retry_at(self) -> float:
        """When to try a failed or refused rekey again: REKEY_RETRY, jittered by up to half of it so that two
        peers refusing each other's rekeys (§2.25.2) do not meet again."""
        return self.now + REKEY_RETRY * (1 + uniform(self.services.rng) / 2)

    def child_config(self, name: str):
        return next((c for c in self.conn.children if c.name == name), None)

    def reset_message_ids(self) -> None:
        """§2.2: an IKE_SA_INIT retry (INVALID_KE_PAYLOAD, COOKIE) is sent with Message ID zero again."""
        self._next_request_id = 0

    # --- what callers drive -------------------------------------------------------------------------------

    def queue(self, tasks: list[Task], now: float) -> None:
        """Queue one exchange (its tasks build one request together) and start it if the window is free."""
        self._queue.append(tasks)
        self._kick(now)

    def queue_first(self, tasks: list[Task]) -> None:
        """Queue one exchange ahead of all others (IKE_FOLLOWUP_KE continuing a CREATE_CHILD_SA); it starts
        when the window is free, which a task calling this from `process()` is about to make it."""
        self._queue.appendleft(tasks)

    def delete(self, reason: str, now: float) -> None:
        """Tear down with an INFORMATIONAL Delete (§1.4.1), or silently if nobody was authenticated.

        The Delete waits for an outstanding request (window of one, §2.3); nothing else queued goes out."""
        from xdpsec.ike.tasks.informational import DeleteIke

        if self.state == State.ESTABLISHED:
            self.state = State.DELETING
            self._queue.clear()
            self.queue([DeleteIke(self, initiator=True, reason=reason)], now)
        elif self.state != State.DELETING:
            self.die(reason)

    def float_to_natt(self) -> None:
        """§2.23: with a NAT in the path, the initiator moves to port 4500 on both ends from IKE_AUTH on."""
        self.local = (self.local[0], NATT_PORT)
        self.remote = (self.remote[0], NATT_PORT)

    def die(self, reason: str, *, orphan: bool = False) -> None:
        """Forget the SA: its children go down first, so the data path removes them before the IKE SA.
        With `orphan` they are handed to the manager instead, to live until their hard lifetime."""
        if self.state == State.DEAD:
            return
        if orphan and self.children:
            self.services.orphan(self, list(self.children))
        else:
            for child in self.children:
                self.services.emit(ChildDown(self.name, child.name, child.out.spi, child.inb.spi))
        self.children.clear()
        if self.announced:
            self.services.emit(IkeDown(self.name, reason))
        self.state = State.DEAD
        self._outstanding = None
        self._queue.clear()
        old, self.releases = self.releases, None
        if old is not None:
            old.delete("rekeyed", self.now)

    # --- sending ------------------------------------------------------------------------------------------

    def _kick(self, now: float) -> None:
        if self._outstanding is not None or self.state == State.DEAD:
            return
        tasks: list[Task] = []
        while self._queue and not tasks:
            # A queued rekey or delete may have been overtaken by the peer's (§2.25): drop it unsent.
            tasks = [t for t in self._queue.popleft() if not t.obsolete()]
        if not tasks:
            return
        exchange = tasks[0].exchange
        payloads: list[wire.Payload] = []
        for task in tasks:
            task.build(payloads)
        if self.state == State.DEAD:
            return  # a task gave up while building (e.g. no signature scheme in common)
        msg_id = self._next_request_id
        datagrams = self.datagrams(exchange, msg_id, response=False, payloads=payloads)
        if exchange == ExchangeType.IKE_SA_INIT:
            self.init_request = datagrams[0]
        self._outstanding = _Outstanding(msg_id, exchange, tasks, datagrams, now)
        self._transmit_all(datagrams)

    def encode(self, exchange: ExchangeType, msg_id: int, *, response: bool,
               payloads: list[wire.Payload]) -> bytes:
        flags = (HeaderFlag.INITIATOR if self.initiator else 0) | (HeaderFlag.RESPONSE if response else 0)
        header = wire.Message(self.ispi.to_bytes(8, "big"), self.rspi.to_bytes(8, "big"), exchange, flags,
                              msg_id, tuple(payloads))
        if self.crypto is None or exchange == ExchangeType.IKE_SA_INIT:
            return wire.encode(header)
        cipher = self.crypto.outbound
        return wire.encode_encrypted(header, payloads, cipher.seal, cipher.sealed_len)

    @property
    def sends_fragments(self) -> bool:
        """RFC 7383 §2.3: both sides announced fragmentation, and ours is not `accept` (announce only)."""
        return self.peer_fragmentation and self.conn.fragmentation in (Fragmentation.YES, Fragmentation.FORCE)

    def datagrams(self, exchange: ExchangeType, msg_id: int, *, response: bool,
                  payloads: list[wire.Payload]) -> tuple[bytes, ...]:
        """The message as it goes out: `encode`d whole, or as RFC 7383 fragments when it is protected (only SK
        content is fragmented, so never IKE_SA_INIT), fragmentation was negotiated, and it does not fit the
        configured fragment size."""
        if self.sends_fragments and self.crypto is not None and exchange != ExchangeType.IKE_SA_INIT:
            flags = (HeaderFlag.INITIATOR if self.initiator else 0) | (HeaderFlag.RESPONSE if response else 0)
            header = wire.Message(self.ispi.to_bytes(8, "big"), self.rspi.to_bytes(8, "big"), exchange, flags,
                                  msg_id)
            natt = NATT_PORT in (self.local[1], self.remote[1])
            budget = fragment.message_budget(self.conn.fragment_size, self.remote[0], natt)
            pieces = fragment.split(header, payloads, self.crypto.outbound, budget)
            if pieces is not None:
                self.services.count("fragmented")
                return tuple(pieces)
        return (self.encode(exchange, msg_id, response=response, payloads=payloads),)

    # --- receiving ----------------------------------------------------------------------------------------

    def receive(self, msg: wire.Message, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        """A datagram whose header names this SA. Never raises for anything the network can send."""
        self.now = now
        if msg.is_response:
            self._receive_response(msg, data, local, remote, now)
        else:
            self._receive_request(msg, data, local, remote, now)

    def _open(self, msg: wire.Message, data: bytes) -> Inbound | None:
        """The payloads of `msg`, decrypted and authenticated when the SA has keys; None means drop."""
        if self.crypto is None:
            if msg.exchange != ExchangeType.IKE_SA_INIT:
                self.services.count("unexpected_exchange")
                return None
            return Inbound(msg, msg.payloads)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.services.count("unexpected_exchange")
            return None
        if fragment.is_fragment(msg):
            return self._open_fragment(msg, data, self.crypto.inbound)
        try:
            _header, aad, first, body = wire.split_encrypted(data)
            plain = self.crypto.inbound.open(aad, body)
            return Inbound(msg, tuple(wire.decode_payloads(first, plain)), aad, plain)
        except IntegrityError:
            self.services.count("integrity_failed")  # §2.21.1: never answer what does not authenticate
        except wire.IkeError:
            self.services.count("malformed_inner")
        return None

    def _open_fragment(self, msg: wire.Message, data: bytes, cipher: IkeCipher) -> Inbound | None:
        """RFC 7383 §2.6: a fragment is kept once it authenticates; the last one missing completes the message.
        Accepted whatever our `fragmentation` says (as strongSwan does), but only once IKE_SA_INIT is done (the
        caller's checks): before that there are no keys to check it with. `Inbound.aad` stays empty: the
        unfragmented message's header never crossed the wire (RFC 9242 §3.3.2 says how IntAuth rebuilds it)."""
        try:
            whole = self._reassembly[msg.is_response].receive(msg, data, cipher, self.now)
        except fragment.Discarded as e:
            self.services.count(e.reason)
            return None
        if whole is None:
            return None
        try:
            return Inbound(msg, wire.decode_payloads(*whole), plain=whole[1])
        except wire.IkeError:
            self.services.count("malformed_inner")
            return None

    def _follow_peer(self, local: Addr, remote: Addr) -> None:
        """§2.23: behind a NAT the peer's address and port are whatever its latest authenticated message came
        from; our own local port changes when the peer floats to 4500. Established child SAs follow too: their
        ESP-in-UDP must go where the NAT now maps the peer, or the tunnel dies while IKE lives. They are
        reported again (ChildUp, same SPIs and keys) with the new addresses and ports."""
        if not self.nat or (local, remote) == (self.local, self.remote):
            return
        moved = self.state == State.ESTABLISHED and self.remote is not None
        self.local, self.remote = local, remote
        if not moved:
            return
        self.services.count("peer_moved")
        for child in self.children:
            encap = UdpEncap(local[1], remote[1]) if child.out.encap is not None else None
            child.out = replace(child.out, local=local[0], remote=remote[0], encap=encap)
            child.inb = replace(child.inb, local=local[0], remote=remote[0], encap=encap)
            self.services.emit(ChildUp(self.name, child.name, child.out, child.inb))

    def _receive_request(self, msg: wire.Message, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        digest = hashlib.sha256(data).digest()
        cached = self._cached
        if cached is not None and msg.msg_id == cached.msg_id:
            # §2.1: a retransmitted request gets the same response again, without being processed again.
            if fragment.is_fragment(msg):
                self._fragment_retransmitted(msg, data, cached)
            elif cached.request_digest == digest:
                self.services.count("response_resent")
                self._transmit_all(cached.datagrams)
            else:
                self.services.count("message_id_reused")
            return
        if msg.msg_id != self._next_peer_id:
            self.services.count("message_id_out_of_window")  # §2.3: outside a window of one
            return
        if msg.exchange not in ACCEPTS[self.state]:
            self.services.count("unexpected_exchange")
            return
        inbound = self._open(msg, data)
        if inbound is None:
            return
        self.last_heard = now
        self._follow_peer(local, remote)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.init_request = data
        response, fatal = self._respond(responder_tasks(self, msg.exchange, inbound), inbound)
        if fatal is not None and self.crypto is None:
            # IKE_SA_INIT refused: answer in the clear without a responder SPI (§2.6) and keep no state.
            self.rspi = 0
            self._transmit(self.encode(msg.exchange, msg.msg_id, response=True, payloads=response),
                               self.local, self.remote)
            self.die(fatal)
            return
        out = self.datagrams(msg.exchange, msg.msg_id, response=True, payloads=response)
        if self.next_crypto is not None:
            self.crypto, self.next_crypto = self.next_crypto, None
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.init_response = out[0]
        self._next_peer_id = msg.msg_id + 1
        self._cached = _CachedResponse(msg.msg_id, digest, out)
        self._transmit_all(out)
        if fatal is not None:
            self.services.emit(Failure(self.name, fatal))
            self.die(fatal)

    def _fragment_retransmitted(self, msg: wire.Message, data: bytes, cached: _CachedResponse) -> None:
        """A fragment of the request we answered last: RFC 7383 §2.6.1's rule, in fragment.asks_for_response."""
        if self.crypto is None:
            return
        try:
            if fragment.asks_for_response(msg, data, self.crypto.inbound):
                self.services.count("response_resent")
                self._transmit_all(cached.datagrams)
        except fragment.Discarded as e:
            self.services.count(e.reason)

    def _respond(self, tasks: list[Task], inbound: Inbound) -> tuple[list[wire.Payload], str | None]:
        """Process the request with every task and build the response. An IkeError becomes a notify-only
        answer (§2.21); before IKE_AUTH has completed it also ends the SA (§2.21.2): the second value says why."""
        try:
            for task in tasks:
                task.process(inbound)
        except wire.IkeError as e:
            self.services.count(f"error_sent_{notify_name(e.notify)}")
            fatal = None if self.state == State.ESTABLISHED else f"{notify_name(e.notify)}: {e.message}"
            return [notify(e.notify, e.data)], fatal
        response: list[wire.Payload] = []
        for task in tasks:
            task.build(response)
        return response, None

    def _receive_response(self, msg: wire.Message, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        out = self._outstanding
        if out is None or msg.msg_id != out.msg_id or msg.exchange != out.exchange:
            self.services.count("unexpected_response")  # §2.3: only the outstanding request gets an answer
            return
        if out.exchange == ExchangeType.IKE_SA_INIT and self.rspi == 0:
            self.rspi = int.from_bytes(msg.rspi, "big")  # §2.6: the responder chose its SPI in this response (zero on errors)
        inbound = self._open(msg, data)
        if inbound is None:
            return
        if out.exchange == ExchangeType.IKE_SA_INIT and _stale_cookie(out.tasks, inbound):
            # §2.6: a late answer to a request sent before we had the cookie, asking for the cookie we already
            # echo. The retry carrying it is outstanding; its answer is the one to wait for.
            self.services.count("stale_cookie")
            return
        if out.exchange == ExchangeType.IKE_SA_INIT:
            self.init_response = data  # signed by the responder in IKE_AUTH (§2.15)
        self.last_heard = now
        self._follow_peer(local, remote)
        self._outstanding = None
        self._next_request_id = out.msg_id + 1
        retry = False
        for task in out.tasks:
            status = task.process(inbound)
            if status == Status.RETRY:
                retry = True
            elif status == Status.FAILED:
                break
        if retry and self.state != State.DEAD:
            self._queue.appendleft(out.tasks)
        self._kick(now)

    # --- time ---------------------------------------------------------------------------------------------

    def retransmit_delay(self, tries: int) -> float:
        return self.conn.retransmit_timeout * BACKOFF ** tries

    def _keepalive_at(self) -> float | None:
        """RFC 3948 §2.3: behind a NAT, keep its mapping for our 4500 flow (which ESP-in-UDP shares) alive."""
        if self.state == State.ESTABLISHED and self.nat_local:
            return self.last_sent + NAT_KEEPALIVE_INTERVAL
        return None

    def get_timer(self) -> float | None:
        timers = [t for t in (self._main_timer(), self._keepalive_at(), self._lifetime_at(), self._followup_at())
                  if t is not None]
        return min(timers, default=None)

    def _followup_at(self) -> float | None:
        from xdpsec.ike.tasks import followup_ke

        return followup_ke.deadline(self)

    def _lifetime_at(self) -> float | None:
        """The next rekey, expiry or usage check of this SA or its children."""
        if self.state != State.ESTABLISHED:
            return None
        if self.rekeyed:
            return self.rekeyed_at + REKEYED_GRACE
        times = [self.rekey_at, self.expire_at]
        for c in self.children:
            if c.alive:
                times += [c.expire_at, c.rekey_at if c.state == ChildState.INSTALLED else None]
        if self.children:
            times.append(self.usage_at)
        return min((t for t in times if t is not None), default=None)

    def _lifetimes(self, now: float) -> None:
        """Act on every rekey, expiry and usage limit that has fallen due."""
        from xdpsec.ike.tasks.child_rekey import ChildRekey
        from xdpsec.ike.tasks.ike_rekey import IkeRekey
        from xdpsec.ike.tasks.informational import DeleteChild

        if self.rekeyed:
            if now >= self.rekeyed_at + REKEYED_GRACE:
                self.services.count("rekeyed_ike_expired")
                self.die("rekeyed, never deleted by the peer")
            return
        if self.expire_at is not None and now >= self.expire_at:
            self.services.count("ike_expired")
            self.delete("IKE SA lifetime expired", now)
            return
        if self.usage_at is not None and now >= self.usage_at:
            self.usage_at = now + USAGE_INTERVAL
            self._check_usage(now)
        pending = self.outstanding_tasks() + self.queued_tasks()
        for c in list(self.children):
            if c.alive and c.expire_at is not None and now >= c.expire_at:
                self.services.count("child_expired")
                c.state = ChildState.DELETING
                self.queue([DeleteChild(self, initiator=True, in_spi=c.inb.spi, protocol=c.inb.protocol)], now)
            elif c.state == ChildState.INSTALLED and c.rekey_at is not None and now >= c.rekey_at:
                # Look again later in case this attempt is dropped unsent (§2.25) or never completes.
                c.rekey_at = self.retry_at()
                if not any(isinstance(t, ChildRekey) and t.old is c for t in pending):
                    self.queue([ChildRekey(self, initiator=True, old=c)], now)
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = self.retry_at()
            if not any(isinstance(t, IkeRekey) for t in pending):
                self.queue([IkeRekey(self, initiator=True)], now)

    def _check_usage(self, now: float) -> None:
        """Byte and packet limits (and the sequence number space without ESN): due now or never."""
        for c in self.children:
            if not c.alive:
                continue
            counts = self.services.usage(c.inb.spi)
            cfg = self.child_config(c.name)
            if counts is None or cfg is None:
                continue
            verdict = usage_verdict(cfg.lifetime, c.inb.transform.esn, *counts)
            if verdict == Verdict.EXPIRE:
                c.expire_at = now
            elif verdict == Verdict.REKEY and c.state == ChildState.INSTALLED:
                c.rekey_at = now

    def _main_timer(self) -> float | None:
        if self.state == State.DEAD:
            return None
        if self._outstanding is not None:
            out = self._outstanding
            return out.sent_at + self.retransmit_delay(out.tries)
        if self.state == State.CONNECTING and not self.initiator:
            return self.created + HALF_OPEN_TIMEOUT
        if self.state == State.ESTABLISHED and not self.rekeyed and self.conn.dpd_delay > 0:
            return self.last_heard + self.conn.dpd_delay
        return None

    def handle_timer(self, now: float) -> None:
        keepalive = self._keepalive_at()
        if keepalive is not None and now >= keepalive:
            self.services.count("nat_keepalive_sent")
            self.now = now
            self._transmit(NAT_KEEPALIVE, self.local, self.remote)
        followup = self._followup_at()
        if followup is not None and now >= followup:
            from xdpsec.ike.tasks import followup_ke
            followup_ke.expire(self, now)
        lifetime = self._lifetime_at()
        if lifetime is not None and now >= lifetime:
            self._lifetimes(now)
        deadline = self._main_timer()
        if deadline is None or now < deadline:
            return
        out = self._outstanding
        if out is not None:
            if out.tries >= self.conn.retransmit_tries:
                self._peer_gone(out)
                return
            out.tries += 1
            out.sent_at = now
            self.services.count("retransmit")
            self._transmit_all(out.datagrams)
        elif self.state == State.CONNECTING:
            self.services.count("half_open_expired")
            self.die("half-open timeout")
        elif self.state == State.ESTABLISHED:
            from xdpsec.ike.tasks.informational import Liveness
            self.last_heard = now  # one check at a time; its retransmissions decide (§2.4)
            self.queue([Liveness(self, initiator=True)], now)

    def _peer_gone(self, out: _Outstanding) -> None:
        """§2.4: no answer after the whole retransmission schedule: the peer is dead, delete without telling it."""
        tries = self.conn.retransmit_tries
        rekey = any(t.is_rekey for t in out.tasks)
        what = "rekey " if rekey else ""
        self.services.emit(Failure(self.name, f"no response to {what}{out.exchange.name} after {tries} retransmissions"))
        if rekey:
            self.services.count("rekey_failed")
        restart_action = {c.name for c in self.conn.children if c.dpd_action == DpdAction.RESTART}
        restart = [c.name for c in self.children if c.name in restart_action]
        was_up = self.announced
        # An unanswered rekey: the old child SAs keep carrying traffic until their hard lifetime (issue 4).
        self.die("peer not responding", orphan=rekey)
        if was_up:
            for child in restart:
                self.services.reinitiate(self.name, child)

    # --- introspection ------------------------------------------------------------------------------------

    def info(self) -> dict:
        """For `xdpsec sas`: nothing secret."""
        p = self.crypto.proposal if self.crypto else None
        return {
            "conn": self.name, "state": self.state.value, "initiator": self.initiator, "rekeyed": self.rekeyed,
            "ispi": f"{self.ispi:016x}", "rspi": f"{self.rspi:016x}",
            "local": f"{self.local[0]}[{self.local[1]}]", "remote": f"{self.remote[0]}[{self.remote[1]}]",
            "nat": {"local": self.nat_local, "remote": self.nat_remote},
            "algorithms": None if p is None else {"encr": int(p.encr), "encr_key_bits": p.encr_key_bits,
                                                  "integ": None if p.integ is None else int(p.integ),
                                                  "prf": int(p.prf), "ke": int(p.ke),
                                                  "addke": [int(m) for m in p.addke]},
            "children": [{"name": c.name, "in_spi": f"{c.inb.spi:08x}", "out_spi": f"{c.out.spi:08x}",
                          "mode": c.inb.mode.value, "local_ts": [str(t) for t in c.inb.local_ts],
                          "remote_ts": [str(t) for t in c.inb.remote_ts],
                          "encap": c.inb.encap is not None, "state": c.state.value} for c in self.children],
        }


def _stale_cookie(tasks, inbound: Inbound) -> bool:
    """An IKE_SA_INIT response that only asks for the cookie our outstanding request already carries."""
    cookie = inbound.notify(NotifyType.COOKIE)
    return (cookie is not None and inbound.first(PayloadType.SA) is None
            and any(cookie.data == getattr(task, "cookie", None) for task in tasks))
