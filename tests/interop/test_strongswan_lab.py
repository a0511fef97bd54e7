"""strongSwan against strongSwan in the lab: proves the harness (xdpsec/labswan.py) before xdpsec is the peer.

Two charons on gwA and gwB protect hostA's and hostB's networks (tunnel mode, IKE
aes128gcm16-prfsha256-x25519, ESP aes128gcm16), authenticated with a PSK or with ECDSA P-256 certificates
from a CA made here with `cryptography`. What the interop tests will rely on is checked from outside the
daemons: the capture on the wire bridge sees nothing but ESP-in-UDP on port 4500 (RFC 3948), the SAs listed
over vici carry the negotiated algorithms, and the keys parsed from charon's log decrypt the captured packets
with scapy, an implementation independent of both strongSwan and xdpsec.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from xdpsec.labswan import SwanError, parse_keys, start_charon, swanctl_conn

pytestmark = pytest.mark.interop

IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"
NAT_T_PORT = 4500  # RFC 3948 §2.1: UDP-encapsulated ESP and IKE share port 4500
CONN = "s2s"
CHILD = "net"
PSK = bytes(range(32))
GATEWAYS = ("gwA", "gwB")


# -- credentials -----------------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


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
def pki() -> dict[str, dict[str, bytes]]:
    """A CA and a certificate per gateway (CN=gwA, CN=gwB), ECDSA P-256: node -> certs/secrets for charon."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("lab CA", ca_key, "lab CA", ca_key, ca=True)
    creds = {}
    for node in GATEWAYS:
        key = ec.generate_private_key(ec.SECP256R1())
        creds[node] = {
            "certs": {f"x509/{node}.pem": _cert(node, key, "lab CA", ca_key, ca=False), "x509ca/ca.pem": ca},
            "secrets": {f"private/{node}.pem": _pem_key(key)},
        }
    return creds


# -- the tunnel ------------------------------------------------------------------------------------------


def _conf(lab, node: str, peer: str, auth: str, esp: str = ESP_PROPOSAL) -> str:
    me, other = lab.addr[node], lab.addr[peer]
    ids = {"local_id": me["wan_v4"], "remote_id": other["wan_v4"], "psk": PSK} if auth == "psk" else {
        "local_id": f"CN={node}", "remote_id": f"CN={peer}", "certs": f"{node}.pem", "cacerts": "ca.pem"}
    return swanctl_conn(CONN, local_addrs=me["wan_v4"], remote_addrs=other["wan_v4"], auth=auth,
                        proposals=IKE_PROPOSAL, esp_proposals=esp, child=CHILD,
                        local_ts=me["lan_net_v4"], remote_ts=other["lan_net_v4"], **ids)


@pytest.fixture(params=["psk", "pubkey"])
def tunnel(request, swan_lab, pki):
    """charon on gwA and gwB, the child initiated from gwA: (lab, {node: SwanPeer})."""
    auth = request.param
    peers = {}
    for node, peer in (GATEWAYS, GATEWAYS[::-1]):
        creds = pki[node] if auth == "pubkey" else {}
        peers[node] = start_charon(swan_lab, node, _conf(swan_lab, node, peer, auth), **creds)
    peers["gwA"].initiate(CHILD)
    yield swan_lab, peers
    for peer in peers.values():
        peer.stop()


def _child(sas: dict) -> dict:
    """The one INSTALLED child (after a rekeying the old one stays listed as DELETED for 5 s)."""
    (child,) = [c for c in sas[CONN]["child-sas"].values() if c["state"] == "INSTALLED"]
    return child


def _sa(keys: dict, spi: int, src: str, dst: str) -> SecurityAssociation:
    """scapy's view of one direction: tunnel mode, AES-GCM, the 4-byte salt after the key (RFC 4106 §8.1)."""
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=keys,
                               tunnel_header=IP(src=src, dst=dst),
                               nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT))


def test_traffic_crosses_the_wire_only_as_decryptable_esp_in_udp(tunnel):
    lab, peers = tunnel
    gw_a, gw_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    host_a, host_b = lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0", filter="ip")
    assert lab.ping("hostA", host_b, count=3).ok
    packets = [p for p in rdpcap(str(cap.stop())) if IP in p]

    # libipsec fakes a NAT (NAT_DETECTION_SOURCE_IP), so ESP is always in UDP 4500; nothing in clear.
    flows = {(p[IP].src, p[IP].dst, p[IP].proto, p[UDP].sport, p[UDP].dport) if UDP in p else (p[IP].src,
             p[IP].dst, p[IP].proto) for p in packets}
    assert flows <= {(gw_a, gw_b, 17, NAT_T_PORT, NAT_T_PORT), (gw_b, gw_a, 17, NAT_T_PORT, NAT_T_PORT)}
    esp = [p for p in packets if ESP in p]
    assert len(esp) >= 6  # three requests, three replies

    (a_keys,) = [k for k in peers["gwA"].keys() if k["kind"] == "child"]
    outbound = {gw_a: _sa(a_keys["encr_out"], a_keys["spi_out"], gw_a, gw_b),
                gw_b: _sa(a_keys["encr_in"], a_keys["spi_in"], gw_b, gw_a)}
    inner = [outbound[p[IP].src].decrypt(p[IP]) for p in esp]
    seen = {(i[IP].src, i[IP].dst, i[ICMP].type) for i in inner}
    assert seen == {(host_a, host_b, 8), (host_b, host_a, 0)}  # echo request (8), echo reply (0)


