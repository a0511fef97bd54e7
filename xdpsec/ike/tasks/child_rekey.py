"""Rekeying a child SA (RFC 7296 §1.3.3, §2.8): a CREATE_CHILD_SA naming the SA it replaces, then its Delete.

    CREATE_CHILD_SA  HDR, SK {N(REKEY_SA, old inbound SPI), SA, Ni, [KEi], TSi, TSr}  -->
                                      <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
    INFORMATIONAL    HDR, SK {D(ESP, old inbound SPI)}  -->
                                      <--  HDR, SK {D(ESP, the peer's old inbound SPI)}

Everything of child_create.py applies (the new pair is negotiated like a new child, KEi when the child's
proposal has a key exchange group: PFS), with the configuration of the child being replaced. Make-before-break,
in this order (each side keeps accepting on the old inbound SA until the old pair's ChildDown):

1. the responder reports the new pair with ChildUp(activate_out=False) before its response leaves: the data
   path installs both SAs but keeps sending on the old pair, as the initiator cannot decrypt the new one yet;
2. the initiator reports the new pair with ChildUp (installed, and sending on it at once: the responder has
   its inbound SA), then deletes the old pair; its ChildDown names the old SPIs;
3. the Delete reaches the responder, whose ChildDown of the old pair makes its data path switch to the new
   outbound SA (strongSwan's responder likewise installs its new outbound SA only on that Delete).

Collisions (§2.25.1, after strongSwan's child_rekey.c):

* Both sides rekey the same child at once (§2.8.1): each answers the other's request as usual, and once both
  exchanges are done each knows the four nonces. The pair created by the exchange holding the lowest nonce
  (octet by octet, a prefix being lower: Python's bytes order) is redundant; the side that initiated that
  exchange deletes it, the other side deletes the old pair.
* The peer rekeys a child we are deleting, or have already replaced: TEMPORARY_FAILURE; one it does not know
  (deleted meanwhile): CHILD_SA_NOT_FOUND. Either answer to our own rekey leaves the old pair to its fate: if the
  peer has lost a pair we still have, we drop it silently and create the child afresh (§2.25).
* While the IKE SA is being rekeyed a child rekey is refused with TEMPORARY_FAILURE (§2.25.2).
* With RFC 9370 additional key exchanges (IKE_FOLLOWUP_KE, tasks/followup_ke.py) no new pair exists until the
  last of them, so the nonce rule cannot run: a rekey of a pair during its multi-KE sequence, or a multi-KE
  rekey colliding with ours, gets TEMPORARY_FAILURE and both sides retry later.

A rekey that fails (an error notify, a response we cannot use) leaves the old pair working: it is counted as
`rekey_failed`, reported as a Failure and tried again after REKEY_RETRY, until the pair's hard lifetime.
"""

from __future__ import annotations

from xdpsec.ike import wire
from xdpsec.ike.consts import NotifyType, PayloadType, ProtocolId
from xdpsec.ike.events import ChildDown, ChildUp, Failure
from xdpsec.ike.tasks import Inbound, Status, notify
from xdpsec.ike.tasks.child_create import ChildCreate, _Reject
from xdpsec.ike.tasks.followup_ke import busy, offers_addke
from xdpsec.sa import Protocol

_PROTOCOL = {ProtocolId.ESP: Protocol.ESP, ProtocolId.AH: Protocol.AH}
_PROTOCOL_ID = {v: k for k, v in _PROTOCOL.items()}


