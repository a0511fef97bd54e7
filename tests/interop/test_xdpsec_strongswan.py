"""xdpsec against strongSwan 5.9 (charon with kernel-libipsec) in the namespace lab: the interop matrix.

gwA runs xdpsec, gwB runs charon. Every combination of who initiates (xdpsec or charon), how the peers
authenticate (PSK, or ECDSA P-256 certificates CN=gwA/CN=gwB issued by a CA made here with `cryptography`),
the ESP transform and the IKE key exchange is one case: 2 x 2 x 4 x 3 = 48. The libipsec peer fakes a NAT, so
every case also exercises NAT detection, the float to port 4500 and ESP-in-UDP child SAs (RFC 3948).

Each case checks, from outside both daemons: ping both ways and a TCP transfer both ways with the SHA-256 of
what was sent and received compared; that the capture on the wire bridge holds nothing between the gateways
but UDP 4500 <-> 4500 and never the plaintext marker; and that a Delete (RFC 7296 §1.4.1) leaves neither side
with any SA. Half the cases delete from strongSwan, half from xdpsec, spread so that every initiator, auth
method, ESP transform and key exchange is seen with both.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from xdpsec.control import request, socket_path
from xdpsec.labconf import (
    MARKER,
    Gateways,
    PairSpec,
    lab_psk,
    render_ike,
    site_sides,
    wire_report,
    write_pubkey_files,
)
from xdpsec.labswan import SwanError, start_charon, swanctl_conn

pytestmark = pytest.mark.interop

NAT_T_PORT = 4500  # RFC 3948 §2.1
TRANSFER = 2**20  # bytes each way: enough for hundreds of full-size ESP packets, small enough for 48 cases
LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
DELETE_TIMEOUT = 5.0  # a Delete is one INFORMATIONAL exchange: both sides are clean long before this

ROLES = ("xdpsec-initiates", "strongswan-initiates")
AUTHS = ("psk", "pubkey")
ESPS = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256")
GROUPS = ("x25519", "ecp256", "modp3072")
DELETERS = ("swan-deletes", "xdpsec-deletes")


def _cases():
    for (r, role), (a, auth), (e, esp), (g, group) in itertools.product(*map(enumerate, (ROLES, AUTHS, ESPS,
                                                                                       GROUPS))):
        # The parity of the index sum splits every (role, auth) block 6/6 and every (esp, group) pair 2/2.
        deleter = DELETERS[(r + a + e + g) % 2]
        yield pytest.param(role == ROLES[0], auth, esp, group, deleter == DELETERS[1],
                           id=f"{role}-{auth}-{esp}-{group}-{deleter}")


CASES = list(_cases())


def ike_proposal(esp: str, group: str) -> str:
    """An IKE proposal of the same family as the ESP one (AEAD or cipher + HMAC) with the case's key exchange."""
    aead = "gcm" in esp or "chacha" in esp
    return f"aes128gcm16-prfsha256-{group}" if aead else f"aes128-sha256-{group}"