def test_list_sas_shows_the_negotiated_algorithms(tunnel):
    _lab, peers = tunnel
    for node, initiator in (("gwA", "yes"), ("gwB", None)):
        ike = peers[node].list_sas()[CONN]
        assert ike["state"] == "ESTABLISHED"
        assert ike.get("initiator") == initiator
        assert (ike["encr-alg"], ike["encr-keysize"], ike["prf-alg"], ike["dh-group"]) == (
            "AES_GCM_16", "128", "PRF_HMAC_SHA2_256", "CURVE_25519")
        assert (ike["local-port"], ike["remote-port"]) == (str(NAT_T_PORT), str(NAT_T_PORT))
        child = _child(peers[node].list_sas())
        assert (child["state"], child["mode"], child["protocol"], child["encap"]) == (
            "INSTALLED", "TUNNEL", "ESP", "yes")
        assert (child["encr-alg"], child["encr-keysize"]) == ("AES_GCM_16", "128")
        assert "integ-alg" not in child  # AEAD: no separate integrity transform (RFC 4106 §8.1)


def test_keys_from_the_logs_mirror_each_other_and_match_the_listed_spis(tunnel):
    _lab, peers = tunnel
    (a,) = [k for k in peers["gwA"].keys() if k["kind"] == "child"]
    (b,) = [k for k in peers["gwB"].keys() if k["kind"] == "child"]
    assert (a["initiator"], b["initiator"]) == (True, False)
    assert (a["spi_out"], a["spi_in"]) == (b["spi_in"], b["spi_out"])
    assert (a["encr_out"], a["encr_in"]) == (b["encr_in"], b["encr_out"])
    assert len(a["encr_out"]) == 16 + 4  # AES-128 key and the GCM salt
    assert a["encr_out"] != a["encr_in"]
    assert a["integ_out"] == a["integ_in"] == b""
    child = _child(peers["gwA"].list_sas())
    assert (int(child["spi-out"], 16), int(child["spi-in"], 16)) == (a["spi_out"], a["spi_in"])
    ike_a = [k for k in peers["gwA"].keys() if k["kind"] == "ike"]
    ike_b = [k for k in peers["gwB"].keys() if k["kind"] == "ike"]
    assert len(ike_a) == 1 and ike_a == ike_b
    assert len(ike_a[0]["SK_ei"]) == 16 + 4 and ike_a[0]["SK_ai"] == b""
    assert ike_a[0]["SK_ei"] != ike_a[0]["SK_er"]


def test_cbc_hmac_keys_decrypt_and_authenticate_captured_packets(swan_lab):
    lab = swan_lab
    peers = {node: start_charon(lab, node, _conf(lab, node, peer, "psk", esp="aes128-sha256"))
             for node, peer in (GATEWAYS, GATEWAYS[::-1])}
    peers["gwA"].initiate(CHILD)
    gw_a, gw_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    cap = lab.capture("wire", "br0", filter=f"udp port {NAT_T_PORT}")
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=2).ok
    esp = [p for p in rdpcap(str(cap.stop())) if ESP in p]
    (keys,) = [k for k in peers["gwA"].keys() if k["kind"] == "child"]
    # AES-128 and HMAC-SHA-256-128, whose key is 32 bytes (RFC 4868 §2.1.1)
    assert (len(keys["encr_out"]), len(keys["integ_out"])) == (16, 32)
    assert (keys["encr_out"], keys["integ_out"]) != (keys["encr_in"], keys["integ_in"])
    out = {gw_a: (keys["spi_out"], keys["encr_out"], keys["integ_out"], gw_b),
           gw_b: (keys["spi_in"], keys["encr_in"], keys["integ_in"], gw_a)}
    for packet in esp:
        spi, encr, integ, dst = out[packet[IP].src]
        sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-CBC", crypt_key=encr, auth_algo="SHA2-256-128",
                                 auth_key=integ, tunnel_header=IP(src=packet[IP].src, dst=dst),
                                 nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT))
        assert ICMP in sa.decrypt(packet[IP])  # verify=True: the ICV checked with integ
    assert len(esp) >= 4


