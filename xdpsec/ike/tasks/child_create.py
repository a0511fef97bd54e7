"""Child SAs: the one inside IKE_AUTH and additional ones with CREATE_CHILD_SA (RFC 7296 §1.2, §1.3.1, §2.17).

    IKE_AUTH         HDR, SK {..., [N(USE_TRANSPORT_MODE)], SAi2, TSi, TSr}  -->
                                      <--  HDR, SK {..., [N(USE_TRANSPORT_MODE)], SAr2, TSi, TSr}
    CREATE_CHILD_SA  HDR, SK {SA, Ni, [KEi], TSi, TSr}  -->
                                      <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}

The responder picks the first of its child configurations whose selectors intersect the proposed ones
(§2.9, see ts.py), then a proposal; failing either it answers TS_UNACCEPTABLE or NO_PROPOSAL_CHOSEN, which in
IKE_AUTH leaves the IKE SA standing (§2.21.2). It also answers TS_UNACCEPTABLE when the shell says the
narrowed selectors are in use by another peer's child (Services.ts_in_use; not asked for a rekey). KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr) (§2.17); the first keys
protect traffic from the exchange's initiator to its responder. Each side then holds an outbound SA keyed
with the peer's SPI and an inbound SA with the SPI it chose, and reports both in one ChildUp.

With PFS a proposal may add RFC 9370 additional key exchanges (ADDKE transforms): the response carries
N(ADDITIONAL_KEY_EXCHANGE) and the pair is derived and reported only after the IKE_FOLLOWUP_KE exchanges
(tasks/followup_ke.py), KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (§2.2.4). While the IKE SA
is rekeyed with additional key exchanges, a new child is refused with TEMPORARY_FAILURE.
"""

from __future__ import annotations

from xdpsec.crypto.dh import KeyExchangeError, new_key_exchange
from xdpsec.ike import ts, wire
from xdpsec.ike.conf import ChildConfig, ChildProposal
from xdpsec.ike.consts import ExchangeType, NotifyType, PayloadType
from xdpsec.ike.events import ChildUp, Failure
from xdpsec.ike.keys import child_keymat
from xdpsec.ike.tasks import Inbound, Status, Task, followup_ke, notify, notify_name, payload
from xdpsec.ike.tasks.followup_ke import IKE_SA, offers_addke
from xdpsec.ike.tasks.ike_init import NONCE_LEN, NONCE_MAX, NONCE_MIN
from xdpsec.ike.tasks.proposal import (
    accept,
    additional_methods,
    answer,
    child_offer,
    child_suite,
    select,
    without_ke,
)
from xdpsec.sa import Direction, Mode, Protocol, SAParams, UdpEncap

_MIN_SPI = 0x100  # RFC 4303 §2.1: 1..255 reserved


class _Reject(Exception):
    """A child-level refusal: answered with its notify, the IKE SA untouched."""

    def __init__(self, notify_type: int, data: bytes = b"", protocol: int = 0, spi: bytes = b""):
        super().__init__(notify_name(notify_type))
        self.notify = notify_type
        self.data = data
        self.protocol = protocol  # §2.25: CHILD_SA_NOT_FOUND names the SA of the REKEY_SA notify
        self.spi = spi


