"""INFORMATIONAL (RFC 7296 §1.4, §1.5): deleting child SAs and the IKE SA, liveness checks, notifies.

    Delete of child SAs (§1.4.1):  HDR, SK {D(ESP, our inbound SPIs)}  -->
                                   <--  HDR, SK {D(ESP, the peer's inbound SPIs of the same children)}
    Delete of the IKE SA:          HDR, SK {D(IKE)}  -->
                                   <--  HDR, SK {}
    Liveness (§2.4, "DPD"):        HDR, SK {}  -->
                                   <--  HDR, SK {}

A Delete names SAs by the SPI their *sender* receives on, so the receiver looks them up among its outbound
SAs and answers with its own inbound SPIs of those children. Unknown SPIs are ignored (§1.4.1: the SA may be
gone already, e.g. after simultaneous deletes).
"""

from __future__ import annotations

from xdpsec.ike import wire
from xdpsec.ike.consts import ERROR_TYPES_END, ExchangeType, PayloadType, ProtocolId
from xdpsec.ike.events import ChildDown
from xdpsec.ike.tasks import Inbound, Status, Task, notify_name, payload
from xdpsec.sa import Protocol

_PROTOCOL = {ProtocolId.ESP: Protocol.ESP, ProtocolId.AH: Protocol.AH}
_PROTOCOL_ID = {v: k for k, v in _PROTOCOL.items()}


def _remove_children(ike, protocol: Protocol, spis: list[int], *, by_out: bool) -> list[int]:
    """Forget the children with these SPIs (outbound SPIs when the peer names them); their inbound SPIs."""
    gone = []
    for child in list(ike.children):
        spi = child.out.spi if by_out else child.inb.spi
        if child.out.protocol == protocol and spi in spis:
            ike.children.remove(child)
            ike.services.emit(ChildDown(ike.name, child.name, child.out.spi, child.inb.spi))
            gone.append(child.inb.spi)
    return gone


class Informational(Task):
    """The responder's side of every INFORMATIONAL request."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, ike, *, initiator: bool):
        super().__init__(ike, initiator=initiator)
        self.deleted: dict[Protocol, list[int]] = {}
        self.delete_ike = False

    def process(self, inbound: Inbound) -> Status:
        ike = self.ike
        for n in inbound.notifies():
            if n.type < ERROR_TYPES_END:
                ike.services.count(f"error_received_{notify_name(n.type)}")
        for d in inbound.all(PayloadType.DELETE):
            if d.protocol == ProtocolId.IKE:
                self.delete_ike = True
            elif d.protocol in _PROTOCOL:
                spis = [int.from_bytes(s, "big") for s in d.spis]
                proto = _PROTOCOL[d.protocol]
                self.deleted.setdefault(proto, []).extend(_remove_children(ike, proto, spis, by_out=True))
        if not inbound.payloads:
            ike.services.count("liveness_answered")
        return Status.DONE

    def build(self, out: list[wire.Payload]) -> None:
        if self.delete_ike:
            # §1.4.1: the response to the IKE SA's Delete is empty; then the SA and its children are gone.
            # §2.25.2: a rekey of ours is forgotten, unless we accepted the peer's own rekey meanwhile: that one
            # was the peer's way forward, and the children move to it (§2.8.2).
            from xdpsec.ike.tasks.ike_rekey import IkeRekey

            for task in self.ike.outstanding_tasks():
                if isinstance(task, IkeRekey) and task.collision is not None:
                    task.concede()
            self.ike.die("deleted by peer")
            return
        for proto, spis in self.deleted.items():
            if spis:
                out.append(payload(PayloadType.DELETE,
                                   wire.Delete(_PROTOCOL_ID[proto], tuple(s.to_bytes(4, "big") for s in spis))))


class DeleteChild(Task):
    """Our Delete of one child SA pair."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, ike, *, initiator: bool, in_spi: int, protocol: Protocol):
        super().__init__(ike, initiator=initiator)
        self.in_spi = in_spi
        self.protocol = protocol

    def build(self, out: list[wire.Payload]) -> None:
        out.append(payload(PayloadType.DELETE, wire.Delete(_PROTOCOL_ID[self.protocol],
                                                           (self.in_spi.to_bytes(4, "big"),))))

    def process(self, inbound: Inbound) -> Status:
        # Whatever the peer answers (its Delete, or nothing if it had deleted first), the pair is gone.
        _remove_children(self.ike, self.protocol, [self.in_spi], by_out=False)
        return Status.DONE


class DeleteIke(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, ike, *, initiator: bool, reason: str):
        super().__init__(ike, initiator=initiator)
        self.reason = reason

    def build(self, out: list[wire.Payload]) -> None:
        out.append(payload(PayloadType.DELETE, wire.Delete(ProtocolId.IKE)))

    def process(self, inbound: Inbound) -> Status:
        self.ike.die(self.reason)
        return Status.DONE


class Liveness(Task):
    """An empty INFORMATIONAL request: any authenticated answer proves the peer alive (§2.4)."""

    exchange = ExchangeType.INFORMATIONAL

    def build(self, out: list[wire.Payload]) -> None:
        pass

    def process(self, inbound: Inbound) -> Status:
        return Status.DONE
