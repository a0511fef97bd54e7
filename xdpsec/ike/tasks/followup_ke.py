"""IKE_FOLLOWUP_KE (RFC 9370 §2.2.4): the additional key exchanges of a CREATE_CHILD_SA.

When a CREATE_CHILD_SA (a new child with PFS, a child rekey with PFS, an IKE SA rekey) chooses a proposal
with ADDKE transforms, the CREATE_CHILD_SA itself carries only the main key exchange (Transform Type 4, SK(0));
each additional one follows in its own IKE_FOLLOWUP_KE exchange on the same IKE SA, in ADDKE order:

    CREATE_CHILD_SA  HDR, SK {SA, Ni, KEi, ...}  -->
                                 <--  HDR, SK {SA, Nr, KEr, ..., N(ADDITIONAL_KEY_EXCHANGE)(link1)}
    IKE_FOLLOWUP_KE  HDR, SK {KEi(1), N(ADDITIONAL_KEY_EXCHANGE)(link1)}  -->
                                 <--  HDR, SK {KEr(1), N(ADDITIONAL_KEY_EXCHANGE)(link2)}
    IKE_FOLLOWUP_KE  HDR, SK {KEi(2), N(ADDITIONAL_KEY_EXCHANGE)(link2)}  -->
                                 <--  HDR, SK {KEr(2)}                       (the last carries no link)

The link is a blob only the responder interprets (§2.2.4): here LINK_LEN random octets naming a `Pending`
sequence, a fresh one per round, so a replayed or stale link finds nothing. Only when the last exchange is done
are the new SA's keys derived, with every secret (keys.py, §2.2.4):

    SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))          IKE SA rekey
    KEYMAT   = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))         child SA

Until then nothing is installed and the old SA works on: a sequence that fails (an error notify, a bad KE, a
lost peer) leaves it untouched, and its rekey is retried like any failed one.

Errors (§2.2.4): an IKE_FOLLOWUP_KE whose link we do not know (never sent, already used, expired) gets
STATE_NOT_FOUND, which ends the initiator's sequence. A KE of another method than negotiated for that round, none
at all, or one of the wrong length is INVALID_SYNTAX, as in IKE_INTERMEDIATE (§2.2.2), and ends ours. A
responder forgets a sequence whose next request has not come FOLLOWUP_TIMEOUT after its last answer
(§2.2.4 suggests 5-20 s): the initiator may have lost its state.

Collisions: two rekeys of one SA crossing each other are resolved by RFC 7296 §2.8.1/§2.8.2's nonce rule for
classic exchanges (child_rekey.py, ike_rekey.py). When either of them has additional key exchanges, neither
SA exists yet when the CREATE_CHILD_SA responses arrive, so instead every request that would rekey an SA (or
the IKE SA, or create a child while the IKE SA is rekeyed) during a multi-KE sequence is refused with
TEMPORARY_FAILURE (RFC 7296 §2.25): both sides retry after their jittered REKEY_RETRY, and one of them goes
first. `IkeSA.multi_ke` holds what such a sequence is about (IKE_SA, a Child, or a ChildCreate task), in
either role, from the CREATE_CHILD_SA request until its last IKE_FOLLOWUP_KE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xdpsec.crypto.dh import KeyExchangeError
from xdpsec.crypto.kem import initiate, respond
from xdpsec.ike import wire
from xdpsec.ike.consts import ExchangeType, NotifyType, PayloadType, TransformType
from xdpsec.ike.tasks import Inbound, Status, Task, notify, notify_name, payload

#: Octets of a link; §2.2.4 leaves its size to the responder.
LINK_LEN = 16
#: RFC 9370 §2.2.4: a responder drops a sequence whose next IKE_FOLLOWUP_KE is this late ("5-20 seconds").
FOLLOWUP_TIMEOUT = 20.0
#: The `IkeSA.multi_ke` entry of a rekey of the IKE SA itself.
IKE_SA = "ike-sa"

Finish = Callable[[list[bytes]], None]
Fail = Callable[[str], Status]


@dataclass(eq=False)
class Pending:
    """A responder's sequence: what it is about, the methods still to run, the secrets so far. Never logged."""

    target: object
    methods: tuple[int, ...]
    finish: Finish
    deadline: float
    secrets: list[bytes] = field(default_factory=list, repr=False)

    @property
    def method(self) -> int:
        return self.methods[len(self.secrets)]


def offers_addke(sa: wire.SA | None) -> bool:
    """Does an SA payload propose any additional key exchange (an ADDKE transform other than NONE)?"""
    return sa is not None and any(t.type >= TransformType.ADDKE1 and t.id
                                  for p in sa.proposals for t in p.transforms)


def busy(ike, target) -> bool:
    """Is a multi-KE sequence about `target` running, or one rekeying the IKE SA (which moves every child)?"""
    return target in ike.multi_ke or IKE_SA in ike.multi_ke


def begin(ike, target) -> None:
    ike.multi_ke.add(target)


def end(ike, target) -> None:
    ike.multi_ke.discard(target)


# --- responder ----------------------------------------------------------------------------------------------


def expect(ike, target, methods: Sequence[int], finish: Finish) -> bytes:
    """The CREATE_CHILD_SA we answer chose additional key exchanges: remember the sequence and return link1
    for its response's N(ADDITIONAL_KEY_EXCHANGE). `finish(secrets)` creates the SA after the last one."""
    begin(ike, target)
    return _new_link(ike, Pending(target, tuple(methods), finish, ike.now + FOLLOWUP_TIMEOUT))


