"""Key export in Wireshark's esp_sa and ikev2_decryption_table formats (xdpsec/keyexport.py).

Three kinds of evidence:
* the record of every transform we implement against a hand-written expected line (algorithm names as spelled
  in Wireshark's packet-ipsec.c / packet-isakmp.c value_strings, key layouts of RFC 4106 §8.1 / RFC 5282 §7.1);
* tshark itself (when installed) decrypting with those records: ESP packets encrypted by scapy's independent
  implementation, and IKE_AUTH messages of two in-memory IKE managers;
* the file handling: modes 0600/0700, whole-line appends, the line bound, errors that never escape.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from xdpsec.ike.conf import (
    AuthMethod,
    AuthRound,
    ChildConfig,
    ChildProposal,
    Identity,
    IkeConnConfig,
    IkeProposal,
)
from xdpsec.ike.consts import EncrId, IdType, IntegId, KeId, PrfId
from xdpsec.ike.events import ChildUp, IkeUp
from xdpsec.ike.keys import IkeKeys
from xdpsec.ike.manager import IkeManager
from xdpsec.keyexport import ESP_FILE, IKEV2_FILE, KeyExport, KeyExportError, esp_record, ike_record
from xdpsec.proposals import parse_ah, parse_esp
from xdpsec.sa import Direction, Mode, Protocol, SAParams, TrafficSelector

V4 = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
V6 = (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8:0:1::2"))
MARKER = b"xdpsec-plaintext"


def sa(proposal: str, direction: Direction = Direction.OUT, addrs=V4, spi: int = 0xC0FFEE01,
       protocol: Protocol = Protocol.ESP) -> SAParams:
    """An SA with recognisable keys: the encryption key bytes count up from 0x00, the integrity key's from 0x80."""
    t = parse_ah(proposal) if protocol == Protocol.AH else parse_esp(proposal)
    return SAParams(spi, protocol, direction, Mode.TUNNEL, t, addrs[0], addrs[1],
                    enc_key=bytes(range(t.enc_key_len)), integ_key=bytes(range(0x80, 0x80 + t.integ_key_len)),
                    name="lab/net")


def counting(start: int, n: int) -> str:
    return bytes(range(start, start + n)).hex()


# --- esp_sa records ---------------------------------------------------------------------------------------

# Wireshark's esp_sa fields: protocol, src, dst, SPI, encryption, key, authentication, key (packet-ipsec.c
# esp_uat_flds). GCM keys are 16/24/32 key octets followed by the 4-octet salt (RFC 4106 §8.1).
ESP_CASES = [
    ("aes128gcm16", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-GCM with 16 octet ICV [RFC4106]",'
                    '"0x000102030405060708090a0b0c0d0e0f10111213","NULL","0x"'),
    ("aes192gcm16", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-GCM with 16 octet ICV [RFC4106]",'
                    f'"0x{counting(0, 28)}","NULL","0x"'),
    ("aes256gcm16", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-GCM with 16 octet ICV [RFC4106]",'
                    f'"0x{counting(0, 36)}","NULL","0x"'),
    ("aes128-sha256", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-CBC [RFC3602]",'
                      '"0x000102030405060708090a0b0c0d0e0f","HMAC-SHA-256-128 [RFC4868]",'
                      f'"0x{counting(0x80, 32)}"'),
    ("aes256-sha384", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-CBC [RFC3602]",'
                      f'"0x{counting(0, 32)}","HMAC-SHA-384-192 [RFC4868]","0x{counting(0x80, 48)}"'),
    ("aes192-sha512-esn", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-CBC [RFC3602]",'
                          f'"0x{counting(0, 24)}","HMAC-SHA-512-256 [RFC4868]","0x{counting(0x80, 64)}"'),
    ("null-sha256", '"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","NULL","0x","HMAC-SHA-256-128 [RFC4868]",'
                    f'"0x{counting(0x80, 32)}"'),
]


@pytest.mark.parametrize(("proposal", "expected"), ESP_CASES, ids=[c[0] for c in ESP_CASES])
def test_esp_record_of_each_transform(proposal, expected):
    assert esp_record(sa(proposal)) == expected + "\n"


def test_esp_record_direction_sets_source_and_destination():
    """The outer header of an inbound SA's packets comes from the peer: remote -> local."""
    out = esp_record(sa("aes128gcm16", Direction.OUT, V6, spi=0x100))
    inb = esp_record(sa("aes128gcm16", Direction.IN, V6, spi=0xFFFFFFFF))
    assert out.startswith('"IPv6","2001:db8::1","2001:db8:0:1::2","0x00000100",')
    assert inb.startswith('"IPv6","2001:db8:0:1::2","2001:db8::1","0xffffffff",')