def test_rekeyed_child_gets_new_spis_and_keys_that_the_log_pairs_correctly(tunnel):
    lab, peers = tunnel
    (old,) = [k for k in peers["gwA"].keys() if k["kind"] == "child"]
    peers["gwB"].rekey(CHILD)  # gwB initiates the CREATE_CHILD_SA: roles swap for the new child
    old_spis = {f"{old['spi_in']:08x}", f"{old['spi_out']:08x}"}
    for node in GATEWAYS:  # the old child is deleted once the new one is installed (RFC 7296 §2.8)
        peers[node].wait_sas(lambda sas: any(c["state"] == "INSTALLED" and c["spi-in"] not in old_spis
                                             for c in sas[CONN]["child-sas"].values()))
    a = [k for k in peers["gwA"].keys() if k["kind"] == "child"]
    b = [k for k in peers["gwB"].keys() if k["kind"] == "child"]
    assert len(a) == len(b) == 2
    assert (a[1]["initiator"], b[1]["initiator"]) == (False, True)
    assert (a[1]["spi_out"], a[1]["encr_out"]) == (b[1]["spi_in"], b[1]["encr_in"])
    assert (a[1]["spi_in"], a[1]["encr_in"]) == (b[1]["spi_out"], b[1]["encr_out"])
    assert a[1]["encr_out"] not in (old["encr_out"], old["encr_in"])
    child = _child(peers["gwA"].list_sas())
    assert (int(child["spi-out"], 16), int(child["spi-in"], 16)) == (a[1]["spi_out"], a[1]["spi_in"])
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=2).ok


def test_terminate_from_the_responder_deletes_both_sides(tunnel):
    lab, peers = tunnel
    route = lab.addr["hostB"]["net_v4"]
    assert route in lab.run("gwA", "ip", "route", "show", "table", "220").stdout
    peers["gwB"].terminate(CONN)
    assert peers["gwB"].list_sas() == {}
    assert peers["gwA"].list_sas() == {}  # gwA got the INFORMATIONAL Delete before gwB's swanctl returned
    assert route not in lab.run("gwA", "ip", "route", "show", "table", "220").stdout
    assert "received DELETE for IKE_SA" in peers["gwA"].log()


@pytest.mark.parametrize(("conf", "message"), [
    ("connections { broken { children { c { mode = bogus } } } }\n",
     "loading connection 'broken' failed: invalid value for: mode"),
    ("connections { broken {\n", "invalid config file"),  # swanctl itself exits 0 on this one
])
def test_a_bad_swanctl_conf_is_reported_with_swanctls_message(swan_lab, conf, message):
    with pytest.raises(SwanError, match=message):
        start_charon(swan_lab, "gwA", conf)


# -- pure: parsing and config text --------------------------------------------------------------------------

# A responder's log excerpt (strongSwan 5.9.8, ike=4 chd=4). A dump is one log call, written out whole, but
# other threads' lines may come between the dumps and the line naming the SA.
RESPONDER_LOG = """\
05:18:33 01[CHD] encryption initiator key => 20 bytes @ 0x7f74f4007b70
05:18:33 01[CHD]    0: 1A D4 C0 DD CA B7 87 A2 2A 91 62 0C 8D A6 6A 96  ........*.b...j.
05:18:33 01[CHD]   16: 52 2C 7E 85                                      R,~.
05:18:33 07[NET] sending packet: from 192.0.2.2[4500] to 192.0.2.1[4500] (80 bytes)
05:18:33 07[CHD] encryption initiator key => 4 bytes @ 0x7f74f4007b70
05:18:33 07[CHD]    0: 01 02 03 04                                      ....
05:18:33 01[CHD] encryption responder key => 20 bytes @ 0x7f74f4006280
05:18:33 01[CHD]    0: 4F C4 7F 8A 31 63 AD 05 54 C9 9C 90 82 6D 6B 44  O...1c..T....mkD
05:18:33 01[CHD]   16: 21 3E 92 EC                                      !>..
05:18:33 01[IKE] CHILD_SA net{1} established with SPIs 2603e674_i 7327c39a_o and TS 198.51.100.128/25 === \
198.51.100.0/25
"""


def test_parse_keys_of_a_responder_pairs_keys_with_directions():
    (child,) = parse_keys(RESPONDER_LOG)
    assert child == {
        "kind": "child", "name": "net", "id": 1, "initiator": False,
        "spi_in": 0x2603E674, "spi_out": 0x7327C39A,
        "encr_in": bytes.fromhex("1ad4c0ddcab787a22a91620c8da66a96522c7e85"),
        "encr_out": bytes.fromhex("4fc47f8a3163ad0554c99c90826d6b44213e92ec"),
        "integ_in": b"", "integ_out": b"",
    }


def test_parse_keys_of_an_initiator_swaps_the_directions():
    log = "05:18:33 06[IKE] establishing CHILD_SA net{1}\n" + RESPONDER_LOG.replace("2603e674_i 7327c39a_o",
                                                                                     "7327c39a_i 2603e674_o")
    (child,) = parse_keys(log)
    assert child["initiator"] is True
    assert child["encr_out"].hex().startswith("1ad4c0dd") and child["spi_out"] == 0x2603E674


def test_swanctl_conn_psk_needs_a_secret():
    with pytest.raises(ValueError, match="psk"):
        swanctl_conn("x", local_addrs="192.0.2.1", remote_addrs="192.0.2.2", local_id="a", remote_id="b",
                     local_ts="198.51.100.0/25", remote_ts="198.51.100.128/25")
