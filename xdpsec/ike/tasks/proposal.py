"""SA payload proposals <-> our configured proposals, and choosing one (RFC 7296 §3.3, §3.3.6).

Our configuration holds concrete proposals (one algorithm per transform type). A peer's proposal is a set of
alternatives per type. As responder we take our proposals in our order of preference and accept the first
that the peer offers, answering with exactly one transform per type and the peer's proposal number (§3.3.6:
"the responder MUST choose a single suite"). As initiator we check that the answer is one of our proposals,
exactly. INTEG NONE (§3.3.3) and an absent ESN transform count as "no integrity" / "no ESN".
"""

from __future__ import annotations

from collections.abc import Sequence

from xdpsec.ike import wire
from xdpsec.ike.conf import ChildProposal, IkeProposal
from xdpsec.ike.consts import EncrId, EsnId, IntegId, KeId, ProtocolId, TransformType
from xdpsec.sa import Protocol

#: Ciphers with one key size announce no Key Length attribute (RFC 7634 §3).
_FIXED_KEY = frozenset({EncrId.CHACHA20_POLY1305, EncrId.NULL})
_PROTOCOL = {Protocol.ESP: ProtocolId.ESP, Protocol.AH: ProtocolId.AH}

Suite = tuple[wire.Transform, ...]


def _encr(encr: int, bits: int) -> wire.Transform:
    return wire.Transform(TransformType.ENCR, encr, None if encr in _FIXED_KEY or not bits else bits)


def ike_suite(p: IkeProposal) -> Suite:
    t = [_encr(p.encr, p.encr_key_bits), wire.Transform(TransformType.PRF, p.prf)]
    if p.integ is not None:
        t.append(wire.Transform(TransformType.INTEG, p.integ))
    t.append(wire.Transform(TransformType.KE, p.ke))
    return tuple(t)


def child_suite(p: ChildProposal, pfs: bool = True) -> Suite:
    """The transforms of a child proposal; without its KE group in IKE_AUTH, which has no KE payload (§1.2)."""
    tf = p.transform
    t = [] if tf.encr is None else [_encr(tf.encr, tf.encr_key_bits)]
    if tf.integ is not None:
        t.append(wire.Transform(TransformType.INTEG, tf.integ))
    if p.ke and pfs:
        t.append(wire.Transform(TransformType.KE, p.ke))
    t.append(wire.Transform(TransformType.ESN, EsnId.ESN if tf.esn else EsnId.NO_ESN))
    return tuple(t)


def ike_offer(proposals: Sequence[IkeProposal], spi: bytes = b"") -> wire.SA:
    """Our IKE proposals; `spi` is empty in IKE_SA_INIT and the new SA's 8-octet SPI in a rekey (§3.3.1)."""
    return wire.SA(tuple(wire.Proposal(i + 1, ProtocolId.IKE, spi, ike_suite(p))
                         for i, p in enumerate(proposals)))


def child_offer(proposals: Sequence[ChildProposal], spi: int, pfs: bool) -> wire.SA:
    return wire.SA(tuple(wire.Proposal(i + 1, _PROTOCOL[p.protocol], spi.to_bytes(4, "big"), child_suite(p, pfs))
                         for i, p in enumerate(proposals)))


def without_ke(sa: wire.SA) -> wire.SA:
    """The offer with KE transforms dropped: in IKE_AUTH a child SA uses the IKE SA's key exchange
    (§1.2), so groups an initiator lists there mean nothing (strongSwan strips them the same way)."""
    return wire.SA(tuple(wire.Proposal(p.num, p.protocol, p.spi,
                                       tuple(t for t in p.transforms if t.type != TransformType.KE))
                         for p in sa.proposals))


def _offered(p: wire.Proposal) -> dict[int, set[tuple[int, int | None]]]:
    """The peer's alternatives per transform type, with the "nothing" transforms left out."""
    out: dict[int, set[tuple[int, int | None]]] = {}
    for t in p.transforms:
        if (t.type == TransformType.INTEG and t.id == IntegId.NONE) or (t.type == TransformType.KE
                                                                        and t.id == KeId.NONE):
            continue
        out.setdefault(t.type, set()).add((t.id, t.key_length))
    if p.protocol in (ProtocolId.ESP, ProtocolId.AH) and TransformType.ESN not in out:
        out[TransformType.ESN] = {(EsnId.NO_ESN, None)}
    return out


def _fits(suite: Suite, offered: dict[int, set[tuple[int, int | None]]]) -> bool:
    wanted = {t.type: (t.id, t.key_length) for t in suite}
    return wanted.keys() == offered.keys() and all(wanted[k] in offered[k] for k in wanted)


def _exact(suite: Suite, p: wire.Proposal) -> bool:
    """Is the answered proposal exactly this suite: one transform per type (§3.3.6)?"""
    types = [t.type for t in p.transforms if not (t.type == TransformType.INTEG and t.id == IntegId.NONE)]
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