@pytest.mark.parametrize(("proposal", "protocol", "why"), [
    ("chacha20poly1305", Protocol.ESP, "CHACHA20_POLY1305 has no name in Wireshark's esp_sa table"),
    ("sha256", Protocol.AH, "AH: Wireshark's esp_sa table covers ESP only"),
])
def test_unsupported_sa_is_a_comment(proposal, protocol, why):
    line = esp_record(sa(proposal, protocol=protocol))
    assert line == f"# xdpsec: SA 0xc0ffee01 out (lab/net) not exported: {why}\n"


# --- ikev2_decryption_table records -----------------------------------------------------------------------

def ike_event(encr: EncrId, bits: int, integ: IntegId | None, e_len: int, a_len: int) -> IkeUp:
    keys = IkeKeys(sk_d=b"\x01" * 32, sk_ai=bytes([0xA1]) * a_len, sk_ar=bytes([0xA2]) * a_len,
                   sk_ei=bytes(range(e_len)), sk_er=bytes(range(0x40, 0x40 + e_len)),
                   sk_pi=b"\x02" * 32, sk_pr=b"\x03" * 32)
    prop = IkeProposal(encr, bits, integ, PrfId.HMAC_SHA2_256, KeId.CURVE25519)
    return IkeUp("lab", 0x0123456789ABCDEF, 0x00000000000000FF, (V4[1], 500), (V4[0], 500), prop, keys)


# ikev2_uat_flds: SPIi, SPIr, SK_ei, SK_er, encryption, SK_ai, SK_ar, integrity (packet-isakmp.c).
IKE_CASES = [
    ((EncrId.AES_GCM_16, 128, None, 20, 0),
     f'0123456789abcdef,00000000000000ff,{counting(0, 20)},{counting(0x40, 20)},'
     '"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'),
    ((EncrId.AES_GCM_16, 256, None, 36, 0),
     f'0123456789abcdef,00000000000000ff,{counting(0, 36)},{counting(0x40, 36)},'
     '"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'),
    ((EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, 16, 32),
     f'0123456789abcdef,00000000000000ff,{counting(0, 16)},{counting(0x40, 16)},"AES-CBC-128 [RFC3602]",'
     f'{"a1" * 32},{"a2" * 32},"HMAC_SHA2_256_128 [RFC4868]"'),
    ((EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_384_192, 24, 48),
     f'0123456789abcdef,00000000000000ff,{counting(0, 24)},{counting(0x40, 24)},"AES-CBC-192 [RFC3602]",'
     f'{"a1" * 48},{"a2" * 48},"HMAC_SHA2_384_192 [RFC4868]"'),
    ((EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, 32, 64),
     f'0123456789abcdef,00000000000000ff,{counting(0, 32)},{counting(0x40, 32)},"AES-CBC-256 [RFC3602]",'
     f'{"a1" * 64},{"a2" * 64},"HMAC_SHA2_512_256 [RFC4868]"'),
]


@pytest.mark.parametrize(("args", "expected"), IKE_CASES, ids=lambda v: str(v[:3]) if isinstance(v, tuple) else "")
def test_ike_record_of_each_transform(args, expected):
    assert ike_record(ike_event(*args)) == expected + "\n"


def test_ike_record_unsupported_or_keyless_is_a_comment():
    chacha = ike_record(ike_event(EncrId.CHACHA20_POLY1305, 256, None, 36, 0))
    assert chacha == ("# xdpsec: IKE SA 0123456789abcdef_00000000000000ff (lab) not exported: CHACHA20_POLY1305 "
                      "has no name in Wireshark's ikev2_decryption_table\n")
    keyless = IkeUp("lab", 1, 2, (V4[1], 500))
    assert ike_record(keyless).startswith("# xdpsec: IKE SA 0000000000000001_0000000000000002 (lab) not exported")


# --- the files --------------------------------------------------------------------------------------------

def data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_files_are_private_and_records_appended(tmp_path):
    d = tmp_path / "keys" / "sub"
    kx = KeyExport(d)
    kx.child(sa("aes128gcm16", Direction.OUT), sa("aes128gcm16", Direction.IN, spi=0x200))
    kx.child(sa("chacha20poly1305"), sa("chacha20poly1305", Direction.IN))
    kx.ike(ike_event(*IKE_CASES[0][0]))
    kx.child_removed(0xC0FFEE01, 0x200)  # keeps the lines: old packets in a capture still need them
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in (ESP_FILE, IKEV2_FILE):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    esp = (d / ESP_FILE).read_text().splitlines()
    assert esp[0].startswith("# Written by xdpsec") and len(esp) == 2 + 4
    assert data_lines(d / ESP_FILE) == [esp_record(sa("aes128gcm16")).strip(),
                                        esp_record(sa("aes128gcm16", Direction.IN, spi=0x200)).strip()]
    assert data_lines(d / IKEV2_FILE) == [IKE_CASES[0][1]]