def lowest_nonce_is_ours(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1: does the exchange we initiated hold the lowest of the four nonces?"""
    return min(ours + theirs) in ours


class ChildRekey(ChildCreate):
    is_rekey = True

    def __init__(self, ike, *, initiator: bool, old=None):
        config = ike.child_config(old.name) if old is not None else None
        super().__init__(ike, initiator=initiator, child=config)
        self.old = old
        self.collision: ChildRekey | None = None  # the peer's rekey of the same pair, answered meanwhile
        self.partner: ChildRekey | None = None    # responder: our own outstanding rekey of that pair
        self.new = None

    @property
    def target(self):
        """A multi-KE sequence of a rekey is about the pair it replaces (followup_ke.py)."""
        return self.old

    def obsolete(self) -> bool:
        from xdpsec.ike.sa import ChildState

        return (not self.ike.usable or self.old not in self.ike.children
                or self.old.state not in (ChildState.INSTALLED, ChildState.REKEYING))

    # --- initiator ------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        from xdpsec.ike.sa import ChildState

        if not self.initiator:
            super().build(out)
            return
        self.old.state = ChildState.REKEYING
        out.append(notify(NotifyType.REKEY_SA, protocol=_PROTOCOL_ID[self.old.inb.protocol],
                          spi=self.old.inb.spi.to_bytes(4, "big")))
        super().build(out)

    def _process_response(self, inbound: Inbound) -> Status:
        if inbound.error() == NotifyType.CHILD_SA_NOT_FOUND and self.collision is None:
            self._not_found()
        return super()._process_response(inbound)

    def _not_found(self) -> None:
        """§2.25: the peer has no such SA. If we still have it, drop it silently and create the child anew."""
        ike, old = self.ike, self.old
        if old not in ike.children:
            return  # deleted by the peer while our rekey was on its way: it stays deleted
        ike.children.remove(old)
        ike.services.emit(ChildDown(ike.name, old.name, old.out.spi, old.inb.spi))
        ike.queue([ChildCreate(ike, initiator=True, child=self.config)], ike.now)

    def _fail(self, reason: str) -> Status:
        from xdpsec.ike.sa import ChildState

        ike, old = self.ike, self.old
        if self.collision is not None:
            # The peer refused ours but we accepted its rekey of the same pair: that one survives (§2.8.1).
            ike.services.count("rekey_collision_lost")
            if old in ike.children:
                old.state = ChildState.REKEYED  # the peer, initiator of the survivor, deletes it
            return Status.FAILED
        ike.services.count("rekey_failed")
        ike.services.emit(Failure(ike.name, f"child {old.name}: rekey failed: {reason}"))
        if old.state == ChildState.REKEYING:
            # Keeps working; try again later, before its hard lifetime. It may have moved to a new IKE SA while
            # the refusal was on its way (an IKE rekey the peer finished meanwhile): that one retries it.
            old.state = ChildState.INSTALLED
            old.rekey_at = ike.retry_at()
        return Status.FAILED

    # --- responder ------------------------------------------------------------------------------------------

    def process(self, inbound: Inbound) -> Status:
        if self.initiator:
            return super().process(inbound)
        try:
            self._find_old(inbound.notify(NotifyType.REKEY_SA), inbound.first(PayloadType.SA))
        except _Reject as e:
            self.ike.services.count(f"child_rekey_rejected_{e}")
            self.error = e
            return Status.DONE
        return super().process(inbound)

    def _find_old(self, n: wire.Notify, offer: wire.SA | None) -> None:
        """The pair the peer rekeys, named by its inbound SPI, i.e. our outbound one; or why we refuse."""
        from xdpsec.ike.sa import ChildState
        from xdpsec.ike.tasks.ike_rekey import IkeRekey

        ike = self.ike
        protocol = _PROTOCOL.get(n.protocol)
        spi = int.from_bytes(n.spi, "big") if len(n.spi) == 4 else -1
        old = next((c for c in ike.children if c.out.protocol == protocol and c.out.spi == spi), None)
        if old is None:
            raise _Reject(NotifyType.CHILD_SA_NOT_FOUND, protocol=n.protocol, spi=n.spi)
        if ike.rekeyed or any(isinstance(t, IkeRekey) for t in ike.outstanding_tasks()):
            raise _Reject(NotifyType.TEMPORARY_FAILURE)  # §2.25.2: we are rekeying the IKE SA
        if old.state in (ChildState.DELETING, ChildState.REKEYED):
            raise _Reject(NotifyType.TEMPORARY_FAILURE)  # §2.25.1: we are closing it
        if busy(ike, old) or (old.state == ChildState.REKEYING and offers_addke(offer)):
            raise _Reject(NotifyType.TEMPORARY_FAILURE)  # RFC 9370 §2.2.4: see the module docstring
        self.old = old
        self.config = ike.child_config(old.name)
        if self.config is None:
            raise _Reject(NotifyType.TS_UNACCEPTABLE)  # no longer configured (reloaded away)
        if old.state == ChildState.REKEYING:
            self.partner = next((t for t in ike.outstanding_tasks()
                                 if isinstance(t, ChildRekey) and t.old is old), None)

    # --- the new pair ---------------------------------------------------------------------------------------

    def _established(self, child) -> None:
        from xdpsec.ike.sa import ChildState

        ike, old = self.ike, self.old
        self.new = child
        collision = self.collision if self.initiator else None
        if collision is not None and lowest_nonce_is_ours((self.nonce, self.peer_nonce),
                                                          (collision.peer_nonce, collision.nonce)):
            # §2.8.1: ours is the redundant pair; we created it, we close it. It never reaches the data path
            # here; the peer installed it as responder and removes it on our Delete. The old pair is the
            # peer's to delete.
            ike.services.count("rekey_collision_lost")
            if old in ike.children:
                old.state = ChildState.REKEYED
            self._delete(child)
            return
        ike.add_child(child, ike.now)
        # The responder keeps sending on the old pair until its Delete: see the module docstring.
        ike.services.emit(ChildUp(ike.name, child.name, child.out, child.inb, activate_out=self.initiator))
        ike.services.count("child_rekey")
        if not self.initiator:
            if self.partner is not None:
                self.partner.collision = self  # decided when our own rekey's response arrives
                ike.services.count("child_rekey_collision")  # §2.8.1: seen by both sides, one resolution each
            elif old in ike.children:
                old.state = ChildState.REKEYED  # the initiator deletes it
            return
        if collision is not None and collision.new in ike.children:
            collision.new.state = ChildState.REKEYED  # the peer's redundant pair: the peer deletes it
        if old in ike.children:
            old.state = ChildState.REKEYED
            self._delete(old)

    def _delete(self, child) -> None:
        from xdpsec.ike.tasks.informational import DeleteChild

        self.ike.queue([DeleteChild(self.ike, initiator=True, in_spi=child.inb.spi, protocol=child.inb.protocol)],
                       self.ike.now)