class ChildCreate(Task):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, ike, *, initiator: bool, child: ChildConfig | None = None, in_ike_auth: bool = False):
        super().__init__(ike, initiator=initiator)
        self.config = child
        self.in_ike_auth = in_ike_auth
        self.pfs_possible = not in_ike_auth  # IKE_AUTH has no KE of its own (§1.2)
        self.spi = 0          # our inbound SPI
        self.nonce = b""      # our nonce in CREATE_CHILD_SA
        self.kex = None
        self.group = child.proposals[0].ke if child and child.proposals and not in_ike_auth else None
        self.error: _Reject | None = None
        self.answer: wire.SA | None = None
        self.mode = Mode.TUNNEL
        self.narrowed: tuple[list[ts.TsRange], list[ts.TsRange]] = ([], [])
        self.skip = False
        self.peer_nonce = b""  # the other side's nonce of this exchange (rekey collisions compare them, §2.8.1)
        self.link = b""        # responder: N(ADDITIONAL_KEY_EXCHANGE) data when IKE_FOLLOWUP_KE follows

    @property
    def target(self):
        """What a multi-KE sequence of this exchange is about (followup_ke.py): a new child is its own."""
        return self

    def _suite(self, p: ChildProposal):
        return child_suite(p, self.pfs_possible)

    def _usable(self, c: ChildConfig) -> list[ChildProposal]:
        # RFC 3948 encapsulates ESP only: behind a NAT an AH proposal cannot work.
        return [p for p in c.proposals if not (self.ike.nat and p.protocol == Protocol.AH)]

    # --- build ----------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        if self.initiator:
            self._build_request(out)
        elif not self.skip:
            self._build_response(out)

    def _build_request(self, out: list[wire.Payload]) -> None:
        ike, c = self.ike, self.config
        self.spi = self.spi or ike.services.new_child_spi()
        if c.mode == Mode.TRANSPORT:
            out.append(notify(NotifyType.USE_TRANSPORT_MODE))
        offer = child_offer(self._usable(c), self.spi, self.pfs_possible)
        out.append(payload(PayloadType.SA, offer))
        if offers_addke(offer):
            followup_ke.begin(ike, self.target)  # refuse colliding rekeys until the sequence ends
        if not self.in_ike_auth:
            self.nonce = ike.services.rng(NONCE_LEN)
            out.append(payload(PayloadType.NONCE, wire.Nonce(self.nonce)))
            if self.group:
                self.kex = new_key_exchange(self.group)
                out.append(payload(PayloadType.KE, wire.KE(self.group, self.kex.public())))
        out.append(payload(PayloadType.TSi, ts.to_wire(ts.ranges(c.local_ts))))
        out.append(payload(PayloadType.TSr, ts.to_wire(ts.ranges(c.remote_ts))))

    def _build_response(self, out: list[wire.Payload]) -> None:
        if self.error is not None:
            e = self.error
            out.append(notify(e.notify, e.data, e.protocol, e.spi))
            return
        if self.mode == Mode.TRANSPORT:
            out.append(notify(NotifyType.USE_TRANSPORT_MODE))
        out.append(payload(PayloadType.SA, self.answer))
        if not self.in_ike_auth:
            out.append(payload(PayloadType.NONCE, wire.Nonce(self.nonce)))
            if self.kex is not None:
                out.append(payload(PayloadType.KE, wire.KE(self.kex.group, self.kex.public())))
            if self.link:
                out.append(followup_ke.link_notify(self.link))  # RFC 9370 §2.2.4: link1
        tsi, tsr = self.narrowed
        out.append(payload(PayloadType.TSi, ts.to_wire(tsi)))
        out.append(payload(PayloadType.TSr, ts.to_wire(tsr)))

    # --- process --------------------------------------------------------------------------------------------

    def process(self, inbound: Inbound) -> Status:
        from xdpsec.ike.sa import State

        if self.ike.state != State.ESTABLISHED:
            self.skip = True  # IKE_AUTH failed: the IKE task has answered or reported it
            return Status.FAILED
        if self.initiator:
            return self._process_response(inbound)
        try:
            self._process_request(inbound)
        except _Reject as e:
            self.ike.services.count(f"child_rejected_{e}")
            self.error = e
        return Status.DONE

    def _process_request(self, inbound: Inbound) -> None:
        ike = self.ike
        offer, tsi, tsr = (inbound.first(t) for t in (PayloadType.SA, PayloadType.TSi, PayloadType.TSr))
        if offer is None and self.in_ike_auth:
            self.skip = True  # childless IKE_AUTH (RFC 6023): nothing to answer
            return
        if offer is None or tsi is None or tsr is None:
            raise _Reject(NotifyType.INVALID_SYNTAX)
        if not self.in_ike_auth and followup_ke.busy(ike, IKE_SA):
            raise _Reject(NotifyType.TEMPORARY_FAILURE)  # §2.25.2: the IKE SA is being rekeyed (multi-KE)
        peer_i, peer_r = ts.from_wire(tsi), ts.from_wire(tsr)
        config, narrowed = self._pick_config(peer_i, peer_r)
        if self.in_ike_auth:
            offer = without_ke(offer)
        chosen = select(offer, self._usable(config), self._suite)
        if chosen is None:
            raise _Reject(NotifyType.NO_PROPOSAL_CHOSEN)
        mine, theirs = chosen
        peer_spi = int.from_bytes(theirs.spi, "big")
        if peer_spi < _MIN_SPI:
            raise _Reject(NotifyType.INVALID_SYNTAX)
        if not self.is_rekey and ike.services.ts_in_use(ike, config.name, ts.selectors(narrowed[1]),
                                                        ts.selectors(narrowed[0])):
            # §2.9: selectors our policy cannot give this peer (another one's child holds them; two children
            # for the same traffic would leave the data path to pick one peer silently). A rekey keeps its own.
            raise _Reject(NotifyType.TS_UNACCEPTABLE)
        peer_nonce, shared = self._peer_keying(inbound, mine)
        wants_transport = inbound.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        self.mode = Mode.TRANSPORT if wants_transport and config.mode == Mode.TRANSPORT else Mode.TUNNEL
        self.config = config
        self.narrowed = narrowed
        self.spi = ike.services.new_child_spi()
        if not self.in_ike_auth:
            self.nonce = ike.services.rng(NONCE_LEN)
        self.answer = answer(theirs.num, theirs.protocol, self.spi.to_bytes(4, "big"), self._suite(mine))
        ni, nr = (ike.ni, ike.nr) if self.in_ike_auth else (peer_nonce, self.nonce)
        self.peer_nonce = peer_nonce
        # our view: TSr is local, TSi remote
        methods = () if self.in_ike_auth else additional_methods(mine.addke)
        if methods:
            self.link = followup_ke.expect(ike, self.target, methods, lambda secrets: self._install(
                mine, peer_spi, narrowed[1], narrowed[0], ni, nr, shared, secrets))
            return
        self._install(mine, peer_spi, narrowed[1], narrowed[0], ni, nr, shared)

    def _pick_config(self, peer_i, peer_r) -> tuple[ChildConfig, tuple[list, list]]:
        """§2.9: the first child whose selectors intersect both of the initiator's; TS_UNACCEPTABLE if none.
        A rekey keeps the configuration of the child it replaces."""
        for c in [self.config] if self.config is not None else self.ike.conn.children:
            tsi = ts.narrow(peer_i, ts.ranges(c.remote_ts))
            tsr = ts.narrow(peer_r, ts.ranges(c.local_ts))
            if tsi and tsr:
                return c, (tsi, tsr)
        raise _Reject(NotifyType.TS_UNACCEPTABLE)

    def _peer_keying(self, inbound: Inbound, mine: ChildProposal) -> tuple[bytes, bytes | None]:
        """CREATE_CHILD_SA: the initiator's nonce and, with PFS, g^ir from its KE (§1.3.1)."""
        if self.in_ike_auth:
            return b"", None
        nonce = inbound.first(PayloadType.NONCE)
        if nonce is None or not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
            raise _Reject(NotifyType.INVALID_SYNTAX)
        if not mine.ke:
            return nonce.data, None  # §1.3.1: a KEi for a proposal without a group is ignored
        ke = inbound.first(PayloadType.KE)
        if ke is None or ke.group != mine.ke:
            raise _Reject(NotifyType.INVALID_KE_PAYLOAD, mine.ke.to_bytes(2, "big"))
        self.kex = new_key_exchange(mine.ke)
        try:
            return nonce.data, self.kex.shared(ke.data)
        except KeyExchangeError:
            raise _Reject(NotifyType.INVALID_SYNTAX) from None

    def _process_response(self, inbound: Inbound) -> Status:
        ike, c = self.ike, self.config
        followup_ke.end(ike, self.target)  # begun again below if IKE_FOLLOWUP_KE follows
        error = inbound.error()
        if error == NotifyType.INVALID_KE_PAYLOAD and not self.in_ike_auth:
            data = inbound.notify(error).data
            group = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
            if group != self.group and group in {p.ke for p in c.proposals}:
                self.group = group
                return Status.RETRY
        if error is not None:
            return self._fail(notify_name(error))
        offer, tsi, tsr = (inbound.first(t) for t in (PayloadType.SA, PayloadType.TSi, PayloadType.TSr))
        if offer is None or tsi is None or tsr is None:
            return self._fail("response without SA, TSi or TSr")
        chosen = accept(offer, self._usable(c), self._suite)
        if chosen is None:
            return self._fail("responder chose a proposal we did not offer")
        mine, theirs = chosen
        local, remote = ts.from_wire(tsi), ts.from_wire(tsr)
        # §2.9: the responder may only narrow what we proposed.
        if not (local and remote and ts.covers(ts.ranges(c.local_ts), local)
                and ts.covers(ts.ranges(c.remote_ts), remote)):
            return self._fail("responder's traffic selectors are not a subset of ours")
        if inbound.notify(NotifyType.USE_TRANSPORT_MODE) is not None and c.mode == Mode.TRANSPORT:
            self.mode = Mode.TRANSPORT  # §1.3.1: otherwise the responder chose tunnel mode, which we accept
        shared, peer_nonce = None, b""
        if not self.in_ike_auth:
            nonce, ke = inbound.first(PayloadType.NONCE), inbound.first(PayloadType.KE)
            if nonce is None or not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
                return self._fail("response without a valid nonce")
            peer_nonce = self.peer_nonce = nonce.data
            if mine.ke:
                if ke is None or self.kex is None or ke.group != self.kex.group:
                    return self._fail("PFS proposal chosen without a matching KE")
                try:
                    shared = self.kex.shared(ke.data)
                except KeyExchangeError as e:
                    return self._fail(f"responder key exchange: {e}")
        ni, nr = (ike.ni, ike.nr) if self.in_ike_auth else (self.nonce, peer_nonce)
        peer_spi = int.from_bytes(theirs.spi, "big")
        if peer_spi < _MIN_SPI:
            return self._fail("responder's SPI is reserved")
        methods = () if self.in_ike_auth else additional_methods(mine.addke)
        if methods:
            return followup_ke.start(ike, inbound, self.target, methods, fail=self._fail, finish=lambda secrets: (
                self._install(mine, peer_spi, local, remote, ni, nr, shared, secrets)))
        self._install(mine, peer_spi, local, remote, ni, nr, shared)
        return Status.DONE

    def _fail(self, reason: str) -> Status:
        name = self.config.name if self.config else "?"
        self.ike.services.emit(Failure(self.ike.name, f"child {name}: {reason}"))
        return Status.FAILED

    # --- keys and SAs ---------------------------------------------------------------------------------------

    def _install(self, mine: ChildProposal, peer_spi: int, local: list, remote: list, ni: bytes, nr: bytes,
                 shared: bytes | None, additional: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """Derive KEYMAT (§2.17; with the secrets of IKE_FOLLOWUP_KE, RFC 9370 §2.2.4), build both SAParams and
        hand the pair to `_established`. The peer's SPI was checked (RFC 4303 §2.1)."""
        from xdpsec.ike.sa import Child

        ike, c, tf = self.ike, self.config, mine.transform
        crypto = ike.crypto
        enc, integ = tf.enc_key_len, tf.integ_key_len
        ei, ai, er, ar = child_keymat(crypto.proposal.prf, crypto.keys.sk_d, ni, nr, enc, integ, enc, integ, shared,
                                      additional)
        # The first keys carry traffic from this exchange's initiator (§2.17).
        (out_e, out_a), (in_e, in_a) = ((ei, ai), (er, ar)) if self.initiator else ((er, ar), (ei, ai))
        encap = UdpEncap(ike.local[1], ike.remote[1]) if ike.nat and mine.protocol == Protocol.ESP else None
        common = dict(protocol=mine.protocol, mode=self.mode, transform=tf, local=ike.local[0],
                      remote=ike.remote[0], encap=encap, replay_window=c.replay_window,
                      local_ts=ts.selectors(local), remote_ts=ts.selectors(remote), name=f"{ike.name}/{c.name}")
        out = SAParams(spi=peer_spi, direction=Direction.OUT, enc_key=out_e, integ_key=out_a, **common)
        inb = SAParams(spi=self.spi, direction=Direction.IN, enc_key=in_e, integ_key=in_a, **common)
        self._established(Child(c.name, out, inb))

    def _established(self, child) -> None:
        """Keep the new pair and report it (a rekey may decide otherwise, see child_rekey.py)."""
        self.ike.add_child(child, self.ike.now)
        self.ike.services.emit(ChildUp(self.ike.name, child.name, child.out, child.inb))
