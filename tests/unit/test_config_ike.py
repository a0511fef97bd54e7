"""IKE in the configuration: identities, secrets, certificates, durations, `dynamic`, and what IKE connections
turn into (`IkeConnConfig`), every problem at its FILE:LINE."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.abi import Action, PolicyDir
from xdpsec.config import (
    ConfigError,
    PskSecret,
    check_main,
    decode_secret,
    find_psk,
    load,
    parse_duration,
    parse_identity,
)
from xdpsec.ike.conf import AuthMethod, DpdAction, Identity, IkeProposal, StartAction
from xdpsec.ike.consts import EncrId, IdType, KeId, PrfId
from xdpsec.ike.events import ChildDown, ChildUp, Failure, IkeUp
from xdpsec.ike.manager import IkeManager
from xdpsec.proposals import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, parse_child, parse_ike
from xdpsec.sa import Mode, Protocol, TrafficSelector

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
SECRET = "0s" + base64.b64encode(b"a pre-shared key of 32 bytes!!!!").decode()

HEAD = """\
instance = "t"
[gateway]
interfaces = ["wan0"]
workers = 1
"""

PSK_CONN = """
[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
[connections.site.local]
auth = "psk"
id = "gwA.example.org"
[connections.site.remote]
auth = "psk"
id = "gwB.example.org"
[connections.site.children.net]
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
"""

SECRETS = f"""
[secrets]
ike = [{{ id = ["gwA.example.org", "gwB.example.org"], secret = "{SECRET}" }}]
"""


def write(tmp_path: Path, text: str, name: str = "xdpsec.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(path)
    return [str(p) for p in e.value.problems]


def line_of(text: str, needle: str) -> int:
    """The line where `needle` starts (a leading newline anchors it at the start of a line)."""
    return text[:text.index(needle) + needle.startswith("\n")].count("\n") + 1


def assert_problem(path: Path, text: str, where: str, key: str, fragment: str) -> None:
    found = problems(path)
    prefix = f"{path}:{line_of(text, where)}: {key}: "
    assert any(p.startswith(prefix) and fragment in p for p in found), (prefix, fragment, found)


# --- identities, secrets, durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,id_type,data", [
    ("192.0.2.1", IdType.IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("2001:db8::1", IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
    ("gwA.example.org", IdType.FQDN, b"gwA.example.org"),
    ("@192.0.2.1", IdType.FQDN, b"192.0.2.1"),  # strongSwan: '@' forces an FQDN
    ("alice@example.org", IdType.RFC822_ADDR, b"alice@example.org"),
    ("@#0a0b0c", IdType.KEY_ID, b"\x0a\x0b\x0c"),
    # a DN in the order written; cross-checked against cryptography's own encoder
    ("CN=gwB, O=Example", IdType.DER_ASN1_DN, x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "gwB")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]),
    ]).public_bytes()),
    ("C=CH, O=a\\, b, CN=x", IdType.DER_ASN1_DN, x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "a, b"),
        x509.NameAttribute(NameOID.COMMON_NAME, "x")]).public_bytes()),
])
def test_parse_identity(text, id_type, data):
    identity = parse_identity(text)
    assert (identity.id_type, identity.data, identity.text) == (id_type, data, text)


@pytest.mark.parametrize("text,fragment", [
    ("", "empty identity"), ("@#xyz", "key ID"), ("CN=x, FOO=y", "bad DN component 'FOO=y'"),
    ("two words", "is not an address"), ("C=Switzerland", "length must be"),
])
def test_parse_identity_refuses(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_identity(text)


@pytest.mark.parametrize("text,secret", [
    ("plain text", b"plain text"),
    ("0x0102ff", b"\x01\x02\xff"),
    ("0x01:02:ff", b"\x01\x02\xff"),
    ("0sAQL/", b"\x01\x02\xff"),
])
def test_decode_secret(text, secret):
    assert decode_secret(text) == secret


@pytest.mark.parametrize("text", ["0xzz", "0s***"])
def test_decode_secret_refuses(text):
    with pytest.raises(ValueError):
        decode_secret(text)


A, B, C = (parse_identity(t) for t in ("a.example.org", "b.example.org", "c.example.org"))
WILD = PskSecret((), b"wildcard")
AB = PskSecret((A, B), b"a-b")
AC = PskSecret((A, C), b"a-c")


@pytest.mark.parametrize("secrets,local,remote,expected", [
    ((AB, AC), A, B, b"a-b"),
    ((AB, AC), B, A, b"a-b"),           # the pair, in either order
    ((AB, AC), A, C, b"a-c"),
    ((WILD, AB), A, B, b"a-b"),         # a secret naming both wins over the wildcard, wherever it is
    ((AB, WILD), B, C, b"wildcard"),    # naming only one of them is not enough
    ((AB, AC), B, C, None),
    ((AB,), parse_identity("A.EXAMPLE.ORG"), B, b"a-b"),  # FQDNs compare case-insensitively
    ((PskSecret((parse_identity("192.0.2.1"), B), b"ip"),), parse_identity("@192.0.2.1"), B, None),  # types differ
])
def test_find_psk(secrets, local, remote, expected):
    assert find_psk(secrets, local, remote) == expected


@pytest.mark.parametrize("value,seconds", [(30, 30.0), (0, 0.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
                                           ("2d", 172800.0), (" 45 ", 45.0), ("10 m", 600.0)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["30x", "-5", "1.5h", "", -1, True, 2.5])
def test_durations_refused(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# --- a PSK site-to-site pair ------------------------------------------------------------------------------------------

def test_psk_example_pair(tmp_path):
    for name in ("ike-psk-gwA.toml", "ike-psk-gwB.toml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
        (tmp_path / name).chmod(0o600)
    a, b = load(tmp_path / "ike-psk-gwA.toml"), load(tmp_path / "ike-psk-gwB.toml")
    assert a.warnings == b.warnings == () and a.manual_sas() == []
    [ca], [cb] = a.ike_connections(), b.ike_connections()
    assert (ca.name, ca.local_addrs, ca.remote_addrs) == ("site", (ipaddress.ip_address("192.0.2.1"),),
                                                          (ipaddress.ip_address("192.0.2.2"),))
    assert ca.proposals == (IkeProposal(EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384, KeId.CURVE25519),
                            *parse_ike("aes128-sha256-modp3072"))
    assert (ca.local_port, ca.remote_port, ca.encap, ca.dpd_delay, ca.keyingtries) == (500, 500, False, 30.0, 1)
    assert ca.local.method == ca.remote.method == AuthMethod.PSK
    assert ca.local.psk == ca.remote.psk == cb.local.psk != b""
    assert ca.local.identity == cb.remote.identity == Identity(IdType.FQDN, b"gwA.example.org", "gwA.example.org")
    assert ca.remote.identity == cb.local.identity
    assert SECRET[2:] not in repr(ca) and "a pre-shared" not in repr(ca)  # key material stays out of repr()
    [net_a], [net_b] = ca.children, cb.children  # the pass shunts are policies, not IKE children
    assert (net_a.local_ts, net_a.remote_ts) == (net_b.remote_ts, net_b.local_ts)
    assert net_a.proposals == (*parse_child("aes256gcm16-x25519", Protocol.ESP),
                               *parse_child("aes128gcm16", Protocol.ESP))
    assert (net_a.mode, net_a.start_action, net_a.dpd_action) == (Mode.TUNNEL, StartAction.START, DpdAction.RESTART)
    assert (net_b.start_action, net_b.dpd_action) == (StartAction.NONE, DpdAction.CLEAR)
    protect = [(p.direction, p.src, p.dst, p.child) for p in a.policies() if p.action == Action.PROTECT]
    assert protect == [
        (PolicyDir.OUT, ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("198.51.100.128/25"),
         "site/net"),
        (PolicyDir.IN, ipaddress.ip_network("198.51.100.128/25"), ipaddress.ip_network("198.51.100.0/25"),
         "site/net"),
    ]


def test_examples_pass_check_with_a_mode_warning(capsys):
    assert check_main(["-c", str(EXAMPLES / "ike-psk-gwA.toml")]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("ok (1 connections, 2 children, 4 policies)\n")
    if (EXAMPLES / "ike-psk-gwA.toml").stat().st_mode & 0o077:
        assert "must not be readable by group or others" in out.err


def test_defaults_and_dynamic_selectors(tmp_path):
    text = HEAD + """
[connections.host]
local_addrs = ["2001:db8::a"]
remote_addrs = ["2001:db8::b"]
[connections.host.local]
auth = "psk"
[connections.host.remote]
auth = "psk"
[connections.host.children.web]
mode = "transport"
remote_ts = ["dynamic[tcp/443]", "dynamic[icmpv6]"]
""" + f'[secrets]\nike = [{{ secret = "{SECRET}" }}]\n'
    c = load(write(tmp_path, text))
    [conn] = c.ike_connections()
    # PSK identities default to the addresses; the empty id list matches any pair
    assert conn.local.identity == Identity(IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::a").packed, "2001:db8::a")
    assert conn.local.psk == b"a pre-shared key of 32 bytes!!!!"
    assert conn.proposals == tuple(p for s in DEFAULT_IKE_PROPOSALS for p in parse_ike(s))
    [child] = conn.children
    assert child.proposals == tuple(p for s in DEFAULT_ESP_PROPOSALS for p in parse_child(s, Protocol.ESP))
    host_a, host_b = ipaddress.ip_network("2001:db8::a/128"), ipaddress.ip_network("2001:db8::b/128")
    assert child.local_ts == (TrafficSelector(host_a),)
    assert [(t.net, t.proto, t.ports.lo, t.ports.hi) for t in child.remote_ts] == [(host_b, 6, 443, 443),
                                                                                  (host_b, 58, 0, 65535)]
    assert child.mode == Mode.TRANSPORT
    assert {(p.src, p.dst, p.proto) for p in c.policies()} == {(host_a, host_b, 6), (host_b, host_a, 6),
                                                                (host_a, host_b, 58), (host_b, host_a, 58)}


def test_mixed_manual_and_ike(tmp_path):
    manual = (EXAMPLES / "gwA.toml").read_text().split("[connections.site]", 1)[1]
    text = HEAD + "[connections.manual]" + manual.replace("connections.site.", "connections.manual.") + \
        PSK_CONN.replace("198.51.100.0/25", "203.0.113.0/25").replace("198.51.100.128/25", "203.0.113.128/25") \
        + SECRETS
    c = load(write(tmp_path, text))
    assert [name for name, _o, _i in c.manual_sas()] == ["manual/net"]
    assert [conn.name for conn in c.ike_connections()] == ["site"]
    assert {p.child for p in c.policies() if p.action == Action.PROTECT} == {"manual/net", "site/net"}


# --- problems at the right line ----------------------------------------------------------------------------------------

# (case, (old, new) on HEAD + PSK_CONN + SECRETS, text starting the reported line, key, part of the message)
BAD = [
    ("IKEv1", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nversion = 1'), "version",
     "connections.site.version", "IKEv2 (RFC 7296) only"),
    ("weak IKE group", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\n'
                                                        'proposals = ["aes128-sha256-modp1024"]'),
     "proposals", "connections.site.proposals", "'SHOULD NOT' in RFC 8247 §2.4"),
    ("weak PFS group", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25"]\n'
                                                              'esp_proposals = ["aes128gcm16-modp1024"]'),
     "esp_proposals", "connections.site.children.net.esp_proposals", "RFC 8247 §2.4"),
    ("bad duration", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\ndpd_delay = "30 sec"'),
     "dpd_delay", "connections.site.dpd_delay", "is not a duration"),
    ("no PSK for the pair", ('id = "gwB.example.org"', 'id = "gwC.example.org"'), 'auth = "psk"',
     "connections.site.local.auth", "no PSK for gwA.example.org <-> gwC.example.org"),
    ("bad auth", ('auth = "psk"', 'auth = "eap"'), 'auth = "eap"', "connections.site.local.auth",
     "'eap' is not one of psk | pubkey"),
    ("bad identity", ('id = "gwA.example.org"', 'id = "CN=x, XX=y"'), 'id = "CN', "connections.site.local.id",
     "bad DN component"),
    ("dynamic with any peer", (('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["%any"]'),
                               ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["dynamic"]')),
     "remote_ts", "connections.site.children.net.remote_ts", "remote_addrs is any"),
    ("start with any peer", (('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["%any"]'),
                             ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25"]\n'
                                                                    'start_action = "start"')),
     "start_action", "connections.site.children.net.start_action", "can only respond"),
    ("manual child in an IKE connection", ('remote_ts = ["198.51.100.128/25"]',
                                           'remote_ts = ["198.51.100.128/25"]\n[connections.site.children.net.manual]'
                                           '\nin_spi = 0x1001'),
     "[connections.site.children.net.manual]", "connections.site.children.net.manual", "keyed by IKE"),
    ("IKE key in a manual connection", ((PSK_CONN, (EXAMPLES / "gwA.toml").read_text().split("[gateway]")[1]
                                         .split("\n", 5)[5]),
                                        ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\n'
                                                                         'dpd_delay = 30')),
     "dpd_delay", "connections.site.dpd_delay", "only for IKE connections"),
    ("psk with a cert", ('id = "gwA.example.org"', 'id = "gwA.example.org"\ncerts = ["a.pem"]'), "certs",
     "connections.site.local.certs", "only with auth = \"pubkey\""),
    ("secret not base64", (SECRET, "0s!!!"), "ike = [", "secrets.ike.0", "must be base64"),
    ("zero retransmit timeout", ("workers = 1", 'workers = 1\nretransmit_timeout = "0s"'), "retransmit_timeout",
     "gateway.retransmit_timeout", "'0s' is outside 0.1..3600 seconds"),
    ("tiny float retransmit timeout", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\n'
                                                                       'retransmit_timeout = 0.05'),
     "retransmit_timeout", "connections.site.retransmit_timeout", "0.05 is outside 0.1..3600 seconds"),
    ("nan retransmit timeout", ("workers = 1", "workers = 1\nretransmit_timeout = nan"), "retransmit_timeout",
     "gateway.retransmit_timeout", "nan is outside"),
    ("bad retransmit duration", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\n'
                                                                  'retransmit_timeout = "4 sec"'),
     "retransmit_timeout", "connections.site.retransmit_timeout", "is not a duration"),
    ("too many tries", ("workers = 1", "workers = 1\nretransmit_tries = 101"), "retransmit_tries",
     "gateway.retransmit_tries", "101 is outside 0..100"),
    ("tries as a string", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nretransmit_tries = "5"'),
     "retransmit_tries", "connections.site.retransmit_tries", "expected an integer, got string '5'"),
    ("retransmission in a manual connection", ((PSK_CONN, (EXAMPLES / "gwA.toml").read_text().split("[gateway]")[1]
                                                .split("\n", 5)[5]),
                                               ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\n'
                                                                                'retransmit_tries = 3')),
     "retransmit_tries", "connections.site.retransmit_tries", "only for IKE connections"),
    ("unknown dpd_action", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25"]\n'
                                                                  'dpd_action = "hold"'),
     "dpd_action", "connections.site.children.net.dpd_action", "'hold' is not one of clear | restart | trap"),
]


def _apply(changes) -> str:
    text = HEAD + PSK_CONN + SECRETS
    for old, new in (changes if isinstance(changes[0], tuple) else (changes,)):
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize("change,where,key,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_ike_config(tmp_path, change, where, key, fragment):
    text = _apply(change)
    assert_problem(write(tmp_path, text), text, where, key, fragment)


def test_short_psk_warns(tmp_path):
    c = load(write(tmp_path, _apply((SECRET, "short"))))
    assert [w.key for w in c.warnings] == ["secrets.ike.0.secret"]
    assert "RFC 7296 §2.15" in c.warnings[0].message


def test_secrets_file(tmp_path):
    write(tmp_path, SECRETS, "secrets.toml", 0o600)
    text = 'secrets_file = "secrets.toml"\n' + HEAD + PSK_CONN
    path = write(tmp_path, text, mode=0o644)  # no secrets here: may be world-readable
    [conn] = load(path).ike_connections()
    assert conn.local.psk == b"a pre-shared key of 32 bytes!!!!"
    assert load(path).warnings == ()


def test_secrets_file_readable_by_others_is_refused(tmp_path):
    secrets = write(tmp_path, SECRETS, "secrets.toml", 0o644)
    text = 'secrets_file = "secrets.toml"\n' + HEAD + PSK_CONN
    path = write(tmp_path, text)
    found = problems(path)
    assert f"{path}:1: secrets_file: {secrets} is mode 0644: it holds secrets and must not be readable by group " \
           f"or others; chmod 600 {secrets}" in found


def test_problems_in_the_secrets_file_name_that_file(tmp_path):
    bad = SECRETS.replace("secret =", "secrte =")
    secrets = write(tmp_path, bad, "secrets.toml", 0o400)
    path = write(tmp_path, 'secrets_file = "secrets.toml"\n' + HEAD + PSK_CONN)
    found = problems(path)
    assert any(p.startswith(f"{secrets}:{line_of(bad, 'ike =')}: secrets.ike.0.secrte: unknown key") for p in found)


def test_inline_secrets_in_a_readable_file_warn(tmp_path):
    c = load(write(tmp_path, HEAD + PSK_CONN + SECRETS, mode=0o640))
    assert [w.key for w in c.warnings] == ["secrets"] and "mode 0640" in c.warnings[0].message


# --- certificates ---------------------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                      "Example")])


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, ca: bool, san: list | None = None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


@pytest.fixture
def pki(tmp_path):
    """A throwaway CA and two gateway certificates: gwA with ECDSA P-256 (PEM), gwB with Ed25519 (DER)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name("Test CA"), ca_key, _name("Test CA"), ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keys = {"gwA": ec.generate_private_key(ec.SECP256R1()), "gwB": ed25519.Ed25519PrivateKey.generate()}
    certs = {}
    for gw, key in keys.items():
        certs[gw] = _cert(_name(gw), key, ca.subject, ca_key, ca=False,
                          san=[x509.DNSName(f"{gw}.example.org")])
    (tmp_path / "gwA.pem").write_bytes(certs["gwA"].public_bytes(serialization.Encoding.PEM))
    (tmp_path / "gwB.der").write_bytes(certs["gwB"].public_bytes(serialization.Encoding.DER))
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    write_key = {"gwA": ("gwA.key", pem), "gwB": ("gwB.key.der", der)}
    for gw, (name, fmt) in write_key.items():
        (tmp_path / name).write_bytes(keys[gw].private_bytes(*fmt))
        (tmp_path / name).chmod(0o600)
    return {"ca": ca, "certs": certs, "keys": keys}


def cert_conn(local: str, remote: str, cert: str, key: str, local_id: str = "", remote_id: str = "") -> str:
    remote_octet = "2" if local == "A" else "1"
    local_octet = "1" if local == "A" else "2"
    ids = f'id = "{local_id}"\n' if local_id else ""
    rid = f'id = "{remote_id}"\n' if remote_id else ""
    return HEAD + f"""
[connections.site]
local_addrs = ["192.0.2.{local_octet}"]
remote_addrs = ["192.0.2.{remote_octet}"]
[connections.site.local]
auth = "pubkey"
{ids}certs = ["{cert}"]
private_key = "{key}"
[connections.site.remote]
auth = "pubkey"
{rid}cacerts = ["ca.pem"]
[connections.site.children.net]
local_ts = ["dynamic"]
remote_ts = ["dynamic"]
"""


def test_certificate_pair(tmp_path, pki):
    a = load(write(tmp_path, cert_conn("A", "B", "gwA.pem", "gwA.key", remote_id="CN=gwB, O=Example"), "a.toml"))
    b = load(write(tmp_path, cert_conn("B", "A", "gwB.der", "gwB.key.der", local_id="gwB.example.org"), "b.toml"))
    assert a.warnings == b.warnings == ()
    [ca], [cb] = a.ike_connections(), b.ike_connections()
    der = serialization.Encoding.DER
    assert ca.local.method == ca.remote.method == AuthMethod.PUBKEY
    assert ca.local.certs == (pki["certs"]["gwA"].public_bytes(der),)  # PEM on disk, DER in the config
    assert cb.local.certs == (pki["certs"]["gwB"].public_bytes(der),)
    assert ca.remote.cacerts == cb.remote.cacerts == (pki["ca"].public_bytes(der),)
    assert serialization.load_pem_private_key(ca.local.private_key, None).private_numbers() == \
        pki["keys"]["gwA"].private_numbers()
    assert ca.local.psk == b"" and "BEGIN" not in repr(ca.local)
    # no local id: the certificate's subject; the configured remote DN is the same DER
    assert ca.local.identity.id_type == IdType.DER_ASN1_DN
    assert ca.local.identity.data == pki["certs"]["gwA"].subject.public_bytes()
    assert ca.remote.identity.data == pki["certs"]["gwB"].subject.public_bytes()
    assert cb.local.identity == Identity(IdType.FQDN, b"gwB.example.org", "gwB.example.org")
    assert cb.remote.identity is None  # any identity the CA vouches for
    [child] = ca.children
    assert child.local_ts == (TrafficSelector(ipaddress.ip_network("192.0.2.1/32")),)


def test_local_id_not_in_the_certificate_warns(tmp_path, pki):
    c = load(write(tmp_path, cert_conn("A", "B", "gwA.pem", "gwA.key", local_id="other.example.org")))
    assert [w.key for w in c.warnings] == ["connections.site.local.id"]
    assert "RFC 4945" in c.warnings[0].message


@pytest.mark.parametrize("change,key,fragment", [
    (('"gwA.key"', '"absent.key"'), "private_key", "cannot read"),
    (('"gwA.pem"', '"absent.pem"'), "certs", "cannot read"),
    (('"gwA.pem"', '"gwA.key"'), "certs", "is not a PEM or DER X.509 certificate"),
    (('"gwA.key"', '"gwB.key.der"'), "private_key", "does not belong to our certificate CN=gwA, O=Example"),
    (('certs = ["gwA.pem"]\n', ""), "certs", "missing; pubkey authentication needs our certificate"),
    (('private_key = "gwA.key"\n', ""), "private_key", "missing (required)"),
    (('cacerts = ["ca.pem"]\n', ""), "cacerts", "missing; pubkey authentication of the peer needs trust anchors"),
])
def test_certificate_problems(tmp_path, pki, change, key, fragment):
    text = cert_conn("A", "B", "gwA.pem", "gwA.key").replace(*change)
    path = write(tmp_path, text)
    side = "remote" if key == "cacerts" else "local"
    where = f"\n{key} =" if f"\n{key} =" in text else f"[connections.site.{side}]"
    where = where.lstrip("\n") if where.startswith("[") else where
    assert_problem(path, text, where, f"connections.site.{side}.{key}", fragment)


def test_private_key_readable_by_others_is_refused(tmp_path, pki):
    (tmp_path / "gwA.key").chmod(0o644)
    text = cert_conn("A", "B", "gwA.pem", "gwA.key")
    assert_problem(write(tmp_path, text), text, "private_key", "connections.site.local.private_key",
                   f"{tmp_path / 'gwA.key'} is mode 0644: it holds secrets and must not be readable by group or "
                   f"others; chmod 600")


def test_encrypted_private_key_is_refused(tmp_path, pki):
    enc = serialization.BestAvailableEncryption(b"pw")
    (tmp_path / "gwA.key").write_bytes(pki["keys"]["gwA"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    text = cert_conn("A", "B", "gwA.pem", "gwA.key")
    assert_problem(write(tmp_path, text), text, "private_key", "connections.site.local.private_key", "encrypted")


# --- liveness and retransmission: the keys, and the detection time the module docstring promises -------------------

def test_retransmission_and_dpd_keys_reach_the_ike_core(tmp_path):
    text = _apply((("workers = 1", 'workers = 1\nretransmit_timeout = "2s"\nretransmit_tries = 7'),
                   ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\ndpd_delay = "1m"'),
                   ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25"]\ndpd_action = "trap"')))
    text += PSK_CONN.replace("site", "other").replace("198.51.100.", "203.0.113.").replace(
        'remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nretransmit_timeout = 0.5\nretransmit_tries = 0')
    text = text.replace("[secrets]", "").replace("ike = [", "[secrets]\nike = [")  # keep [secrets] last
    site, other = load(write(tmp_path, text)).ike_connections()
    # the gateway's values are the connections' defaults; a connection's own keys win
    assert (site.dpd_delay, site.retransmit_timeout, site.retransmit_tries) == (60.0, 2.0, 7)
    assert site.children[0].dpd_action == DpdAction.TRAP
    assert (other.dpd_delay, other.retransmit_timeout, other.retransmit_tries) == (0.0, 0.5, 0)
    assert other.children[0].dpd_action == DpdAction.CLEAR


def test_retransmission_defaults_are_strongswans(tmp_path):
    [conn] = load(write(tmp_path, HEAD + PSK_CONN + SECRETS)).ike_connections()
    # strongswan.conf: charon.retransmit_timeout = 4.0, charon.retransmit_tries = 5
    # (docs.strongswan.org/docs/latest/config/retransmission.html)
    assert (conn.retransmit_timeout, conn.retransmit_tries) == (4.0, 5)


def _mirror(text: str) -> str:
    """PSK_CONN as gateway B sees it: addresses, identities and selectors swapped."""
    for a, b in (("192.0.2.1", "192.0.2.2"), ("gwA", "gwB"), ("198.51.100.0/25", "198.51.100.128/25")):
        text = text.replace(a, "\0").replace(b, a).replace("\0", b)
    return text


class _Peers:
    """Two IkeManagers built from loaded configurations, on fake time; B can die (drop everything from then)."""

    def __init__(self, a_conns, b_conns, now: float):
        self.a, self.b = IkeManager(a_conns), IkeManager(b_conns)
        self.a.strict = self.b.strict = True
        self.now = now
        self.b_dead_at = float("inf")
        self.events: list[tuple[float, object]] = []  # A's events with the time they appeared

    def pump(self) -> None:
        for _ in range(50):
            out_a, out_b = self.a.datagrams_to_send(), self.b.datagrams_to_send()
            if not out_a and not out_b:
                break
            if self.now < self.b_dead_at:
                for data, src, dst in out_a:
                    self.b.receive_datagram(data, dst, src, self.now)
                for data, src, dst in out_b:
                    self.a.receive_datagram(data, dst, src, self.now)
        while (ev := self.a.next_event()) is not None:
            self.events.append((self.now, ev))

    def run_until(self, end: float) -> None:
        while True:
            alive = self.now < self.b_dead_at
            due = [t for t in (self.a.get_timer(), self.b.get_timer() if alive else None) if t is not None]
            if not due or min(due) > end:
                break
            self.now = max(self.now, min(due))
            self.a.handle_timer(self.now)
            if self.now < self.b_dead_at:
                self.b.handle_timer(self.now)
            self.pump()
        self.now = end


@settings(max_examples=40, deadline=None)
@given(timers=st.sampled_from([("2s", "1s", 3), ("30s", "4s", 5), (5, 0.5, 0)]),
       kill_after=st.floats(0.0, 3.0))
def test_dead_peer_is_noticed_within_the_documented_time(tmp_path_factory, timers, kill_after):
    """The module docstring's promise, through the IKE core: with the peer dead from `kill` on, A declares it
    dead no earlier than the retransmission schedule sum(timeout * 1.8**n, n = 0..tries) after the kill and no
    later than dpd_delay plus that sum; its children go down with it."""
    dpd, timeout, tries = timers
    keys = f"\ndpd_delay = {dpd!r}\nretransmit_timeout = {timeout!r}\nretransmit_tries = {tries}".replace("'", '"')
    tmp = tmp_path_factory.mktemp("dpd")
    a_text = _apply(('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]' + keys))
    [a] = load(write(tmp, a_text, "a.toml")).ike_connections()
    [b] = load(write(tmp, HEAD + _mirror(PSK_CONN + SECRETS), "b.toml")).ike_connections()
    peers = _Peers([a], [b], now=1_767_225_600.0)
    peers.a.initiate("site", None, peers.now)
    peers.pump()
    assert [type(e) for _t, e in peers.events] == [IkeUp, ChildUp], peers.events
    # Kill B somewhere in the liveness cycle: after 0 to 3 dpd_delays of a healthy tunnel.
    kill = peers.now + kill_after * a.dpd_delay
    peers.run_until(kill)
    assert not any(isinstance(e, Failure) for _t, e in peers.events), "a live peer was declared dead"
    peers.b_dead_at = kill
    schedule = sum(a.retransmit_timeout * 1.8 ** n for n in range(a.retransmit_tries + 1))
    peers.run_until(kill + a.dpd_delay + schedule + 1.0)
    [(noticed, failure)] = [(t, e) for t, e in peers.events if isinstance(e, Failure)]
    assert "no response to INFORMATIONAL" in failure.reason
    assert schedule - 1e-6 <= noticed - kill <= a.dpd_delay + schedule + 1e-6, (noticed - kill, schedule)
    assert any(isinstance(e, ChildDown) and t == noticed for t, e in peers.events)
    assert peers.a.ike_sas() == []


def test_rsa_pss_reaches_the_core_and_is_refused_for_a_non_rsa_key(tmp_path, pki):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert(_name("gwR"), rsa_key, pki["ca"].subject, ca_key, ca=False)
    (tmp_path / "gwR.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "gwR.key").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (tmp_path / "gwR.key").chmod(0o600)
    text = cert_conn("A", "B", "gwR.pem", "gwR.key").replace('private_key = "gwR.key"\n',
                                                               'private_key = "gwR.key"\nrsa_pss = true\n')
    [conn] = load(write(tmp_path, text, "r.toml")).ike_connections()
    assert conn.local.rsa_pss is True
    ec_text = cert_conn("A", "B", "gwA.pem", "gwA.key").replace('private_key = "gwA.key"\n',
                                                                  'private_key = "gwA.key"\nrsa_pss = true\n')
    assert_problem(write(tmp_path, ec_text, "e.toml"), ec_text, "rsa_pss", "connections.site.local.rsa_pss",
                   "only for an RSA key")
