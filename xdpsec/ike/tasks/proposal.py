"""SA payload proposals <-> our configured proposals, and choosing one (RFC 7296 §3.3, §3.3.6).

Our configuration holds concrete proposals (one algorithm per transform type). A peer's proposal is a set of
alternatives per type. As responder we take our proposals in our order of preference and accept the first
that the peer offers, answering with exactly one transform per type and the peer's proposal number (§3.3.6:
"the responder MUST choose a single suite"). As initiator we check that the answer is one of our proposals,
exactly. An absent ESN transform counts as "no ESN"; for the types that have a NONE transform (INTEG §3.3.3,
KE, and RFC 9370's ADDKE1..7, §2.2.1) an absent type and the NONE transform mean the same, so a peer offering
`ke1_mlkem768-ke1_none` matches our classic proposal as well as our hybrid one.

IKE rekeys and child SAs with PFS offer and match their ADDKE transforms like IKE_SA_INIT does; the additional
key exchanges then run over IKE_FOLLOWUP_KE (RFC 9370 §2.2.4, tasks/followup_ke.py). A peer that does not know
Transform Types 6..12 skips such a proposal (RFC 7296 §3.3.6) and picks a classic one if we offer it.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdpsec.ike import wire
from xdpsec.ike.conf import ChildProposal, IkeProposal
from xdpsec.ike.consts import EncrId, EsnId, ProtocolId, TransformType
from xdpsec.sa import Protocol

#: Ciphers with one key size announce no Key Length attribute (RFC 7634 §3).
_FIXED_KEY = frozenset({EncrId.CHACHA20_POLY1305, EncrId.NULL})
_PROTOCOL = {Protocol.ESP: ProtocolId.ESP, Protocol.AH: ProtocolId.AH}
#: Key exchange transform types: KE and RFC 9370's ADDKE1..ADDKE7 (Transform Types 6..12).
KE_TYPES = frozenset({TransformType.KE, *range(TransformType.ADDKE1, TransformType.ADDKE7 + 1)})
#: Types whose NONE transform (ID 0) equals leaving the type out.
_OPTIONAL = KE_TYPES | {TransformType.INTEG}
_NONE = (0, None)

Suite = tuple[wire.Transform, ...]


def _encr(encr: int, bits: int) -> wire.Transform:
    return wire.Transform(TransformType.ENCR, encr, None if encr in _FIXED_KEY or not bits else bits)


def ike_suite(p: IkeProposal) -> Suite:
    t = [_encr(p.encr, p.encr_key_bits), wire.Transform(TransformType.PRF, p.prf)]
    if p.integ is not None:
        t.append(wire.Transform(TransformType.INTEG, p.integ))
    t.append(wire.Transform(TransformType.KE, p.ke))
    t += [wire.Transform(TransformType.ADDKE1 + i, m) for i, m in enumerate(p.addke) if m]
    return tuple(t)


def child_suite(p: ChildProposal, pfs: bool = True) -> Suite:
    """The transforms of a child proposal; without its KE group in IKE_AUTH, which has no KE payload (§1.2)."""
    tf = p.transform
    t = [] if tf.encr is None else [_encr(tf.encr, tf.encr_key_bits)]
    if tf.integ is not None:
        t.append(wire.Transform(TransformType.INTEG, tf.integ))
    if p.ke and pfs:
        t.append(wire.Transform(TransformType.KE, p.ke))
    if pfs:
        t += [wire.Transform(TransformType.ADDKE1 + i, m) for i, m in enumerate(p.addke) if m]
    t.append(wire.Transform(TransformType.ESN, EsnId.ESN if tf.esn else EsnId.NO_ESN))
    return tuple(t)


def ike_offer(proposals: Sequence[IkeProposal], spi: bytes = b"") -> wire.SA:
    """Our IKE proposals; `spi` is empty in IKE_SA_INIT and the new SA's 8-octet SPI in a rekey (§3.3.1)."""
    return wire.SA(tuple(wire.Proposal(i + 1, ProtocolId.IKE, spi, ike_suite(p))
                         for i, p in enumerate(proposals)))


def additional_methods(addke: Sequence[int]) -> tuple[int, ...]:
    """The additional key exchanges to run, in Transform Type order, NONE left out (RFC 9370 §2.2.1)."""
    return tuple(m for m in addke if m)


def child_offer(proposals: Sequence[ChildProposal], spi: int, pfs: bool) -> wire.SA:
    return wire.SA(tuple(wire.Proposal(i + 1, _PROTOCOL[p.protocol], spi.to_bytes(4, "big"), child_suite(p, pfs))
                         for i, p in enumerate(proposals)))


def without_ke(sa: wire.SA) -> wire.SA:
    """The offer with KE transforms dropped: in IKE_AUTH a child SA uses the IKE SA's key exchange
    (§1.2), so groups an initiator lists there mean nothing (strongSwan strips them the same way)."""
    return wire.SA(tuple(wire.Proposal(p.num, p.protocol, p.spi,
                                       tuple(t for t in p.transforms if t.type not in KE_TYPES))
                         for p in sa.proposals))


def _offered(p: wire.Proposal) -> dict[int, set[tuple[int, int | None]]]:
    """The peer's alternatives per transform type; an optional type left out offers only NONE."""
    out: dict[int, set[tuple[int, int | None]]] = {}
    for t in p.transforms:
        out.setdefault(t.type, set()).add(_NONE if t.type in _OPTIONAL and t.id == 0 else (t.id, t.key_length))
    if p.protocol in (ProtocolId.ESP, ProtocolId.AH) and TransformType.ESN not in out:
        out[TransformType.ESN] = {(EsnId.NO_ESN, None)}
    return out


def _fits(suite: Suite, offered: dict[int, set[tuple[int, int | None]]]) -> bool:
    wanted = {t.type: (t.id, t.key_length) for t in suite}
    for ttype in wanted.keys() | offered.keys():
        none = {_NONE} if ttype in _OPTIONAL else set()
        if wanted.get(ttype, _NONE) not in offered.get(ttype, none):
            return False
    return True


def _exact(suite: Suite, p: wire.Proposal) -> bool:
    """Is the answered proposal exactly this suite: one transform per type (§3.3.6)?"""
    types = [t.type for t in p.transforms]
    return len(types) == len(set(types)) and _fits(suite, _offered(p))


def select(offer: wire.SA, ours: Sequence, suite, protocol: ProtocolId | None = None):
    """Responder: (our chosen proposal, the peer's proposal it matched) or None; our preference first."""
    for mine in ours:
        for theirs in offer.proposals:
            want = protocol if protocol is not None else _PROTOCOL[mine.protocol]
            if theirs.protocol == want and _fits(suite(mine), _offered(theirs)):
                return mine, theirs
    return None


def answer(num: int, protocol: int, spi: bytes, suite: Suite) -> wire.SA:
    return wire.SA((wire.Proposal(num, protocol, spi, suite),))


def accept(reply: wire.SA, ours: Sequence, suite, protocol: ProtocolId | None = None):
    """Initiator: (our proposal the responder chose, its proposal) or None if it is not one we offered."""
    if len(reply.proposals) != 1:
        return None
    theirs = reply.proposals[0]
    for mine in ours:
        want = protocol if protocol is not None else _PROTOCOL[mine.protocol]
        if theirs.protocol == want and _exact(suite(mine), theirs):
            return mine, theirs
    return None