def test_directory_others_can_read_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(KeyExportError, match="mode 0755"):
        KeyExport(d)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises((KeyExportError, FileExistsError)):
        KeyExport(f)


def test_writes_stop_at_the_bound_with_a_warning(tmp_path, caplog):
    kx = KeyExport(tmp_path / "k", max_lines=7)  # 2 header lines + 2 children of 2 lines, then no room
    pair = (sa("aes128gcm16"), sa("aes128gcm16", Direction.IN))
    with caplog.at_level(logging.WARNING, logger="xdpsec.keyexport"):
        for _ in range(5):
            kx.child(*pair)
    lines = (tmp_path / "k" / ESP_FILE).read_text().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("# xdpsec: stopped after 6 lines")
    assert sum("reached 7 lines" in r.message for r in caplog.records) == 1
    again = KeyExport(tmp_path / "k", max_lines=7)  # a restarted gateway counts what is there
    again.child(*pair)
    assert len((tmp_path / "k" / ESP_FILE).read_text().splitlines()) == 7


def test_write_errors_are_logged_never_raised(tmp_path, caplog):
    d = tmp_path / "k"
    kx = KeyExport(d)
    (d / IKEV2_FILE).unlink()
    (d / IKEV2_FILE).symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW: never write through a planted link
    with caplog.at_level(logging.WARNING, logger="xdpsec.keyexport"):
        kx.ike(ike_event(*IKE_CASES[0][0]))
    assert not (tmp_path / "elsewhere").exists()
    assert any("cannot write" in r.message for r in caplog.records)


