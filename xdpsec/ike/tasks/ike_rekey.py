"""Rekeying the IKE SA (RFC 7296 §1.3.2, §2.18): a new IKE SA from a CREATE_CHILD_SA over the old one.

    CREATE_CHILD_SA  HDR(old), SK {SA(IKE, new SPIi), Ni, KEi}  -->
                                     <--  HDR(old), SK {SA(IKE, new SPIr), Nr, KEr}
    INFORMATIONAL    HDR(old), SK {D(IKE)}  -->
                                     <--  HDR(old), SK {}

The new SA's keys: SKEYSEED = prf_old(SK_d old, g^ir new | Ni | Nr), then prf+ with the new SA's PRF over
Ni | Nr | SPIi | SPIr (§2.18, keys.py). The rekey's initiator is the new SA's original initiator, whoever
started the old one. Its message IDs start at zero. The child SAs move to the new SA unchanged (their keys do
not depend on the IKE SA's), the new SA is reported with IkeUp and the rekey's initiator deletes the old one;
a replaced SA emits no IkeDown, since the connection never went down.

A proposal with additional key exchanges (a hybrid IKE SA, RFC 9370 §2.2.4) is offered and chosen like any
other; the CREATE_CHILD_SA then carries the main key exchange (SK(0)) and N(ADDITIONAL_KEY_EXCHANGE), one
IKE_FOLLOWUP_KE per ADDKE follows on the old SA (tasks/followup_ke.py), and the new SA exists only after the
last: SKEYSEED = prf(SK_d old, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).

Collisions (§2.8.2, §2.25.2, after strongSwan's ike_rekey.c):

* Both sides rekey at once: both answer, both new SAs come up; the one created by the exchange holding the
  lowest of the four nonces is redundant and deleted by the side that initiated that exchange; the other side
  deletes the old SA once the redundant one is gone (`IkeSA.releases`), so that a lost answer to the
  redundant exchange can still be fetched by retransmitting on the old SA. Until both exchanges are done the
  children stay on the old SA. If the old SA is deleted by the peer first (it saw no collision), its rekey
  survives.
* The peer rekeys the IKE SA while we create, rekey or delete a child (or after we replaced it), or while
  any multi-KE sequence runs, or its rekey or ours has additional key exchanges: TEMPORARY_FAILURE.
  The peer deletes the IKE SA we are rekeying: we answer and forget our rekey.

A failed rekey (an error notify or an unusable answer) leaves the old SA as it is: counted as `rekey_failed`,
reported as a Failure, and tried again after REKEY_RETRY until the SA's hard lifetime.
"""

from __future__ import annotations

