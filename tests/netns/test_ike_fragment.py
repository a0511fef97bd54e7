"""IKE fragmentation (RFC 7383) end to end: two xdpsec gateways authenticating with RSA certificates across a
wire whose MTU is 576 octets and which drops IP fragments, as many firewalls and NATs do.

    hostA ── gwA wan0 ══ wa [wire: br0, MTU 576, nftables drops IP fragments] wb ══ wan0 gwB ── hostB
                 192.0.2.1                                                          192.0.2.2

An IKE_AUTH carrying a 2048-bit RSA certificate is about twice what a 576-octet packet holds. With
`fragmentation = no` the kernel fragments it at the IP level, the wire drops the fragments (its counter shows
them) and the tunnel never comes up. With `fragmentation = yes` each side sends IKE fragments that fit, nothing
needs IP fragmentation (the counter stays at zero) and the tunnel carries traffic.
"""

from __future__ import annotations

import datetime
import os
import re
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from xdpsec.labconf import Gateways, PairSpec, render_ike, site_sides, write_pubkey_files

pytestmark = pytest.mark.netns

PATH_MTU = 576  # RFC 791's minimum: every IPv4 path carries it
WIRE_PORTS = (("gwA", "wan0"), ("wire", "wa"), ("wire", "wb"), ("gwB", "wan0"))
#: On the wire's bridge: drop every IPv4 fragment (More Fragments set or a non-zero offset) and count it.
NO_IP_FRAGMENTS = """
table bridge xst_frag {
    counter ip_fragments { }
    chain forward {
        type filter hook forward priority 0; policy accept;
        ether type ip ip frag-off & 0x3fff != 0 counter name ip_fragments drop
    }
}
"""


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def rsa_pki() -> dict[str, bytes]:
    """A CA and RSA-2048 certificates CN=gwA, CN=gwB (PEM): big enough that IKE_AUTH needs fragmenting."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out = {"ca": _cert("xdpsec fragment CA", ca_key, "xdpsec fragment CA", ca_key, ca=True)}
    for node in ("gwA", "gwB"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        out[node] = _cert(node, key, "xdpsec fragment CA", ca_key, ca=False)
        out[f"{node}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return out


@pytest.fixture
def narrow_wire(make_lab):
    """The site-to-site lab with a 576-octet wire that drops IP fragments."""
    lab = make_lab(topology="site")
    for node, ifname in WIRE_PORTS:
        lab.run(node, "ip", "link", "set", "dev", ifname, "mtu", str(PATH_MTU))
    lab.run("wire", "nft", "-f", "-", input=NO_IP_FRAGMENTS)
    return lab


@pytest.fixture
def gateways(narrow_wire, tmp_path, rsa_pki):
    """gateways(fragmentation) -> Gateways: gwA (initiator) and gwB with certificates, started and ready."""
    started: list[Gateways] = []

    def start(fragmentation: str) -> Gateways:
        lab = narrow_wire
        spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1)
        sides = dict(zip(("gwA", "gwB"), site_sides(lab, workers=1), strict=True))
        gws = Gateways(lab)
        started.append(gws)
        for node, peer in (("gwA", "gwB"), ("gwB", "gwA")):
            creds = write_pubkey_files(tmp_path / "creds", node, cert_pem=rsa_pki[node], key_pem=rsa_pki[f"{node}.key"],
                                       ca_pem=rsa_pki["ca"], local_id=f"CN={node}", remote_id=f"CN={peer}")
            text = render_ike(sides[node], spec, pubkey=creds, initiator=node == "gwA",
                              state_dir=str(tmp_path / f"state-{node}"),
                              conn_keys=f'fragmentation = "{fragmentation}"')
            path = tmp_path / f"{node}.toml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            gws.start(node, path, sides[node].instance)
        gws.wait_ready()
        return gws

    yield start
    for gws in started:
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, {n: gws.log(n) for n in codes})


def ip_fragments_dropped(lab) -> int:
    out = lab.run("wire", "nft", "list", "counter", "bridge", "xst_frag", "ip_fragments").stdout
    return int(re.search(r"packets (\d+)", out).group(1))


def wait_for_sas(gws, node: str, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gws.query(node, "sas")
        if len(rows) == count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_certificate_tunnel_comes_up_over_576_octets_with_ike_fragmentation(narrow_wire, gateways):
    lab, gws = narrow_wire, gateways("yes")
    assert len(wait_for_sas(gws, "gwA", 2, timeout=20)) == 2, gws.log("gwA")
    assert len(wait_for_sas(gws, "gwB", 2, timeout=5)) == 2, gws.log("gwB")
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=5, timeout=8).received >= 4
    assert ip_fragments_dropped(lab) == 0  # every IKE message fitted the path: nothing was fragmented by IP


def test_without_ike_fragmentation_the_same_wire_stops_ike_auth(narrow_wire, gateways):
    """The control experiment: the certificates do need fragmenting, and IP fragments do not get through."""
    lab, gws = narrow_wire, gateways("no")
    assert wait_for_sas(gws, "gwA", 2, timeout=10) == [], gws.log("gwA")
    assert gws.query("gwB", "sas") == []
    assert ip_fragments_dropped(lab) >= 2  # IKE_AUTH (and its retransmission) went out in IP fragments
