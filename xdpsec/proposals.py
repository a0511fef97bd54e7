"""strongSwan proposal strings -> transforms, and back: ESP/AH for manual keying and child SAs, and IKE SAs.

Users write algorithms the way swanctl.conf does: one proposal is a list of tokens joined by '-', each token
naming one transform: `aes128gcm16`, `aes256-sha384-esn`, `sha256` (AH), `aes256gcm16-prfsha384-x25519` (IKE).
Parsing classifies every token by looking it up in one table per transform type (encryption, integrity, PRF,
key exchange, ESN); tokens nobody knows are checked against tables of refused algorithms first, so that
`3des-sha1` is answered with the RFC that retired it instead of "unknown".

Manual keying needs exactly one algorithm of each type (`parse_esp`, `parse_ah`: one `Transform`). For IKE
(`parse_ike`) and child SAs (`parse_child`) several algorithms of one type are alternatives, as in strongSwan:
`aes128-aes256-sha256-x25519` expands to one `IkeProposal` per combination, in the order written (first
choice first), which is what selecting one transform of each type from an IKEv2 proposal means (RFC 7296
§3.3.6). Without a `prf...` token the PRF follows the integrity algorithm (sha256 -> prfsha256), strongSwan's
rule; AEAD ciphers have no integrity algorithm, so their proposals must name the PRF.

What we accept follows RFC 8221 for ESP and AH (AES-GCM with a 16-byte ICV, ChaCha20-Poly1305, AES-CBC with
HMAC-SHA2, ENCR_NULL with HMAC-SHA2, which `advice()` warns about) and RFC 8247 for IKEv2 (the same ciphers
minus NULL, HMAC-SHA2 PRFs, and MODP groups of 2048 bits and more, NIST ECP and Curve25519/448 groups).
Transform IDs are the IANA numbers of `xdpsec.ike.consts`.
"""

from __future__ import annotations

import difflib
import re
from itertools import product

from xdpsec.ike.conf import ChildProposal, IkeProposal
from xdpsec.ike.consts import EncrId, IntegId, KeId, PrfId
from xdpsec.sa import AEAD, Encr, Integ, Protocol, Transform


class ProposalError(ValueError):
    """A proposal string names an algorithm we refuse or do not know; the message says which and why."""


# Encryption tokens -> (transform, key bits). `aes128gcm128` is strongSwan's alias (ICV given in bits).
_ENCR: dict[str, tuple[Encr, int]] = {
    **{f"aes{bits}": (Encr.AES_CBC, bits) for bits in (128, 192, 256)},
    **{f"aes{bits}gcm16": (Encr.AES_GCM_16, bits) for bits in (128, 192, 256)},
    **{f"aes{bits}gcm128": (Encr.AES_GCM_16, bits) for bits in (128, 192, 256)},
    "chacha20poly1305": (Encr.CHACHA20_POLY1305, 256),  # RFC 7634: always a 256-bit key
    "null": (Encr.NULL, 0),
}
# IANA marks ENCR_NULL "not allowed" for IKEv2: the IKE SA always needs confidentiality.
_IKE_ENCR = {token: value for token, value in _ENCR.items() if value[0] != Encr.NULL}

# Integrity tokens, strongSwan's short and long names (RFC 4868 truncations).
_INTEG: dict[str, Integ] = {
    "sha256": Integ.HMAC_SHA2_256_128,
    "sha2_256": Integ.HMAC_SHA2_256_128,
    "sha384": Integ.HMAC_SHA2_384_192,
    "sha2_384": Integ.HMAC_SHA2_384_192,
    "sha512": Integ.HMAC_SHA2_512_256,
    "sha2_512": Integ.HMAC_SHA2_512_256,
}

_ESN: dict[str, bool] = {"esn": True, "noesn": False}

_PRF: dict[str, PrfId] = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}

# strongSwan's rule for a proposal without a PRF: the HMAC of the integrity algorithm, untruncated.
_PRF_OF_INTEG = {Integ.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256, Integ.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
                 Integ.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512}