def link_notify(link: bytes) -> wire.Payload:
    return notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, link)


def _new_link(ike, pending: Pending) -> bytes:
    link = ike.services.rng(LINK_LEN)
    ike.followups[link] = pending
    pending.deadline = ike.now + FOLLOWUP_TIMEOUT
    return link


def deadline(ike) -> float | None:
    return min((p.deadline for p in ike.followups.values()), default=None)


def expire(ike, now: float) -> None:
    """Forget sequences whose initiator went quiet (§2.2.4); their old SAs carry on."""
    for link, p in list(ike.followups.items()):
        if now >= p.deadline:
            del ike.followups[link]
            end(ike, p.target)
            ike.services.count("followup_expired")


# --- initiator ----------------------------------------------------------------------------------------------


def start(ike, inbound: Inbound, target, methods: Sequence[int], *, finish: Finish, fail: Fail) -> Status:
    """The CREATE_CHILD_SA response we read chose additional key exchanges: run them before anything else
    (the next request out is the first IKE_FOLLOWUP_KE). The caller's task is done; `finish` or `fail` follows."""
    n = inbound.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if n is None or not n.data:
        return fail("additional key exchanges chosen without N(ADDITIONAL_KEY_EXCHANGE)")
    begin(ike, target)
    ike.queue_first([FollowupKe(ike, initiator=True, target=target, methods=tuple(methods), link=n.data,
                                finish=finish, fail=fail)])
    return Status.DONE


class FollowupKe(Task):
    exchange = ExchangeType.IKE_FOLLOWUP_KE

    def __init__(self, ike, *, initiator: bool, target=None, methods: tuple[int, ...] = (), link: bytes = b"",
                 finish: Finish | None = None, fail: Fail | None = None):
        super().__init__(ike, initiator=initiator)
        self.target = target
        self.methods = methods
        self.link = link                            # initiator: the link to echo; responder: the next one
        self.finish = finish
        self.fail = fail
        self.secrets: list[bytes] = []              # initiator: SK(1)..SK(n) so far
        self.kex = None                             # initiator: this round's key exchange
        self.reply: wire.KE | None = None           # responder: KEr(n)

    def obsolete(self) -> bool:
        from xdpsec.ike.sa import State

        return self.ike.state != State.ESTABLISHED  # the IKE SA is going: so is what we were making on it

    # --- initiator ------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        if not self.initiator:
            self._build_response(out)
            return
        method = self.methods[len(self.secrets)]
        self.kex = initiate(method)
        out += [payload(PayloadType.KE, wire.KE(method, self.kex.public())), link_notify(self.link)]

    def process(self, inbound: Inbound) -> Status:
        if not self.initiator:
            self._process_request(inbound)
            return Status.DONE
        error = inbound.error()
        if error is not None:
            return self._fail(f"IKE_FOLLOWUP_KE refused: {notify_name(error)}")
        method = self.methods[len(self.secrets)]
        ke = inbound.first(PayloadType.KE)
        if ke is None or ke.group != method:
            return self._fail(f"IKE_FOLLOWUP_KE response without KE of method {method}")
        try:
            self.secrets.append(self.kex.shared(ke.data))
        except KeyExchangeError as e:
            return self._fail(f"additional key exchange {len(self.secrets) + 1}: {e}")
        self.ike.services.count("additional_ke")
        if len(self.secrets) < len(self.methods):
            n = inbound.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
            if n is None or not n.data:
                return self._fail("IKE_FOLLOWUP_KE response without the link to the next one")
            self.link = n.data
            return Status.RETRY  # the SA sends this task again, first, for the next method
        end(self.ike, self.target)
        self.finish(list(self.secrets))
        return Status.DONE

    def _fail(self, reason: str) -> Status:
        end(self.ike, self.target)
        return self.fail(reason)

    # --- responder ------------------------------------------------------------------------------------------

    def _process_request(self, inbound: Inbound) -> None:
        ike = self.ike
        n = inbound.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        pending = ike.followups.pop(n.data, None) if n is not None else None
        if pending is None:
            ike.services.count("followup_not_found")
            raise wire.IkeError(NotifyType.STATE_NOT_FOUND, "IKE_FOLLOWUP_KE with no link we know")  # §2.2.4
        ke = inbound.first(PayloadType.KE)
        try:
            if ke is None or ke.group != pending.method:
                raise KeyExchangeError(f"no KE of method {pending.method}")
            reply, secret = respond(pending.method, ke.data)
        except KeyExchangeError as e:
            end(ike, pending.target)  # the sequence is over; the old SA stays
            ike.services.count("followup_failed")
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"IKE_FOLLOWUP_KE: {e}") from None
        ike.services.count("additional_ke")
        self.reply = wire.KE(pending.method, reply)
        pending.secrets.append(secret)
        if len(pending.secrets) < len(pending.methods):
            self.link = _new_link(ike, pending)
            return
        end(ike, pending.target)
        pending.finish(list(pending.secrets))

    def _build_response(self, out: list[wire.Payload]) -> None:
        out.append(payload(PayloadType.KE, self.reply))
        if self.link:
            out.append(link_notify(self.link))
