"""strongSwan proposal strings -> `Transform`, and back.

Users write algorithms the way swanctl.conf does: one proposal is a list of tokens joined by '-', each token
naming one transform: `aes128gcm16`, `aes256-sha384-esn`, `sha256` (AH). Parsing classifies every token by
looking it up in one table per transform type (encryption, integrity, ESN); tokens nobody knows are checked
against a table of refused algorithms first, so that `3des-sha1` is answered with the RFC that retired it
instead of "unknown". IKE proposals (`aes256gcm16-prfsha384-x25519`) will add PRF and key-exchange tables
and reuse the same tokenizer.

What we accept follows RFC 8221 (ESP and AH algorithm requirements): AES-GCM with a 16-byte ICV, ChaCha20-
Poly1305, AES-CBC with HMAC-SHA2, and ENCR_NULL with HMAC-SHA2 (a MUST in RFC 8221 §5, for integrity-only
ESP; `advice()` warns that it gives no confidentiality). Manual keying needs exactly one algorithm of each
type, so a proposal here names a single transform, not a set of alternatives.
"""

from __future__ import annotations

from xdpsec.sa import Encr, Integ, Transform


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

_GCM_SHORT_ICV = ("refused: AES-GCM with a {icv}-byte ICV is not implemented: RFC 8221 §5 recommends "
                  "ENCR_AES_GCM_16 (16-byte ICV) only; use aes{bits}gcm16")

# Tokens we recognise and refuse, with the reason. Checked before "unknown" so the user learns why.
_REFUSED: dict[str, str] = {
    "des": "refused: DES is 'MUST NOT' for ESP (RFC 8221 §5); use aes128gcm16",
    "3des": "refused: 3DES (ENCR_3DES) is 'SHOULD NOT' for ESP (RFC 8221 §5) and 'MUST NOT' for IKEv2 "
            "(RFC 8247 §2.1) and is not implemented; use aes128gcm16",
    "blowfish": "refused: Blowfish is 'MUST NOT' for ESP (RFC 8221 §5); use aes128gcm16",
    "md5": "refused: HMAC-MD5-96 is 'MUST NOT' (RFC 8221 §6); use sha256",
    "md5_128": "refused: HMAC-MD5-128 is 'MUST NOT' (RFC 8221 §6); use sha256",
    "sha1": "refused: HMAC-SHA1-96 is 'MUST-' in RFC 8221 §6 (expected to be demoted) and 'MUST NOT' as an "
            "IKEv2 PRF successor (RFC 8247 §3.2); xdpsec implements HMAC-SHA2 only: use sha256",
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


def _tokens(s: str, what: str) -> list[str]:
    tokens = s.strip().lower().split("-")
    if not all(tokens):
        raise ProposalError(f"{what} proposal {s!r} is empty or has an empty algorithm between '-'")
    return tokens


def _unknown(token: str, valid: list[str]) -> ProposalError:
    if token in _REFUSED:
        return ProposalError(f"{token}: {_REFUSED[token]}")
    return ProposalError(f"unknown algorithm {token!r}; valid names are: {', '.join(valid)}")


def _pick_one(found: list[str], kind: str, s: str) -> str | None:
    if len(found) > 1:
        raise ProposalError(f"{s!r} names {len(found)} {kind} algorithms ({', '.join(found)}); "
                            f"a manually keyed SA uses exactly one")
    return found[0] if found else None


def parse_esp(s: str) -> Transform:
    """One ESP proposal, e.g. ``aes128gcm16``, ``aes256-sha384-esn``, ``null-sha256``."""
    encrs, integs, esns = [], [], []
    for token in _tokens(s, "ESP"):
        if token in _ENCR:
            encrs.append(token)
        elif token in _INTEG:
            integs.append(token)
        elif token in _ESN:
            esns.append(token)
        else:
            raise _unknown(token, [*_ENCR, *_INTEG, *_ESN])
    encr_name = _pick_one(encrs, "encryption", s)
    integ_name = _pick_one(integs, "integrity", s)
    esn_name = _pick_one(esns, "ESN", s)
    if encr_name is None:
        raise ProposalError(f"ESP proposal {s!r} has no encryption algorithm; for integrity only write "
                            f"null-{integ_name or 'sha256'}, or use ah_proposals")
    encr, bits = _ENCR[encr_name]
    integ = _INTEG[integ_name] if integ_name else None
    if encr in (Encr.AES_GCM_16, Encr.CHACHA20_POLY1305) and integ is not None:
        raise ProposalError(f"{encr_name} is an AEAD cipher with its own ICV; remove '{integ_name}'")
    if encr not in (Encr.AES_GCM_16, Encr.CHACHA20_POLY1305) and integ is None:
        # Encryption without integrity leaves ESP open to active attacks, which is why RFC 8221 only
        # recommends authenticated encryption; ENCR_NULL without integrity would be no protection at all.
        raise ProposalError(f"{encr_name} needs an integrity algorithm, e.g. {encr_name}-sha256 "
                            f"(or use an AEAD cipher such as aes128gcm16)")
    return Transform(encr=encr, encr_key_bits=bits, integ=integ, esn=_ESN[esn_name] if esn_name else False)


def parse_ah(s: str) -> Transform:
    """One AH proposal, e.g. ``sha256`` or ``sha512-esn``: an integrity algorithm only (RFC 4302)."""
    integs, esns = [], []
    for token in _tokens(s, "AH"):
        if token in _INTEG:
            integs.append(token)
        elif token in _ESN:
            esns.append(token)
        elif token in _ENCR:
            raise ProposalError(f"AH does not encrypt: {token!r} belongs in esp_proposals")
        else:
            raise _unknown(token, [*_INTEG, *_ESN])
    integ_name = _pick_one(integs, "integrity", s)
    esn_name = _pick_one(esns, "ESN", s)
    if integ_name is None:
        raise ProposalError(f"AH proposal {s!r} has no integrity algorithm; e.g. sha256")
    return Transform(encr=None, integ=_INTEG[integ_name], esn=_ESN[esn_name] if esn_name else False)


_ENCR_NAMES = {Encr.AES_CBC: "aes{bits}", Encr.AES_GCM_16: "aes{bits}gcm16",
               Encr.CHACHA20_POLY1305: "chacha20poly1305", Encr.NULL: "null"}
_INTEG_NAMES = {Integ.HMAC_SHA2_256_128: "sha256", Integ.HMAC_SHA2_384_192: "sha384",
                Integ.HMAC_SHA2_512_256: "sha512"}


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


def advice(t: Transform) -> list[str]:
    """Warnings about an accepted transform (it is allowed, but the user should know)."""
    if t.encr == Encr.NULL:
        return ["ENCR_NULL gives integrity but no confidentiality (allowed by RFC 8221 §5 with integrity "
                "only); use aes128gcm16 if the traffic must be secret"]
    return []