# Key exchange methods (Transform Type 4), strongSwan's names; curve25519/curve448 are its aliases.
_KE: dict[str, KeId] = {
    "modp2048": KeId.MODP2048,  # RFC 8247 §2.4: MUST
    "modp3072": KeId.MODP3072,
    "modp4096": KeId.MODP4096,
    "ecp256": KeId.ECP256,      # RFC 8247 §2.4: SHOULD
    "ecp384": KeId.ECP384,
    "ecp521": KeId.ECP521,
    "x25519": KeId.CURVE25519,  # RFC 8247 §2.4: SHOULD (RFC 8031)
    "curve25519": KeId.CURVE25519,
    "x448": KeId.CURVE448,
    "curve448": KeId.CURVE448,
}

_GCM_SHORT_ICV = ("refused: AES-GCM with a {icv}-byte ICV is not implemented: RFC 8221 §5 recommends "
                  "ENCR_AES_GCM_16 (16-byte ICV) only; use aes{bits}gcm16")

# Tokens we recognise and refuse in ESP/AH proposals, with the reason (RFC 8221).
_REFUSED: dict[str, str] = {
    "des": "refused: DES is 'MUST NOT' for ESP (RFC 8221 §5); use aes128gcm16",
    "3des": "refused: 3DES (ENCR_3DES) is 'SHOULD NOT' for ESP (RFC 8221 §5), only 'MAY' for IKEv2 (RFC 8247 "
            "§2.1), and not implemented; use aes128gcm16",
    "blowfish": "refused: Blowfish is 'MUST NOT' for ESP (RFC 8221 §5); use aes128gcm16",
    "md5": "refused: HMAC-MD5-96 is 'MUST NOT' (RFC 8221 §6); use sha256",
    "md5_128": "refused: HMAC-MD5-128 is 'MUST NOT' (RFC 8221 §6); use sha256",
    "sha1": "refused: HMAC-SHA1-96 is 'MUST-' in RFC 8221 §6 (expected to be demoted); xdpsec implements "
            "HMAC-SHA2 only: use sha256",
    "sha": "refused: HMAC-SHA1-96 is 'MUST-' in RFC 8221 §6 (expected to be demoted); xdpsec implements "
           "HMAC-SHA2 only: use sha256",
    "sha1_160": "refused: HMAC-SHA1-160 is not in RFC 8221 §6; xdpsec implements HMAC-SHA2 only: use sha256",
    "aesxcbc": "refused: AES-XCBC-MAC-96 is only 'SHOULD' for IoT in RFC 8221 §6 and not implemented; "
               "use sha256",
    **{f"aes{bits}gcm{icv}": _GCM_SHORT_ICV.format(icv=icv // 8 if icv > 16 else icv, bits=bits)
       for bits in (128, 192, 256) for icv in (8, 12, 64, 96)},
    **{f"aes{bits}ccm{icv}": f"refused: AES-CCM is not implemented (RFC 8221 §5 lists ENCR_AES_CCM_8 as "
                             f"'SHOULD' for IoT only); use aes{bits}gcm16"
       for bits in (128, 192, 256) for icv in (8, 12, 16, 64, 96, 128)},
}

_WEAK_GROUP = "refused: {what} is '{status}' in RFC 8247 §2.4 (too small for today's attackers); use x25519 or " \
              "modp3072"

# Key exchange methods we refuse, in IKE proposals and as PFS groups of child proposals alike.
_KE_REFUSED: dict[str, str] = {
    "modp768": _WEAK_GROUP.format(what="group 1 (768-bit MODP)", status="MUST NOT"),
    "modp1024": _WEAK_GROUP.format(what="group 2 (1024-bit MODP)", status="SHOULD NOT"),
    "modp1536": _WEAK_GROUP.format(what="group 5 (1536-bit MODP)", status="SHOULD NOT"),
    "modp1024s160": _WEAK_GROUP.format(what="group 22 (1024-bit MODP, 160-bit subgroup)", status="SHOULD NOT"),
    "modp2048s224": _WEAK_GROUP.format(what="group 23 (2048-bit MODP, 224-bit subgroup)", status="SHOULD NOT"),
    "modp2048s256": _WEAK_GROUP.format(what="group 24 (2048-bit MODP, 256-bit subgroup)", status="SHOULD NOT"),
    **{f"mlkem{n}": f"ML-KEM-{n} is only supported as an additional key exchange on top of a classic group "
                    f"(RFC 9370 hybrid): write e.g. x25519-ke1_mlkem{max(n, 768)}" for n in (512, 768, 1024)},
}

# Tokens we recognise and refuse in IKE proposals (RFC 8247, the IKEv2 counterpart of RFC 8221).
_IKE_REFUSED: dict[str, str] = {
    **_KE_REFUSED,
    "des": "refused: ENCR_DES is 'MUST NOT' for IKEv2 (RFC 8247 §2.1); use aes256gcm16",
    "3des": "refused: ENCR_3DES is only 'MAY' for IKEv2 (RFC 8247 §2.1, down from RFC 4307's MUST-): its "
            "64-bit block wears out a key quickly, and it is not implemented; use aes256gcm16 or aes128",
    "null": "refused: ENCR_NULL is not allowed for IKEv2 (IANA Transform Type 1): the IKE SA must be "
            "confidential; use aes256gcm16",
    "md5": "refused: AUTH_HMAC_MD5_96 is 'MUST NOT' for IKEv2 (RFC 8247 §2.3); use sha256",
    "prfmd5": "refused: PRF_HMAC_MD5 is 'MUST NOT' for IKEv2 (RFC 8247 §2.2); use prfsha256",
    "sha1": "refused: AUTH_HMAC_SHA1_96 is 'MUST-' in RFC 8247 §2.3 (kept for old peers, expected to be "
            "demoted); xdpsec implements HMAC-SHA2 only: use sha256",
    "sha": "refused: AUTH_HMAC_SHA1_96 is 'MUST-' in RFC 8247 §2.3 (kept for old peers, expected to be "
           "demoted); xdpsec implements HMAC-SHA2 only: use sha256",
    "prfsha1": "refused: PRF_HMAC_SHA1 is 'MUST-' in RFC 8247 §2.2 (kept for old peers, expected to be "
               "demoted); xdpsec implements HMAC-SHA2 only: use prfsha256",
    "aesxcbc": "refused: AUTH_AES_XCBC_96 is 'SHOULD' for IoT only (RFC 8247 §2.3) and not implemented; "
               "use sha256",
    "prfaesxcbc": "refused: PRF_AES128_XCBC is 'SHOULD' for IoT only (RFC 8247 §2.2) and not implemented; "
                  "use prfsha256",
    "prfaescmac": "refused: PRF_AES128_CMAC is 'SHOULD' for IoT only (RFC 8247 §2.2) and not implemented; "
                  "use prfsha256",
    **{f"aes{bits}gcm{icv}": f"refused: AES-GCM with a {icv // 8 if icv > 16 else icv}-octet ICV: RFC 8247 "
                             f"§2.1 recommends only the 16-octet ICV, the only one implemented; use "
                             f"aes{bits}gcm16"
       for bits in (128, 192, 256) for icv in (8, 12, 64, 96)},
    **{f"aes{bits}ccm{icv}": f"refused: AES-CCM is 'SHOULD' for IoT only (RFC 8247 §2.1) and not "
                             f"implemented; use aes{bits}gcm16"
       for bits in (128, 192, 256) for icv in (8, 12, 16, 64, 96, 128)},
}

# Additional key exchanges (RFC 9370 §2.2.1), strongSwan 6's `ke1_mlkem768`: ADDKE1..7 are Transform Types 6..12,
# `keN_none` makes type N optional (the NONE transform, ID 0). ML-KEM-512 (category 1) is left out on purpose.
ADDKE_SLOTS = 7
_ADDKE_METHODS = {"mlkem768": KeId.ML_KEM_768, "mlkem1024": KeId.ML_KEM_1024, "none": KeId.NONE}
_ADDKE: list[dict[str, KeId]] = [{f"ke{n}_{name}": m for name, m in _ADDKE_METHODS.items()}
                                 for n in range(1, ADDKE_SLOTS + 1)]
_ADDKE_RE = re.compile(r"ke([0-9]+)_([a-z0-9]+)")

# Algorithms that belong to another kind of proposal: answered with where they go.
_PRF_ELSEWHERE = {t: f"{t!r} is a PRF, which only IKE proposals (proposals = [...]) have" for t in _PRF}
_KE_ELSEWHERE = {t: f"{t!r} is a key exchange method: PFS needs IKE (a child without a [manual] table)"
                 for t in _KE}
_ESN_ELSEWHERE = {t: f"{t!r}: extended sequence numbers belong to ESP/AH (esp_proposals), not to the IKE SA"
                  for t in _ESN}

#: What an IKE connection proposes without `proposals`: AEAD first, then RFC 8247's MUST algorithms
#: (AES-CBC, HMAC-SHA2-256, group 14) for peers that offer nothing else.
DEFAULT_IKE_PROPOSALS = (
    "aes256gcm16-prfsha384-x25519",
    "aes128gcm16-prfsha256-x25519",
    "chacha20poly1305-prfsha256-x25519",
    "aes256gcm16-prfsha384-ecp384",
    "aes128-sha256-ecp256",
    "aes128-sha256-modp3072",
    "aes128-sha256-modp2048",
)

#: What an IKE child proposes without esp_proposals (no PFS group, as strongSwan's default).
DEFAULT_ESP_PROPOSALS = ("aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes128-sha256")

#: Proposal Num is one octet (RFC 7296 §3.3.1): no SA payload holds more proposals than this. One string
#: expands to at most 216 (3 AES-CBC x 3 integrity x 3 PRFs x 8 groups); a list of strings can exceed it.
MAX_PROPOSALS = 64  # what xdpsec.ike.wire sends and accepts in one SA payload (bounded work on input)


def _tokens(s: str, what: str) -> list[str]:
    tokens = s.strip().lower().split("-")
    if not all(tokens):
        raise ProposalError(f"{what} proposal {s!r} is empty or has an empty algorithm between '-'")
    return tokens


def _unknown(token: str, tables: dict[str, dict], refused: dict[str, str],
             elsewhere: dict[str, str]) -> ProposalError:
    if token in refused:
        return ProposalError(f"{token}: {refused[token]}")
    if token in elsewhere:
        return ProposalError(elsewhere[token])
    if _ADDKE_RE.fullmatch(token):
        if any(token in table for table in _ADDKE):
            return ProposalError(f"{token}: additional key exchanges belong in IKE and IKE child proposals, not "
                                 f"in manually keyed SAs")
        return ProposalError(f"{token}: additional key exchanges (RFC 9370) are ke1_ to ke{ADDKE_SLOTS}_ with "
                             f"{', '.join(_ADDKE_METHODS)}")
    # A typo is the likely cause: name the closest algorithm, then every valid one by transform type.
    close = difflib.get_close_matches(token, [name for table in tables.values() for name in table], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    valid = "; ".join(f"{kind}: {', '.join(table)}" for kind, table in tables.items())
    return ProposalError(f"unknown algorithm {token!r}; {hint}valid names are {valid}")


def _classify(s: str, what: str, tables: dict[str, dict], refused: dict[str, str],
              elsewhere: dict[str, str]) -> dict[str, list[str]]:
    """Tokens of `s` by transform type (the keys of `tables`), in order, without repeating one algorithm."""
    found: dict[str, list[str]] = {kind: [] for kind in tables}
    for token in _tokens(s, what):
        kind = next((k for k, table in tables.items() if token in table), None)
        if kind is None:
            raise _unknown(token, tables, refused, elsewhere)
        if all(tables[kind][seen] != tables[kind][token] for seen in found[kind]):
            found[kind].append(token)  # `sha256-sha2_256` names one algorithm, not two alternatives
    return found


def _pick_one(found: list[str], kind: str, s: str) -> str | None:
    if len(found) > 1:
        raise ProposalError(f"{s!r} names {len(found)} {kind} algorithms ({', '.join(found)}); "
                            f"a manually keyed SA uses exactly one")
    return found[0] if found else None


def _check_aead_split(encrs: list[str], s: str) -> list[str]:
    """The AEAD ciphers of `encrs`, which must be all or none of them (RFC 7296 §3.3)."""
    aead = [e for e in encrs if _ENCR[e][0] in AEAD]
    if aead and len(aead) != len(encrs):
        plain = [e for e in encrs if e not in aead]
        raise ProposalError(f"{s!r} mixes AEAD ciphers ({', '.join(aead)}) with others ({', '.join(plain)}): "
                            f"an AEAD proposal has no integrity algorithm (RFC 7296 §3.3); write two proposals")
    return aead


def _esp_transforms(found: dict[str, list[str]], s: str) -> list[Transform]:
    encrs, integs = found["encryption"], found["integrity"]
    esns = [_ESN[t] for t in found["ESN"]] or [False]
    if not encrs:
        raise ProposalError(f"ESP proposal {s!r} has no encryption algorithm; for integrity only write "
                            f"null-{integs[0] if integs else 'sha256'}, or use ah_proposals")
    if aead := _check_aead_split(encrs, s):
        if integs:
            raise ProposalError(f"{aead[0]} is an AEAD cipher with its own ICV; remove '{integs[0]}'")
    elif not integs:
        # Encryption without integrity leaves ESP open to active attacks, which is why RFC 8221 only
        # recommends authenticated encryption; ENCR_NULL without integrity would be no protection at all.
        raise ProposalError(f"{encrs[0]} needs an integrity algorithm, e.g. {encrs[0]}-sha256 "
                            f"(or use an AEAD cipher such as aes128gcm16)")
    return [Transform(encr=_ENCR[e][0], encr_key_bits=_ENCR[e][1], integ=_INTEG[i] if i else None, esn=esn)
            for e, i, esn in product(encrs, integs or [None], esns)]


def _ah_transforms(found: dict[str, list[str]], s: str) -> list[Transform]:
    if not found["integrity"]:
        raise ProposalError(f"AH proposal {s!r} has no integrity algorithm; e.g. sha256")
    return [Transform(encr=None, integ=_INTEG[i], esn=esn)
            for i, esn in product(found["integrity"], [_ESN[t] for t in found["ESN"]] or [False])]


_ESP_TABLES = {"encryption": _ENCR, "integrity": _INTEG, "ESN": _ESN}
_AH_TABLES = {"integrity": _INTEG, "ESN": _ESN}
_AH_ELSEWHERE = {t: f"AH does not encrypt: {t!r} belongs in esp_proposals" for t in _ENCR}


def parse_esp(s: str) -> Transform:
    """One manually keyed ESP proposal, e.g. ``aes128gcm16``, ``aes256-sha384-esn``, ``null-sha256``."""
    found = _classify(s, "ESP", _ESP_TABLES, _REFUSED, {**_PRF_ELSEWHERE, **_KE_ELSEWHERE})
    for kind, tokens in found.items():
        _pick_one(tokens, kind, s)
    return _esp_transforms(found, s)[0]


def parse_ah(s: str) -> Transform:
    """One manually keyed AH proposal, e.g. ``sha256`` or ``sha512-esn``: an integrity algorithm only (RFC 4302)."""
    found = _classify(s, "AH", _AH_TABLES, _REFUSED, {**_AH_ELSEWHERE, **_PRF_ELSEWHERE, **_KE_ELSEWHERE})
    for kind, tokens in found.items():
        _pick_one(tokens, kind, s)
    return _ah_transforms(found, s)[0]


def parse_child(s: str, protocol: Protocol) -> list[ChildProposal]:
    """A child SA proposal with its alternatives: ``aes128gcm16-aes256gcm16``, ``aes128-sha256-modp3072-esn``.

    A key exchange method (`x25519`) asks for PFS: a fresh key exchange when the child is created or
    rekeyed with CREATE_CHILD_SA (RFC 7296 §1.3.1); several are alternatives like the other algorithms.
    """
    refused = {**_REFUSED, **_KE_REFUSED}
    if protocol == Protocol.ESP:
        found = _classify(s, "ESP", {**_ESP_TABLES, **_CHILD_KE_TABLES}, refused, _PRF_ELSEWHERE)
        transforms = _esp_transforms(found, s)
    else:
        found = _classify(s, "AH", {**_AH_TABLES, **_CHILD_KE_TABLES}, refused, {**_AH_ELSEWHERE, **_PRF_ELSEWHERE})
        transforms = _ah_transforms(found, s)
    addkes = _addke_choices(found)
    if not found["key exchange"] and addkes != [()]:
        # RFC 9370 §2.2.4: the additional key exchanges of CREATE_CHILD_SA follow its KE payload; without a
        # key exchange method (no PFS) there is none to follow.
        raise ProposalError(f"{s!r} has additional key exchanges but no key exchange method: PFS needs one "
                            f"first, e.g. aes256gcm16-x25519-ke1_mlkem768")
    groups = [_KE[t] for t in found["key exchange"]] or [None]
    return list(dict.fromkeys(ChildProposal(protocol, t, ke, addke if ke is not None else ())
                              for t, ke, addke in product(transforms, groups, addkes)))


#: What a child proposal may name besides its ESP/AH algorithms: PFS (RFC 7296 §1.3.1), hybrid with RFC 9370
#: additional key exchanges run over IKE_FOLLOWUP_KE (§2.2.4).
_CHILD_KE_TABLES = {"key exchange": _KE,
                    **{f"additional key exchange {n}": table for n, table in enumerate(_ADDKE, 1)}}
_IKE_TABLES = {"encryption": _IKE_ENCR, "integrity": _INTEG, "PRF": _PRF, "key exchange": _KE,
               **{f"additional key exchange {n}": table for n, table in enumerate(_ADDKE, 1)}}


def parse_ike(s: str) -> list[IkeProposal]:
    """An IKE SA proposal with its alternatives: ``aes256gcm16-prfsha384-x25519``, ``aes128-sha256-modp3072``."""
    found = _classify(s, "IKE", _IKE_TABLES, _IKE_REFUSED, _ESN_ELSEWHERE)
    encrs, integs, prfs, groups = (found[k] for k in list(_IKE_TABLES)[:4])
    if not encrs:
        raise ProposalError(f"IKE proposal {s!r} has no encryption algorithm; e.g. aes256gcm16-prfsha384-x25519")
    if not groups:
        raise ProposalError(f"IKE proposal {s!r} has no key exchange method, which every IKE SA needs (RFC 7296 "
                            f"§3.3.3); add one, e.g. {s.strip()}-x25519")
    if aead := _check_aead_split(encrs, s):
        if integs:
            raise ProposalError(f"{aead[0]} is an AEAD cipher with its own ICV (RFC 5282 §8); remove "
                                f"'{integs[0]}'")
        if not prfs:
            raise ProposalError(f"{aead[0]} is an AEAD cipher, so no integrity algorithm implies the PRF: name "
                                f"one, e.g. {aead[0]}-prfsha256-{groups[0]}")
    elif not integs:
        raise ProposalError(f"{encrs[0]} needs an integrity algorithm, e.g. {encrs[0]}-sha256-{groups[0]} "
                            f"(or use an AEAD cipher such as aes256gcm16 with a PRF)")
    integ_ids = [_INTEG[i] for i in integs] or [None]
    prf_ids = [_PRF[p] for p in prfs] or list(dict.fromkeys(_PRF_OF_INTEG[i] for i in integ_ids if i))
    proposals = [IkeProposal(encr=EncrId(_ENCR[e][0]), encr_key_bits=_ENCR[e][1],
                             integ=IntegId(i) if i is not None else None, prf=prf, ke=_KE[g], addke=addke)
                 for e, i, prf, g, addke in product(encrs, integ_ids, prf_ids, groups, _addke_choices(found))]
    return list(dict.fromkeys(proposals))  # `ke1_none` alone adds nothing: the same proposal twice


def _addke_choices(found: dict[str, list[str]]) -> list[tuple[int, ...]]:
    """Every combination of the additional key exchanges named, as IkeProposal.addke tuples (no trailing NONE),
    the first-named methods first: `ke1_mlkem768-ke1_none` is (36,) then ()."""
    slots = []
    for n, table in enumerate(_ADDKE, 1):
        tokens = found[f"additional key exchange {n}"]
        slots.append([int(table[t]) for t in tokens] or [int(KeId.NONE)])
    choices = [tuple(combo) for combo in product(*slots)]
    return list(dict.fromkeys(_strip_none(c) for c in choices))


def _strip_none(addke: tuple[int, ...]) -> tuple[int, ...]:
    while addke and addke[-1] == KeId.NONE:
        addke = addke[:-1]
    return addke


_ENCR_NAMES = {Encr.AES_CBC: "aes{bits}", Encr.AES_GCM_16: "aes{bits}gcm16",
               Encr.CHACHA20_POLY1305: "chacha20poly1305", Encr.NULL: "null"}
_INTEG_NAMES = {Integ.HMAC_SHA2_256_128: "sha256", Integ.HMAC_SHA2_384_192: "sha384",
                Integ.HMAC_SHA2_512_256: "sha512"}
_PRF_NAMES = {prf: token for token, prf in _PRF.items()}
_KE_NAMES = {KeId.MODP2048: "modp2048", KeId.MODP3072: "modp3072", KeId.MODP4096: "modp4096",
             KeId.ECP256: "ecp256", KeId.ECP384: "ecp384", KeId.ECP521: "ecp521", KeId.CURVE25519: "x25519",
             KeId.CURVE448: "x448"}


def format_transform(t: Transform) -> str:
    """The canonical strongSwan-style name: ``aes128gcm16``, ``aes256-sha384-esn``, ``sha256`` for AH."""
    parts = []
    if t.encr is not None:
        parts.append(_ENCR_NAMES[t.encr].format(bits=t.encr_key_bits))
    if t.integ is not None:
        parts.append(_INTEG_NAMES[t.integ])
    if t.esn:
        parts.append("esn")  # noesn is the default and, as in strongSwan's output, not written
    return "-".join(parts)


def format_child(p: ChildProposal) -> str:
    """``aes128gcm16-x25519[-ke1_mlkem768]``: the transform and the PFS groups, if any."""
    return "-".join([format_transform(p.transform), *([_KE_NAMES[KeId(p.ke)]] if p.ke is not None else []),
                     *_addke_names(p.addke)])


def _addke_names(addke: tuple[int, ...]) -> list[str]:
    names = {m: name for name, m in _ADDKE_METHODS.items()}
    return [f"ke{n}_{names[KeId(m)]}" for n, m in enumerate(addke, 1) if m != KeId.NONE]


def format_ike(p: IkeProposal) -> str:
    """``aes256gcm16-prfsha384-x25519[-ke1_mlkem768]``; the PRF is left out when the integrity algorithm
    implies it."""
    parts = [_ENCR_NAMES[Encr(p.encr)].format(bits=p.encr_key_bits)]
    if p.integ is not None:
        parts.append(_INTEG_NAMES[Integ(p.integ)])
    if p.integ is None or _PRF_OF_INTEG[Integ(p.integ)] != p.prf:
        parts.append(_PRF_NAMES[PrfId(p.prf)])
    parts.append(_KE_NAMES[KeId(p.ke)])
    return "-".join([*parts, *_addke_names(p.addke)])


def advice(t: Transform) -> list[str]:
    """Warnings about an accepted transform (it is allowed, but the user should know)."""
    if t.encr == Encr.NULL:
        return ["ENCR_NULL gives integrity but no confidentiality (allowed by RFC 8221 §5 with integrity "
                "only); use aes128gcm16 if the traffic must be secret"]
    return []