from xdpsec.crypto.dh import new_key_exchange
from xdpsec.crypto.prf import Prf
from xdpsec.ike import wire
from xdpsec.ike.consts import ExchangeType, NotifyType, PayloadType, ProtocolId
from xdpsec.ike.events import Failure, IkeUp
from xdpsec.ike.keys import SPI_LEN, rekey_skeyseed, split_ike_keys
from xdpsec.ike.tasks import Inbound, Status, Task, followup_ke, notify_name, payload
from xdpsec.ike.tasks.child_rekey import lowest_nonce_is_ours
from xdpsec.ike.tasks.followup_ke import IKE_SA, offers_addke
from xdpsec.ike.tasks.ike_init import (
    NONCE_LEN,
    NONCE_MAX,
    NONCE_MIN,
    BadShare,
    initiator_share,
    responder_share,
)
from xdpsec.ike.tasks.proposal import accept, additional_methods, answer, ike_offer, ike_suite, select


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    is_rekey = True

    def __init__(self, ike, *, initiator: bool):
        super().__init__(ike, initiator=initiator)
        self.spi = 0            # our SPI of the new IKE SA
        self.nonce = b""
        self.peer_nonce = b""
        self.kex = None
        self.group = ike.crypto.proposal.ke if ike.crypto is not None else 0
        self.chosen = None      # responder: (our IkeProposal, the peer's wire.Proposal)
        self.new = None         # the new IkeSA
        self.collision: IkeRekey | None = None  # the peer's rekey, answered while ours was outstanding
        self.link = b""         # responder: N(ADDITIONAL_KEY_EXCHANGE) data when IKE_FOLLOWUP_KE follows

    def obsolete(self) -> bool:
        return not self.ike.usable

    # --- both roles -----------------------------------------------------------------------------------------

    def _new_sa(self, proposal, ispi: int, rspi: int, ni: bytes, nr: bytes, shared: bytes,
                additional: tuple[bytes, ...] | list[bytes] = ()):
        """The new IKE SA (§2.18; with the secrets of IKE_FOLLOWUP_KE, RFC 9370 §2.2.4), established and routed
        to, not yet carrying the children."""
        from xdpsec.ike.sa import Crypto, IkeSA, State

        old = self.ike
        seed = rekey_skeyseed(Prf(old.crypto.proposal.prf), old.crypto.keys.sk_d, shared, ni, nr, additional)
        keys = split_ike_keys(proposal.prf, proposal.encr, proposal.encr_key_bits, proposal.integ, seed,
                              ni, nr, ispi, rspi)
        new = IkeSA(old.conn, initiator=self.initiator, ispi=ispi, local=old.local, remote=old.remote,
                    services=old.services, now=old.now)
        new.rspi = rspi
        new.crypto = Crypto.create(proposal, keys, self.initiator)
        new.state = State.ESTABLISHED
        new.nat_local, new.nat_remote = old.nat_local, old.nat_remote
        new.peer_hash_algorithms, new.peer_id = old.peer_hash_algorithms, old.peer_id
        new.peer_fragmentation = old.peer_fragmentation  # negotiated once, in IKE_SA_INIT (RFC 7383 §2.3)
        old.services.adopt(new)
        self.new = new
        return new

    def _take_over(self, new) -> None:
        """`new` survives: the children move to it, it is announced, the old SA only awaits its Delete."""
        old, now = self.ike, self.ike.now
        new.children, old.children = old.children, []
        new.announced, old.announced = True, False
        new.start_lifetime(now)
        old.rekeyed_at = now
        old.services.count("ike_rekey")
        c = new.crypto
        old.services.emit(IkeUp(new.name, new.ispi, new.rspi, new.remote, new.local, c.proposal, c.keys))

    def concede(self) -> None:
        """Our rekey will not complete (the peer deleted the old SA, or refused ours) but we accepted the peer's:
        that one survives."""
        self.ike.services.count("rekey_collision_lost")
        self._take_over(self.collision.new)

    # --- initiator ------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        if not self.initiator:
            self._build_response(out)
            return
        ike = self.ike
        self.spi = self.spi or ike.services.new_ike_spi()
        if self.kex is None or self.kex.group != self.group:
            self.kex = new_key_exchange(self.group)
        self.nonce = ike.services.rng(NONCE_LEN)
        offer = ike_offer(ike.conn.proposals, self.spi.to_bytes(SPI_LEN, "big"))
        out += [payload(PayloadType.SA, offer),
                payload(PayloadType.NONCE, wire.Nonce(self.nonce)),
                payload(PayloadType.KE, wire.KE(self.group, self.kex.public()))]
        if offers_addke(offer):
            followup_ke.begin(ike, IKE_SA)  # refuse colliding rekeys until the sequence ends (followup_ke.py)

    def process(self, inbound: Inbound) -> Status:
        if not self.initiator:
            self._process_request(inbound)
            return Status.DONE
        ike = self.ike
        followup_ke.end(ike, IKE_SA)  # begun again below if IKE_FOLLOWUP_KE follows
        error = inbound.error()
        if error == NotifyType.INVALID_KE_PAYLOAD:
            data = inbound.notify(error).data
            group = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
            if group != self.group and group in {p.ke for p in ike.conn.proposals}:
                self.group = group  # §1.3.2 / §2.7: again with the group the responder wants
                return Status.RETRY
        if error is not None:
            return self._fail(notify_name(error))
        sa, nonce, ke = (inbound.first(t) for t in (PayloadType.SA, PayloadType.NONCE, PayloadType.KE))
        if sa is None or nonce is None or ke is None:
            return self._fail("response without SA, Nonce or KE")
        chosen = accept(sa, ike.conn.proposals, ike_suite, ProtocolId.IKE)
        if chosen is None:
            return self._fail("responder chose a proposal we did not offer")
        mine, theirs = chosen
        if len(theirs.spi) != SPI_LEN or not int.from_bytes(theirs.spi, "big"):
            return self._fail("responder's new IKE SPI is not 8 non-zero octets")
        try:
            shared = responder_share(self.kex, self.group, mine.ke, ke, nonce)
        except BadShare as e:
            return self._fail(str(e))
        self.peer_nonce = nonce.data
        rspi = int.from_bytes(theirs.spi, "big")
        methods = additional_methods(mine.addke)
        if methods:
            # RFC 9370 §2.2.4: the new SA exists once every IKE_FOLLOWUP_KE is done; no collision is possible
            # meanwhile (colliding rekeys were refused), so the plain take-over of `_resolve` applies.
            return followup_ke.start(ike, inbound, IKE_SA, methods, fail=self._fail, finish=lambda secrets: self._resolve(
                self._new_sa(mine, self.spi, rspi, self.nonce, nonce.data, shared, secrets)))
        self._resolve(self._new_sa(mine, self.spi, rspi, self.nonce, nonce.data, shared))
        return Status.DONE

    def _resolve(self, new) -> None:
        from xdpsec.ike.sa import State

        ike, other = self.ike, self.collision
        if other is not None and lowest_nonce_is_ours((self.nonce, self.peer_nonce), (other.peer_nonce, other.nonce)):
            # §2.8.2: ours is redundant; we close it, the peer deletes the old SA.
            self.concede()
            new.rekeyed_at = ike.now
            new.delete("redundant IKE SA after a rekey collision", ike.now)
            return
        self._take_over(new)
        if other is None or other.new.state == State.DEAD:  # no collision, or the peer closed its SA already
            ike.delete("rekeyed", ike.now)
            return
        # §2.8.2: the peer closes its redundant SA, then we delete the old one. Not before: our answer to the
        # exchange that made it may have been lost, and the peer's retransmission of that request, on the old
        # SA, must still find our cached answer. Deleted first, the old SA would take the peer's rekey with it
        # and leave the redundant SA here alone until REKEYED_GRACE.
        other.new.rekeyed_at = ike.now
        other.new.releases = ike

    def _fail(self, reason: str) -> Status:
        ike = self.ike
        if self.collision is not None:
            self.concede()
            return Status.FAILED
        ike.services.count("rekey_failed")
        ike.services.emit(Failure(ike.name, f"IKE SA rekey failed: {reason}"))
        ike.rekey_at = ike.retry_at()
        return Status.FAILED

    # --- responder ------------------------------------------------------------------------------------------

    def _process_request(self, inbound: Inbound) -> None:
        from xdpsec.ike.tasks.child_create import ChildCreate
        from xdpsec.ike.tasks.informational import DeleteChild

        ike = self.ike
        outstanding = ike.outstanding_tasks()
        if ike.rekeyed or any(isinstance(t, ChildCreate | DeleteChild) for t in outstanding):
            # §2.25.2: we are creating, rekeying or closing a child, or this SA was replaced already.
            raise wire.IkeError(NotifyType.TEMPORARY_FAILURE, "busy with another exchange")
        sa, nonce, ke = (inbound.first(t) for t in (PayloadType.SA, PayloadType.NONCE, PayloadType.KE))
        if sa is None or nonce is None or ke is None:
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, "IKE rekey without SA, Nonce or KE")
        if not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"nonce of {len(nonce.data)} octets")
        chosen = select(sa, ike.conn.proposals, ike_suite, ProtocolId.IKE)
        if chosen is None:
            raise wire.IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no IKE proposal in common")
        mine, theirs = chosen
        if len(theirs.spi) != SPI_LEN or not int.from_bytes(theirs.spi, "big"):
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, "new IKE SPI is not 8 non-zero octets")
        ours = next((t for t in outstanding if isinstance(t, IkeRekey)), None)
        if ike.multi_ke or (ours is not None and offers_addke(sa)):
            # RFC 9370 §2.2.4 with RFC 7296 §2.25.2: a multi-KE sequence is running here, or this one would
            # collide with ours; both retry later (see followup_ke.py).
            raise wire.IkeError(NotifyType.TEMPORARY_FAILURE, "a multi-KE exchange is in progress")
        self.kex, shared = initiator_share(mine.ke, ke)
        self.chosen = chosen
        self.spi = ike.services.new_ike_spi()
        self.nonce, self.peer_nonce = ike.services.rng(NONCE_LEN), nonce.data
        ispi = int.from_bytes(theirs.spi, "big")
        methods = additional_methods(mine.addke)
        if methods:
            self.link = followup_ke.expect(ike, IKE_SA, methods, lambda secrets: self._take_over(
                self._new_sa(mine, ispi, self.spi, nonce.data, self.nonce, shared, secrets)))
            return
        new = self._new_sa(mine, ispi, self.spi, nonce.data, self.nonce, shared)
        if ours is not None:
            ours.collision = self  # decided when our own rekey's response arrives (§2.8.2)
            ike.services.count("ike_rekey_collision")
        else:
            self._take_over(new)   # the peer deletes the old SA

    def _build_response(self, out: list[wire.Payload]) -> None:
        mine, theirs = self.chosen
        out += [payload(PayloadType.SA, answer(theirs.num, ProtocolId.IKE, self.spi.to_bytes(SPI_LEN, "big"),
                                               ike_suite(mine))),
                payload(PayloadType.NONCE, wire.Nonce(self.nonce)),
                payload(PayloadType.KE, wire.KE(mine.ke, self.kex.public()))]
        if self.link:
            out.append(followup_ke.link_notify(self.link))  # RFC 9370 §2.2.4: link1
