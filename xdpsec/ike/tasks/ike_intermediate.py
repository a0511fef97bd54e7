"""IKE_INTERMEDIATE (RFC 9242) carrying RFC 9370's additional key exchanges: the post-quantum half of a hybrid.

When IKE_SA_INIT chose a proposal with ADDKE transforms (Transform Types 6..12, e.g. x25519 + ML-KEM-768), one
IKE_INTERMEDIATE exchange per additional key exchange follows it, in ADDKE order, before IKE_AUTH:

    HDR(IKE_INTERMEDIATE, MID n), SK {KEi(n)}  -->
                              <--  HDR(IKE_INTERMEDIATE, MID n), SK {KEr(n)}

For ML-KEM, KEi(n) is the initiator's encapsulation key and KEr(n) the responder's ciphertext
(xdpsec/crypto/kem.py). Each exchange is protected with the keys of the one before (IKE_SA_INIT's for the
first); once it is done, both sides replace every key of the IKE SA, SPIs and nonces unchanged (RFC 9370 §2.2.2):

    SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
    {SK_d(n) | SK_ai(n) | SK_ar(n) | SK_ei(n) | SK_er(n) | SK_pi(n) | SK_pr(n)} = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)

The responder switches after its response has gone out (`IkeSA.next_crypto`), the initiator when it has read it.

IKE_AUTH must also sign what the IKE_INTERMEDIATE messages said (RFC 9242 §3.3.2), because nothing else
authenticates them: each side chains a PRF over every IKE_INTERMEDIATE message, its own and the peer's,

    IntAuth_[i|r](n) = prf(SK_p[i|r](n-1), IntAuth_[i|r](n-1) | A | P)

with the keys that protected that message. A is the message from the IKE header through the Encrypted payload's
generic header with both Length fields counting only the plaintext (as if there were no IV, padding or ICV),
P the inner payloads in clear. Then InitiatorSignedOctets and ResponderSignedOctets (RFC 7296 §2.15) get

    IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID      (IKE_AUTH_MID: the IKE_AUTH request's Message ID)

appended (`int_auth`, used by tasks/ike_auth.py). One `IkeIntermediate` task runs all exchanges of the
initiator: it answers RETRY until the last one is done, so the SA runs it again before IKE_AUTH.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdpsec.crypto.dh import KeyExchangeError
from xdpsec.crypto.kem import initiate, respond
from xdpsec.crypto.prf import Prf
from xdpsec.ike import wire
from xdpsec.ike.consts import ExchangeType, HeaderFlag, NotifyType, PayloadType
from xdpsec.ike.events import Failure
from xdpsec.ike.keys import rekey_skeyseed, split_ike_keys
from xdpsec.ike.tasks import Inbound, Status, Task, notify_name, payload

#: RFC 9242 §3.3.2: IKE_AUTH_MID is a four-octet Message ID.
_MID_LEN = 4
#: IKE header Length field (RFC 7296 §3.1) and generic payload header Payload Length (§3.2) offsets.
_HEADER_LENGTH_AT, _GENERIC_LEN = 24, 4


@dataclass
class Progress:
    """The additional key exchanges of one IKE SA and what IKE_AUTH must sign about them. Never logged."""

    methods: tuple[int, ...]  # ADDKE methods in Transform Type order, NONE left out (RFC 9370 §2.2.1)
    done: int = 0             # additional key exchanges completed
    exchanges: int = 0        # IKE_INTERMEDIATE exchanges completed (the Message ID of the latest)
    int_auth_i: bytes = field(default=b"", repr=False)
    int_auth_r: bytes = field(default=b"", repr=False)

    @property
    def pending(self) -> bool:
        return self.done < len(self.methods)

    @property
    def method(self) -> int:
        return self.methods[self.done]


def start(ike, proposal) -> None:
    """IKE_SA_INIT chose `proposal`: plan its additional key exchanges, if it has any."""
    methods = tuple(m for m in proposal.addke if m)
    ike.intermediate = Progress(methods) if methods else None


def pending(ike) -> bool:
    """Are additional key exchanges still to run before IKE_AUTH may?"""
    return ike.intermediate is not None and ike.intermediate.pending


def int_auth(ike) -> bytes:
    """IntAuth for the signed octets of IKE_AUTH (RFC 9242 §3.3.2); empty when no IKE_INTERMEDIATE took place.
    The IKE_AUTH request follows the last IKE_INTERMEDIATE exchange, so its Message ID is one more."""
    p = ike.intermediate
    if p is None or not p.exchanges:
        return b""
    return p.int_auth_i + p.int_auth_r + (p.exchanges + 1).to_bytes(_MID_LEN, "big")


def authenticated_octets(aad: bytes, plain: bytes) -> bytes:
    """A | P of one IKE_INTERMEDIATE message (RFC 9242 §3.3.2, figure 1): `aad` is the message through the SK
    payload's generic header as sent (RFC 5282 §5.1's associated data), `plain` the inner payloads."""
    if len(aad) < wire.IKE_HEADER_LEN + _GENERIC_LEN:
        raise ValueError("associated data shorter than the IKE and SK headers")
    sk_len = (_GENERIC_LEN + len(plain)).to_bytes(2, "big")
    total = (len(aad) + len(plain)).to_bytes(4, "big")
    return (aad[:_HEADER_LENGTH_AT] + total + aad[_HEADER_LENGTH_AT + 4:-2] + sk_len) + plain


def sent_octets(ike, msg_id: int, response: bool, payloads: list[wire.Payload]) -> bytes:
    """A | P of a message we send, from its header fields and payloads: what `IkeSA.encode` protects."""
    first, plain = wire.encode_payloads(payloads)
    flags = (HeaderFlag.INITIATOR if ike.initiator else 0) | (HeaderFlag.RESPONSE if response else 0)
    header = wire.Message(ike.ispi.to_bytes(8, "big"), ike.rspi.to_bytes(8, "big"), ExchangeType.IKE_INTERMEDIATE,
                          flags, msg_id, (payload(PayloadType.SK, wire.Encrypted(first, b"")),))
    return authenticated_octets(wire.encode(header), plain)


def received_octets(inbound: Inbound) -> bytes:
    """A | P of a message we received. A reassembled one (RFC 7383) counts as if it came unfragmented."""
    if inbound.aad:
        return authenticated_octets(inbound.aad, inbound.plain)
    msg = inbound.msg
    first = inbound.payloads[0].type if inbound.payloads else PayloadType.NONE
    header = wire.Message(msg.ispi, msg.rspi, msg.exchange, msg.flags, msg.msg_id,
                          (payload(PayloadType.SK, wire.Encrypted(first, b"")),))
    return authenticated_octets(wire.encode(header), inbound.plain)


def _chain(ike, of_initiator: bool, octets: bytes) -> None:
    """IntAuth_[i|r](n) = prf(SK_p[i|r](n-1), IntAuth_[i|r](n-1) | A | P), with the keys still in use."""
    keys, p = ike.crypto.keys, ike.intermediate
    prf = Prf(ike.crypto.proposal.prf)
    if of_initiator:
        p.int_auth_i = prf(keys.sk_pi, p.int_auth_i + octets)
    else:
        p.int_auth_r = prf(keys.sk_pr, p.int_auth_r + octets)


def next_crypto(ike, shared: bytes):
    """The IKE SA's keys after an additional key exchange with secret SK(n) (RFC 9370 §2.2.2)."""
    from xdpsec.ike.sa import Crypto

    c = ike.crypto
    p = c.proposal
    seed = rekey_skeyseed(Prf(p.prf), c.keys.sk_d, shared, ike.ni, ike.nr)  # the same formula as §2.18
    keys = split_ike_keys(p.prf, p.encr, p.encr_key_bits, p.integ, seed, ike.ni, ike.nr, ike.ispi, ike.rspi)
    return Crypto.create(p, keys, ike.initiator)