def test_concurrent_appends_keep_whole_lines(tmp_path):
    kx = KeyExport(tmp_path / "k")
    pair = (sa("aes256-sha512"), sa("aes256-sha512", Direction.IN))
    threads = [threading.Thread(target=lambda: [kx.child(*pair) for _ in range(50)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = data_lines(tmp_path / "k" / ESP_FILE)
    assert len(lines) == 8 * 50 * 2
    assert set(lines) == {esp_record(p).strip() for p in pair}


# --- tshark decrypts with these records -------------------------------------------------------------------

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt install tshark)")


def tshark(pcap: Path, options: list[str], fields: list[str]) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-T", "fields"]
    for opt in options:
        cmd += ["-o", opt]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


# scapy's names for our transforms (scapy/layers/ipsec.py CRYPT_ALGOS / AUTH_ALGOS)
SCAPY_ALGOS = {
    "aes128gcm16": ("AES-GCM", "NULL"), "aes256gcm16": ("AES-GCM", "NULL"),
    "aes128-sha256": ("AES-CBC", "SHA2-256-128"), "aes256-sha384": ("AES-CBC", "SHA2-384-192"),
    "aes192-sha512": ("AES-CBC", "SHA2-512-256"), "null-sha256": ("NULL", "SHA2-256-128"),
}


@needs_tshark
def test_tshark_decrypts_scapy_esp_with_our_records(tmp_path):
    """ESP packets of every transform, IPv4 and IPv6, encrypted by scapy (an independent implementation), in
    one capture: tshark, given our records, finds the inner UDP datagram and its payload in each."""
    from scapy.all import IP, UDP, Ether, IPv6, Raw, wrpcap
    from scapy.layers.ipsec import ESP, SecurityAssociation

    frames, records, expected = [], [], {}
    for n, (proposal, addrs) in enumerate((p, a) for p in SCAPY_ALGOS for a in (V4, V6)):
        ours = sa(proposal, Direction.OUT, addrs, spi=0x1000 + n)
        crypt, auth = SCAPY_ALGOS[proposal]
        outer = (IP if addrs[0].version == 4 else IPv6)(src=str(addrs[0]), dst=str(addrs[1]))
        theirs = SecurityAssociation(ESP, spi=ours.spi, crypt_algo=crypt, crypt_key=ours.enc_key or None,
                                     auth_algo=auth, auth_key=ours.integ_key or None, tunnel_header=outer)
        inner = IP(src="198.51.100.1", dst="203.0.113.1") / UDP(sport=4000, dport=9) / Raw(MARKER)
        frames.append(Ether() / theirs.encrypt(inner, seq_num=1))
        records.append("uat:esp_sa:" + esp_record(ours).strip())
        expected[str(ours.spi)] = f"{proposal} {addrs[0].version}"
    wrpcap(str(tmp_path / "esp.pcap"), frames)
    rows = tshark(tmp_path / "esp.pcap", ["esp.enable_encryption_decode:TRUE", *records],
                  ["esp.spi", "udp.dstport", "data.data"])
    failed = [expected[r[0]] for r in rows if r[1:] != ["9", MARKER.hex()]]
    assert len(rows) == len(frames) and not failed, rows
    # The control: without our records tshark sees no inner datagram.
    blind = tshark(tmp_path / "esp.pcap", ["esp.enable_encryption_decode:TRUE"], ["udp.dstport"])
    assert blind == [[""]] * len(frames)


def _psk(text: str) -> AuthRound:
    return AuthRound(AuthMethod.PSK, Identity(IdType.FQDN, text.encode(), text), psk=b"not a real secret")


def _ike_pair(proposal: IkeProposal) -> tuple[IkeManager, IkeManager]:
    child = ChildProposal(Protocol.ESP, parse_esp("aes128gcm16"))
    a_net, b_net = TrafficSelector(ipaddress.ip_network("198.51.100.0/25")), \
        TrafficSelector(ipaddress.ip_network("198.51.100.128/25"))
    a = IkeConnConfig("a", (V4[0],), (V4[1],), (proposal,), _psk("a.example"), _psk("b.example"),
                      (ChildConfig("net", (a_net,), (b_net,), proposals=(child,)),))
    b = IkeConnConfig("b", (V4[1],), (), (proposal,), _psk("b.example"), _psk("a.example"),
                      (ChildConfig("net", (b_net,), (a_net,), proposals=(child,)),))
    return IkeManager([a]), IkeManager([b])


IKE_PROPOSALS = {
    "aes128gcm16-prfsha256": IkeProposal(EncrId.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_256, KeId.CURVE25519),
    "aes256gcm16-prfsha384": IkeProposal(EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384, KeId.CURVE25519),
    "aes256-sha256": IkeProposal(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256,
                                 KeId.CURVE25519),
    "aes128-sha512": IkeProposal(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512,
                                 KeId.CURVE25519),
}


def _exchange(proposal: IkeProposal, frames: list) -> IkeUp:
    """IKE_SA_INIT and IKE_AUTH between two managers in memory; the datagrams go to `frames`."""
    from scapy.all import IP, UDP, Ether, Raw

    a, b = _ike_pair(proposal)
    now = 1_767_225_600.0
    a.initiate("a", "net", now)
    for _ in range(6):
        flight = [(b, *d) for d in a.datagrams_to_send()] + [(a, *d) for d in b.datagrams_to_send()]
        for to, data, (src, sport), (dst, dport) in flight:
            frames.append(Ether() / IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / Raw(data))
            to.receive_datagram(data, (dst, dport), (src, sport), now)
    events = list(iter(a.next_event, None))
    assert any(isinstance(e, ChildUp) for e in events), events
    return next(e for e in events if isinstance(e, IkeUp))


@needs_tshark
def test_tshark_decrypts_ike_auth_with_our_records(tmp_path):
    """One IKE SA per proposal in one capture; with the records of the initiators' IkeUp events tshark opens
    the Encrypted payloads of every IKE_AUTH message: the identities appear, and only with the records."""
    from scapy.all import wrpcap

    frames: list = []
    records = ["uat:ikev2_decryption_table:" + ike_record(_exchange(p, frames)).strip()
               for p in IKE_PROPOSALS.values()]
    wrpcap(str(tmp_path / "ike.pcap"), frames)
    rows = tshark(tmp_path / "ike.pcap", records, ["isakmp.exchangetype", "isakmp.id.data.fqdn"])
    auth = [r[1] for r in rows if r[0] == "35"]
    assert auth == ["a.example,b.example", "b.example"] * len(IKE_PROPOSALS), rows  # IDi+IDr, then IDr
    blind = tshark(tmp_path / "ike.pcap", [], ["isakmp.exchangetype", "isakmp.id.data.fqdn"])
    assert [r[1] for r in blind if r[0] == "35"] == [""] * 2 * len(IKE_PROPOSALS)


def test_records_are_csv_wireshark_can_split():
    """No field of ours can contain a quote or comma that would shift the columns."""
    for proposal, _ in ESP_CASES:
        fields = re.findall(r'"([^"]*)"', esp_record(sa(proposal)))
        assert len(fields) == 8
