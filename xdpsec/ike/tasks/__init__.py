"""Exchanges as tasks (strongSwan libcharon's decomposition): each knows one job and both of its roles.

A task is created for one role. As initiator of an exchange, `build()` adds its payloads to the request and
`process()` reads the response; as responder, `process()` reads the request and `build()` adds to the
response. Several tasks may share one exchange (IKE_AUTH carries `IkeAuth` and the first `ChildCreate`), each
taking the payloads it understands. A responder task rejects a request by raising `wire.IkeError(notify)`:
the IKE SA answers with that notify alone (RFC 7296 §2.21). Errors that must not spoil the rest of the
response (a child's NO_PROPOSAL_CHOSEN inside IKE_AUTH, §2.21.2) are kept by the task and built as a notify.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from xdpsec.ike import wire
from xdpsec.ike.consts import ERROR_TYPES_END, ExchangeType, NotifyType, PayloadType

if TYPE_CHECKING:
    from xdpsec.ike.sa import IkeSA


class Status(enum.Enum):
    DONE = "done"      # finished, successfully or with its failure reported
    FAILED = "failed"  # the exchange failed: tasks after this one in the exchange are not asked
    RETRY = "retry"    # run the exchange again (INVALID_KE_PAYLOAD, §1.3/§2.7)


class Inbound:
    """The payloads of one received message (decrypted), with lookups by type. `aad` (the message up to the SK
    payload's header) and `plain` (the inner payloads as sent) are kept for IKE_INTERMEDIATE (RFC 9242 §3.3.2)."""

    def __init__(self, msg: wire.Message, payloads: tuple[wire.Payload, ...], aad: bytes = b"",
                 plain: bytes = b""):
        self.msg = msg
        self.payloads = payloads
        self.aad = aad
        self.plain = plain

    def all(self, ptype: int) -> list:
        return [p.body for p in self.payloads if p.type == ptype]

    def first(self, ptype: int):
        return next((p.body for p in self.payloads if p.type == ptype), None)

    def notifies(self) -> Iterator[wire.Notify]:
        return iter(self.all(PayloadType.NOTIFY))

    def notify(self, ntype: int) -> wire.Notify | None:
        return next((n for n in self.notifies() if n.type == ntype), None)

    def error(self) -> int | None:
        """The first error notify (§3.10.1: types below 16384), if any."""
        return next((n.type for n in self.notifies() if n.type < ERROR_TYPES_END), None)


def notify(ntype: int, data: bytes = b"", protocol: int = 0, spi: bytes = b"") -> wire.Payload:
    return wire.Payload(PayloadType.NOTIFY, wire.Notify(ntype, protocol, spi, data))


def notify_name(ntype: int) -> str:
    try:
        return NotifyType(ntype).name
    except ValueError:
        return f"notify {ntype}"


def payload(ptype: int, body: wire.Body) -> wire.Payload:
    return wire.Payload(ptype, body)


class Task:
    exchange: ClassVar[ExchangeType]
    #: A rekey (of a child or the IKE SA): its failure is counted as `rekey_failed` and spares the old SAs.
    is_rekey: ClassVar[bool] = False

    def __init__(self, ike: IkeSA, *, initiator: bool):
        self.ike = ike
        self.initiator = initiator

    def build(self, out: list[wire.Payload]) -> None:
        raise NotImplementedError

    def process(self, inbound: Inbound) -> Status:
        raise NotImplementedError

    def obsolete(self) -> bool:
        """Queued but no longer wanted (the SA it acts on is gone or was rekeyed by the peer): not sent."""
        return False


def responder_tasks(ike: IkeSA, exchange: ExchangeType, inbound: Inbound) -> list[Task]:
    """The tasks that answer a request of `exchange` (the table strongSwan's task manager keeps in code).
    CREATE_CHILD_SA does three jobs (§1.3): an SA payload proposing protocol IKE rekeys the IKE SA (§1.3.2),
    N(REKEY_SA) rekeys a child (§1.3.3), anything else creates a child (§1.3.1)."""
    from xdpsec.ike.consts import ProtocolId
    from xdpsec.ike.tasks.child_create import ChildCreate
    from xdpsec.ike.tasks.child_rekey import ChildRekey
    from xdpsec.ike.tasks.followup_ke import FollowupKe
    from xdpsec.ike.tasks.ike_auth import IkeAuth
    from xdpsec.ike.tasks.ike_init import IkeInit
    from xdpsec.ike.tasks.ike_intermediate import IkeIntermediate
    from xdpsec.ike.tasks.ike_rekey import IkeRekey
    from xdpsec.ike.tasks.informational import Informational

    if exchange == ExchangeType.IKE_SA_INIT:
        return [IkeInit(ike, initiator=False)]
    if exchange == ExchangeType.IKE_INTERMEDIATE:
        return [IkeIntermediate(ike, initiator=False)]
    if exchange == ExchangeType.IKE_AUTH:
        return [IkeAuth(ike, initiator=False), ChildCreate(ike, initiator=False, in_ike_auth=True)]
    if exchange == ExchangeType.IKE_FOLLOWUP_KE:
        return [FollowupKe(ike, initiator=False)]  # RFC 9370 §2.2.4: its link says which CREATE_CHILD_SA
    if exchange == ExchangeType.CREATE_CHILD_SA:
        sa = inbound.first(PayloadType.SA)
        if sa is not None and any(p.protocol == ProtocolId.IKE for p in sa.proposals):
            return [IkeRekey(ike, initiator=False)]
        if inbound.notify(NotifyType.REKEY_SA) is not None:
            return [ChildRekey(ike, initiator=False)]
        return [ChildCreate(ike, initiator=False)]
    return [Informational(ike, initiator=False)]