def wait(pred, timeout=20.0, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# -- credentials ----------------------------------------------------------------------------------------------


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    """A CA and ECDSA P-256 end-entity certificates CN=gwA and CN=gwB: {"ca", "gwA", "gwA.key", ...} -> PEM."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    out = {"ca": _cert("xdpsec lab CA", ca_key, "xdpsec lab CA", ca_key, ca=True)}
    for node in ("gwA", "gwB"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[node] = _cert(node, key, "xdpsec lab CA", ca_key, ca=False)
        out[f"{node}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return out


# -- the two gateways -----------------------------------------------------------------------------------------


@pytest.fixture
def mixed(swan_lab, tmp_path, pki):
    """mixed(...) -> (lab, gateways, charon, instance): xdpsec on gwA, strongSwan on gwB, the tunnel up."""
    started = []

    def up(*, auth: str, ike: str, esp: str, xdpsec_initiates: bool):
        lab = swan_lab
        spec = PairSpec(mode="tunnel", proposal=esp, keying="ike", ike_proposal=ike, workers=1)
        a, b = site_sides(lab, workers=spec.workers)
        if auth == "psk":
            psk = lab_psk()
            creds = {"psk": psk}
            swan_auth = {"local_id": b.local_addr, "remote_id": b.remote_addr, "psk": psk.encode()}
            swan_files = {}
        else:
            creds = {"pubkey": write_pubkey_files(tmp_path / "creds", "gwA", cert_pem=pki["gwA"],
                                                  key_pem=pki["gwA.key"], ca_pem=pki["ca"], local_id="CN=gwA",
                                                  remote_id="CN=gwB")}
            swan_auth = {"local_id": "CN=gwB", "remote_id": "CN=gwA", "certs": "gwB.pem", "cacerts": "ca.pem"}
            swan_files = {"certs": {"x509/gwB.pem": pki["gwB"], "x509ca/ca.pem": pki["ca"]},
                          "secrets": {"private/gwB.pem": pki["gwB.key"]}}
        text = render_ike(a, spec, initiator=xdpsec_initiates, state_dir=str(tmp_path / "state"), **creds)
        path = tmp_path / f"{a.instance}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        conf = swanctl_conn("lab", local_addrs=[b.local_addr], remote_addrs=[b.remote_addr], local_ts=b.local_ts,
                            remote_ts=b.remote_ts, auth=auth, proposals=ike, esp_proposals=esp, mode="tunnel",
                            **swan_auth)
        charon = start_charon(lab, "gwB", conf, **swan_files)
        gws = Gateways(lab)
        gws.start("gwA", path, a.instance)
        started.append((gws, charon))
        gws.wait_ready()
        if not xdpsec_initiates:
            try:
                charon.initiate("net")
            except SwanError as e:
                raise SwanError(f"{e}\n--- xdpsec on gwA:\n{gws.log('gwA')}") from e
        return lab, gws, charon, a.instance

    yield up
    for gws, charon in started:
        charon.stop()
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, gws.log("gwA"))


# -- checks ---------------------------------------------------------------------------------------------------


def strays(pcap, gw_a: str, gw_b: str) -> list[str]:
    """Every IP packet on the wire that is not UDP 4500 <-> 4500 between the two gateways, summarised.

    wire_report only looks at packets between the gateways; hostA <-> hostB in clear (what the lab's gateways
    forward without a tunnel, see labswan) would escape it, so anything else with an IP header counts here.
    """
    out = []
    for pkt in rdpcap(str(pcap)):
        if IPv6 in pkt:
            # Link-local sources (RFC 4291 §2.5.6) and :: are neighbour discovery and MLD between the bridge's
            # ports: never forwarded, so never a leak of what a tunnel carries.
            src = ipaddress.IPv6Address(pkt[IPv6].src)
            if src not in LINK_LOCAL_V6 and not src.is_unspecified:
                out.append(pkt.summary())
            continue
        if IP not in pkt:
            continue  # ARP
        ip = pkt[IP]
        if {ip.src, ip.dst} == {gw_a, gw_b} and UDP in pkt and pkt[UDP].sport == pkt[UDP].dport == NAT_T_PORT:
            continue
        out.append(pkt.summary())
    return out


def no_sas_left(gws: Gateways, charon) -> tuple[list, list, dict]:
    """(xdpsec child SAs, xdpsec IKE SAs, charon's SAs): all empty once a Delete has gone through."""
    return gws.query("gwA", "sas"), gws.query("gwA", "ike-sas"), charon.list_sas()


@pytest.mark.parametrize("xdpsec_initiates,auth,esp,group,xdpsec_deletes", CASES)
def test_tunnel_with_strongswan(mixed, xdpsec_initiates, auth, esp, group, xdpsec_deletes):
    lab, gws, charon, instance = mixed(auth=auth, ike=ike_proposal(esp, group), esp=esp,
                                       xdpsec_initiates=xdpsec_initiates)
    rows = wait(lambda: len(gws.query("gwA", "sas")) == 2 and gws.query("gwA", "sas"))
    assert rows, (gws.log("gwA"), charon.log()[-3000:])
    out = next(r for r in rows if r["direction"] == "out")
    assert out["encap"] == "4500->4500", out  # libipsec fakes a NAT: ESP-in-UDP
    swan_ike = charon.list_sas()["lab"]
    assert swan_ike["state"] == "ESTABLISHED", swan_ike
    (swan_child,) = swan_ike["child-sas"].values()
    assert swan_child["state"] == "INSTALLED", swan_child

    gw_a, gw_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    cap = lab.capture("wire", "br0")
    for src, dst in (("hostA", lab.addr["hostB"]["v4"]), ("hostB", lab.addr["hostA"]["v4"])):
        ping = lab.ping(src, dst, count=4, timeout=8)
        assert ping.received >= 3, (src, ping, gws.log("gwA")[-2000:])
        lab.run(src, "ping", "-c", "1", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    there = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"]["v4"], size=TRANSFER, timeout=60)
    assert there.ok, there
    back = lab.tcp_transfer("hostB", "hostA", lab.addr["hostA"]["v4"], size=TRANSFER, timeout=60)
    assert back.ok, back
    pcap = cap.stop()
    seen = wire_report(pcap, gw_a, gw_b)
    assert seen["esp"] > 2 * TRANSFER // 1500 and seen["other"] == 0 and seen["marker"] == 0, seen
    assert strays(pcap, gw_a, gw_b) == []

    if xdpsec_deletes:
        request(socket_path(instance), "terminate", {"conn": "lab"})
    else:
        charon.terminate("lab")
    left = wait(lambda: not any(no_sas_left(gws, charon)), timeout=DELETE_TIMEOUT)
    assert left, (no_sas_left(gws, charon), gws.log("gwA")[-2000:], charon.log()[-3000:])