class IkeIntermediate(Task):
    exchange = ExchangeType.IKE_INTERMEDIATE

    def __init__(self, ike, *, initiator: bool):
        super().__init__(ike, initiator=initiator)
        self.kex = None                           # initiator: this round's decapsulation key (or DH key)
        self.request: list[wire.Payload] = []     # initiator: what we sent, for IntAuth_i
        self.reply = b""                          # responder: KEr(n) data
        self.shared = b""                         # responder: SK(n)
        self.msg_id = 0                           # responder: the request's Message ID

    def obsolete(self) -> bool:
        """Queued by the manager before IKE_AUTH: not sent when IKE_SA_INIT chose no additional exchange."""
        return not pending(self.ike)

    # --- initiator ------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        if not self.initiator:
            self._build_response(out)
            return
        method = self.ike.intermediate.method
        self.kex = initiate(method)
        out.append(payload(PayloadType.KE, wire.KE(method, self.kex.public())))
        self.request = list(out)

    def process(self, inbound: Inbound) -> Status:
        if not self.initiator:
            self._process_request(inbound)
            return Status.DONE
        ike, p = self.ike, self.ike.intermediate
        error = inbound.error()
        if error is not None:
            return self._fail(f"IKE_INTERMEDIATE refused: {notify_name(error)}")
        ke = inbound.first(PayloadType.KE)
        if ke is None or ke.group != p.method:
            return self._fail(f"IKE_INTERMEDIATE response without KE of method {p.method}")
        try:
            shared = self.kex.shared(ke.data)
        except KeyExchangeError as e:
            return self._fail(f"additional key exchange {p.done + 1}: {e}")
        _chain(ike, True, sent_octets(ike, inbound.msg.msg_id, False, self.request))
        _chain(ike, False, received_octets(inbound))
        ike.crypto = next_crypto(ike, shared)
        p.done += 1
        p.exchanges = inbound.msg.msg_id
        ike.services.count("additional_ke")
        return Status.RETRY if p.pending else Status.DONE

    def _fail(self, reason: str) -> Status:
        self.ike.services.emit(Failure(self.ike.name, reason))
        self.ike.die(reason)
        return Status.FAILED

    # --- responder ------------------------------------------------------------------------------------------

    def _process_request(self, inbound: Inbound) -> None:
        ike, p = self.ike, self.ike.intermediate
        if p is None:
            # RFC 9242 §3: only after both sent INTERMEDIATE_EXCHANGE_SUPPORTED, which for us means ADDKE chosen.
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, "IKE_INTERMEDIATE without additional key exchanges")
        ke = inbound.first(PayloadType.KE)
        if not p.pending:
            if ke is not None:
                raise wire.IkeError(NotifyType.INVALID_SYNTAX, "KE after the last additional key exchange")
        elif ke is None or ke.group != p.method:
            # RFC 9370 §2.2.2: the KE must carry the method negotiated for this round.
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"IKE_INTERMEDIATE without KE of method {p.method}")
        else:
            try:
                self.reply, self.shared = respond(p.method, ke.data)
            except KeyExchangeError as e:
                raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"additional key exchange: {e}") from None
        _chain(ike, True, received_octets(inbound))
        self.msg_id = inbound.msg.msg_id

    def _build_response(self, out: list[wire.Payload]) -> None:
        ike, p = self.ike, self.ike.intermediate
        if self.reply:
            out.append(payload(PayloadType.KE, wire.KE(p.method, self.reply)))
        _chain(ike, False, sent_octets(ike, self.msg_id, True, out))
        p.exchanges = self.msg_id
        if self.reply:
            ike.next_crypto = next_crypto(ike, self.shared)  # after this response leaves (module docstring)
            p.done += 1
            ike.services.count("additional_ke")
