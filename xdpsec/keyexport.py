"""Export of ESP and IKE keys in Wireshark's own table formats, for decrypting captures while debugging.

Off unless the configuration names a directory (``[debug] key_export``). Like strongSwan's save-keys plugin it
appends to two files that Wireshark reads from a profile directory, or that are handed to tshark one record at a
time with ``-o uat:esp_sa:RECORD`` / ``-o uat:ikev2_decryption_table:RECORD``:

``esp_sa``
    One record per SA (Wireshark's epan/dissectors/packet-ipsec.c, ``esp_uat_flds``): protocol ("IPv4" or
    "IPv6"), source and destination of the outer header, SPI as ``0x%08x`` (matched with ``strtoul``), the
    encryption algorithm by its name in ``esp_encryption_type_vals``, its key in hex after ``0x``, the
    authentication algorithm by its name in ``esp_authentication_type_vals`` and its key; every field quoted.
    AES-GCM's key is the cipher key followed by the 4-octet salt, exactly the KEYMAT of RFC 4106 §8.1 (the
    dissector splits ``esp_salt_len = 4`` off the end); the ICV length comes from the algorithm's name, so its
    authentication is "NULL".
``ikev2_decryption_table``
    One record per IKE SA (epan/dissectors/packet-isakmp.c, ``ikev2_uat_flds``): SPIi and SPIr as 16 hex
    digits, SK_ei and SK_er in hex, the encryption algorithm by its name in ``vs_ikev2_encr_algs`` (the key
    size is part of the name), SK_ai and SK_ar, the integrity algorithm by its name in ``vs_ikev2_auth_algs``.
    Byte fields are bare hex, names are quoted. AES-GCM's SK_e carries its salt (RFC 5282 §7.1; Wireshark's
    ``ikev2_encr_algs`` gives it a 20/28/36-octet key) and an AEAD SA has empty SK_a fields and "NONE [RFC4306]".

The names are checked against Wireshark 4.0, the version Debian 12 ships. Wireshark has no ChaCha20-Poly1305
for either table (RFC 7634): an SA using it, or an AH SA (esp_sa is ESP only), gets a ``#`` comment line
saying why it was left out, since UAT files skip comments, and the gateway carries on.

Files are created 0600 in a directory of ours that is 0700 (one that others can read is refused: these are
keys); each call appends its lines with one ``write`` on an ``O_APPEND`` descriptor, so a reader never sees
half a record. Writing stops with a warning (and a last comment in the file) after `MAX_LINES` lines per file,
so a long-running gateway cannot fill a disk with debug output. Old lines stay when SAs are rekeyed or deleted:
the capture still holds packets protected with the old keys.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from xdpsec.ike.conf import IkeProposal
from xdpsec.ike.consts import EncrId, IntegId
from xdpsec.ike.events import IkeUp
from xdpsec.sa import Direction, Encr, Integ, IPAddress, Protocol, SAParams

log = logging.getLogger("xdpsec.keyexport")

ESP_FILE = "esp_sa"
IKEV2_FILE = "ikev2_decryption_table"
MAX_LINES = 100_000

# packet-ipsec.c esp_encryption_type_vals / esp_authentication_type_vals.
_ESP_ENCR = {
    Encr.NULL: "NULL",
    Encr.AES_CBC: "AES-CBC [RFC3602]",
    Encr.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
_ESP_AUTH = {
    None: "NULL",
    Integ.HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    Integ.HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    Integ.HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
}

# packet-isakmp.c vs_ikev2_encr_algs / vs_ikev2_auth_algs; the encryption name depends on the key size.
_IKE_ENCR = {
    **{(EncrId.AES_CBC, bits): f"AES-CBC-{bits} [RFC3602]" for bits in (128, 192, 256)},
    **{(EncrId.AES_GCM_16, bits): f"AES-GCM-{bits} with 16 octet ICV [RFC5282]" for bits in (128, 192, 256)},
}
_IKE_INTEG = {
    None: "NONE [RFC4306]",
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}

_HEADER = ("# Written by xdpsec ([debug] key_export): the secret keys of {what}, for Wireshark.\n"
           "# Anyone who can read this file can decrypt the traffic; delete it when done.\n")


class KeyExportError(Exception):
    """The key export directory cannot be used safely (not ours, or readable by others)."""


def esp_record(sa: SAParams) -> str:
    """The esp_sa line of one SA (with its newline), or a comment if Wireshark cannot decrypt it."""
    if sa.protocol != Protocol.ESP:
        return _skipped(sa, "AH: Wireshark's esp_sa table covers ESP only")
    encr, auth = _ESP_ENCR.get(sa.transform.encr), _ESP_AUTH.get(sa.transform.integ)
    if encr is None:
        return _skipped(sa, f"{_name(EncrId, sa.transform.encr)} has no name in Wireshark's esp_sa table")
    if auth is None:
        return _skipped(sa, f"{_name(IntegId, sa.transform.integ)} has no name in Wireshark's esp_sa table")
    src, dst = (sa.local, sa.remote) if sa.direction == Direction.OUT else (sa.remote, sa.local)
    fields = (_family(src), str(src), str(dst), f"0x{sa.spi:08x}", encr, _hex0x(sa.enc_key), auth,
              _hex0x(sa.integ_key))
    return ",".join(f'"{f}"' for f in fields) + "\n"


def ike_record(ev: IkeUp) -> str:
    """The ikev2_decryption_table line of one IKE SA (with its newline), or a comment saying why not."""
    p: IkeProposal | None = ev.proposal
    where = f"IKE SA {ev.ispi:016x}_{ev.rspi:016x} ({ev.conn})"
    if p is None or ev.keys is None:
        return f"# xdpsec: {where} not exported: the event carries no keys\n"
    encr = _IKE_ENCR.get((p.encr, p.encr_key_bits))
    integ = _IKE_INTEG.get(p.integ)
    if encr is None or integ is None:
        what = _name(EncrId, p.encr) if encr is None else _name(IntegId, p.integ)
        return f"# xdpsec: {where} not exported: {what} has no name in Wireshark's ikev2_decryption_table\n"
    k = ev.keys
    return (f'{ev.ispi:016x},{ev.rspi:016x},{k.sk_ei.hex()},{k.sk_er.hex()},"{encr}",'
            f'{k.sk_ai.hex()},{k.sk_ar.hex()},"{integ}"\n')


def _skipped(sa: SAParams, why: str) -> str:
    return f"# xdpsec: SA 0x{sa.spi:08x} {sa.direction.value} ({sa.name or 'unnamed'}) not exported: {why}\n"


def _name(kind: type[EncrId] | type[IntegId], alg: int | None) -> str:
    try:
        return kind(alg).name if alg is not None else "none"
    except ValueError:
        return f"{kind.__name__} {alg}"


def _family(addr: IPAddress) -> str:
    return "IPv4" if addr.version == 4 else "IPv6"


def _hex0x(key: bytes) -> str:
    # "0x" alone is Wireshark's empty key (compute_ascii_key); a key without 0x would be taken as ASCII.
    return "0x" + key.hex()


class _Table:
    """One append-only table file: created 0600, lines counted, one write() per call."""

    def __init__(self, path: Path, what: str, max_lines: int) -> None:
        self.path = path
        self.max_lines = max_lines
        self.lines = _count_lines(path, max_lines)
        self.full = self.lines >= max_lines
        if self.lines == 0:
            self._write(_HEADER.format(what=what))

    def append(self, text: str) -> None:
        if self.full:
            return
        if self.lines + text.count("\n") > self.max_lines:
            log.warning("key export: %s reached %d lines; no more keys are written to it", self.path,
                        self.max_lines)
            self._write(f"# xdpsec: stopped after {self.lines} lines; later keys are not in this file\n")
            self.full = True
            return
        self._write(text)

    def _write(self, text: str) -> None:
        data = text.encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o600)  # a file copied in by hand with a looser mode
            os.write(fd, data)  # O_APPEND: one write, one atomic append of whole lines
        finally:
            os.close(fd)
        self.lines += text.count("\n")


def _count_lines(path: Path, limit: int) -> int:
    try:
        with open(path, "rb") as f:
            n = 0
            while n < limit and (chunk := f.read(1 << 16)):
                n += chunk.count(b"\n")
            return n
    except FileNotFoundError:
        return 0


def _secure_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyExportError(f"{directory}: key_export must name a directory, not a symlink or a file")
    if st.st_uid != os.geteuid():
        raise KeyExportError(f"{directory}: key export directory belongs to uid {st.st_uid}, not to us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyExportError(f"{directory}: key export directory has mode {stat.S_IMODE(st.st_mode):04o}; "
                             f"keys need a directory only we can read: chmod 700 it or name a new one")


class KeyExport:
    """Appends the keys of each child SA pair and IKE SA to Wireshark's esp_sa and ikev2_decryption_table.

    Never raises once constructed: a failed write is logged and the gateway goes on (this is a debugging aid).
    """

    def __init__(self, directory: Path, *, max_lines: int = MAX_LINES) -> None:
        self.directory = Path(directory)
        _secure_dir(self.directory)
        self._lock = threading.Lock()
        self._esp = _Table(self.directory / ESP_FILE, "ESP SAs", max_lines)
        self._ike = _Table(self.directory / IKEV2_FILE, "IKEv2 SAs", max_lines)
        log.warning("key export is ON: ESP and IKE keys are written to %s (for Wireshark); never in production",
                    self.directory)

    def child(self, out: SAParams, inb: SAParams) -> None:
        """Both SAs of a child, installed: two esp_sa records (or comments)."""
        self._append(self._esp, esp_record(out) + esp_record(inb))

    def child_removed(self, out_spi: int, in_spi: int) -> None:
        """Nothing to do: the records stay, for the packets in a capture that the old SAs protected."""

    def ike(self, ev: IkeUp) -> None:
        """An IKE SA is up: its ikev2_decryption_table record (or a comment)."""
        self._append(self._ike, ike_record(ev))

    def _append(self, table: _Table, text: str) -> None:
        with self._lock:
            try:
                table.append(text)
            except OSError as e:
                log.warning("key export: cannot write %s: %s", table.path, e)
