"""IKE_SA_INIT + IKE_AUTH between two managers: PSK and certificates, both roles, the errors of §2.21.

Every test writes the exchange it drives as RFC 7296 draws it (§1.2).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP

from tests.exchange.conftest import (
    A_NET,
    B_NET,
    ESP_CBC,
    ESP_GCM,
    GCM,
    child,
    child_up,
    conn_a,
    conn_b,
    psk_round,
    up,
)
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.ike import events
from xdpsec.ike.conf import AuthMethod, AuthRound, IkeProposal
from xdpsec.ike.consts import EncrId, IntegId, KeId, PrfId
from xdpsec.sa import Direction, Mode, SAParams


def assert_mirror(a: events.ChildUp, b: events.ChildUp) -> None:
    """One side's outbound SA is the other's inbound SA: same SPI, keys, transform; selectors crosswise."""
    for out, inb in ((a.out, b.inb), (b.out, a.inb)):
        assert out.direction == Direction.OUT and inb.direction == Direction.IN
        assert (out.spi, out.enc_key, out.integ_key, out.transform) == (inb.spi, inb.enc_key, inb.integ_key,
                                                                         inb.transform)
        assert (out.local_ts, out.remote_ts) == (inb.remote_ts, inb.local_ts)
        assert out.mode == inb.mode
    assert a.out.enc_key != a.inb.enc_key  # §2.17: each direction has its own keys


def assert_carries(sender: SAParams, receiver: SAParams, src: str, dst: str) -> None:
    """A packet protected with `sender` comes out of `receiver` unchanged (xdpsec.esp.mode both ways)."""
    inner = bytes(IP(src=src, dst=dst, ttl=9) / UDP(sport=1234, dport=53) / b"through the tunnel")
    outer = protect(OutboundSA(sender), inner)
    assert unprotect(InboundSA(receiver), outer) == inner


def test_psk_initiator_and_responder_agree_and_interoperate(make_link):
    link = make_link()
    # IKE_SA_INIT  HDR, SAi1, KEi, Ni, N(NAT_DETECTION_*)  -->
    #              <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*)
    # IKE_AUTH     HDR, SK {IDi, IDr, AUTH, N(INITIAL_CONTACT), SAi2, TSi, TSr}  -->
    #              <--  HDR, SK {IDr, AUTH, SAr2, TSi, TSr}
    up(link)
    a_ike, b_ike = link.of("a", events.IkeUp)[0], link.of("b", events.IkeUp)[0]
    assert (a_ike.ispi, a_ike.rspi) == (b_ike.ispi, b_ike.rspi)
    a, b = child_up(link, "a"), child_up(link, "b")
    assert_mirror(a, b)
    assert a.out.local_ts[0].net == A_NET and a.out.remote_ts[0].net == B_NET
    assert a.out.encap is None and a.out.mode == Mode.TUNNEL
    assert a.out.name == "a-to-b/net"
    assert_carries(a.out, b.inb, "198.51.100.1", "198.51.100.129")
    assert_carries(b.out, a.inb, "198.51.100.129", "198.51.100.1")
    # nothing dropped, nothing retransmitted: one IKE SA established on each side, and that is all
    assert link.a.stats == link.b.stats == {"ike_established": 1}
    assert len(link.a.handshakes) == len(link.b.handshakes) == 1


def test_roles_swapped(make_link):
    """B initiates towards A: the same code in the other role."""
    a_conn = conn_a(remote_addrs=())  # A now accepts anyone
    b_conn = conn_b(remote_addrs=(conn_a().local_addrs[0],))
    link = make_link(a_conn, b_conn)
    link.b.initiate("b-from-a", "net", link.now)
    link.settle()
    assert_mirror(child_up(link, "b"), child_up(link, "a"))
    assert_carries(child_up(link, "b").out, child_up(link, "a").inb, "198.51.100.129", "198.51.100.2")


@pytest.mark.parametrize("proposal", [
    IkeProposal(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256, KeId.ECP256),
    IkeProposal(EncrId.CHACHA20_POLY1305, 256, None, PrfId.HMAC_SHA2_512, KeId.CURVE448),
    IkeProposal(EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384, KeId.MODP2048),
])
def test_ike_algorithms(make_link, proposal):
    link = make_link(conn_a(proposals=(proposal,)), conn_b(proposals=(GCM, proposal)))
    up(link)
    assert link.a.ike_sas()[0]["algorithms"]["encr"] == proposal.encr
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_esp_cbc_hmac_child_interoperates(make_link):
    link = make_link(conn_a(children=(child("net", A_NET, B_NET, proposals=(ESP_CBC,)),)),
                     conn_b(children=(child("net", B_NET, A_NET, proposals=(ESP_GCM, ESP_CBC)),)))
    up(link)
    a, b = child_up(link, "a"), child_up(link, "b")
    assert a.out.transform == ESP_CBC.transform and len(a.out.integ_key) == 32
    assert_carries(a.out, b.inb, "198.51.100.1", "198.51.100.129")


def test_wrong_psk_is_authentication_failed(make_link):
    bad = replace(psk_round("a.example"), psk=b"not the secret")
    link = make_link(conn_a(local=bad))
    # IKE_AUTH  HDR, SK {IDi, AUTH(wrong key), SAi2, TSi, TSr}  -->
    #           <--  HDR, SK {N(AUTHENTICATION_FAILED)}
    up(link)
    assert link.of("a", events.Failure)[0].reason == "AUTHENTICATION_FAILED"
    assert "AUTHENTICATION_FAILED" in link.of("b", events.Failure)[0].reason
    for side in "ab":
        assert not link.of(side, events.ChildUp) and not link.of(side, events.IkeUp)
    assert link.a.ike_sas() == [] and link.b.ike_sas() == []


def test_responder_with_wrong_psk_is_rejected_by_initiator(make_link):
    bad = replace(psk_round("b.example"), psk=b"not the secret")
    link = make_link(b_conn=conn_b(local=bad))
    # IKE_AUTH  HDR, SK {IDi, AUTH, SAi2, TSi, TSr}  -->
    #           <--  HDR, SK {IDr, AUTH(wrong key), SAr2, TSi, TSr}
    # INFORMATIONAL  HDR, SK {D(IKE)}  -->     (§2.21.2: the initiator tears down what the responder set up)
    #           <--  HDR, SK {}
    up(link)
    assert "AUTHENTICATION_FAILED" in link.of("a", events.Failure)[0].reason
    assert not link.of("a", events.ChildUp)
    assert link.of("b", events.ChildDown)  # B had installed the child; the Delete removed it
    assert link.a.ike_sas() == [] and link.b.ike_sas() == []


def test_wrong_identity_is_authentication_failed(make_link):
    link = make_link(b_conn=conn_b(remote=psk_round("somebody-else.example")))
    up(link)
    assert link.of("a", events.Failure)[0].reason == "AUTHENTICATION_FAILED"
    assert not link.of("b", events.ChildUp)


def test_no_common_ike_proposal(make_link):
    other = IkeProposal(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256, KeId.CURVE25519)
    link = make_link(b_conn=conn_b(proposals=(other,)))
    # IKE_SA_INIT  HDR, SAi1, KEi, Ni  -->
    #              <--  HDR, N(NO_PROPOSAL_CHOSEN)
    up(link)
    assert link.of("a", events.Failure)[0].reason == "NO_PROPOSAL_CHOSEN"
    assert link.b.stats["error_sent_NO_PROPOSAL_CHOSEN"] == 1
    assert link.a.ike_sas() == [] and link.b.ike_sas() == []


def test_invalid_ke_payload_retry_succeeds(make_link):
    ecp = replace(GCM, ke=KeId.ECP256)
    link = make_link(conn_a(proposals=(GCM, ecp)), conn_b(proposals=(ecp,)))
    link.a.initiate("a-to-b", "net", link.now)
    # IKE_SA_INIT  HDR(A,0), SAi1, KEi(x25519), Ni  -->
    #              <--  HDR(A,0), N(INVALID_KE_PAYLOAD, ecp256)
    first = link.flight()
    link.deliver(first)
    refusal = link.flight()
    assert len(refusal) == 1 and refusal[0].data[8:16] == bytes(8)  # no responder SPI, no state (§1.3)
    assert link.b.ike_sas() == []
    link.deliver(refusal)
    # IKE_SA_INIT  HDR(A,0), SAi1, KEi(ecp256), Ni  -->     (Message ID 0 again, §2.2)
    retry = link.flight()
    assert retry[0].data[20:24] == bytes(4)  # the header's Message ID
    link.deliver(retry)
    link.settle()
    assert link.a.stats["invalid_ke_retry"] == 1
    assert link.a.ike_sas()[0]["algorithms"]["ke"] == KeId.ECP256
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_ts_unacceptable_keeps_ike_sa(make_link):
    elsewhere = child("net", B_NET, conn_a().children[0].remote_ts[0].net)  # B wants B_NET <-> B_NET
    link = make_link(b_conn=conn_b(children=(elsewhere,)))
    # IKE_AUTH  HDR, SK {IDi, AUTH, SAi2, TSi, TSr}  -->
    #           <--  HDR, SK {IDr, AUTH, N(TS_UNACCEPTABLE)}
    up(link)
    assert link.of("a", events.IkeUp) and link.of("b", events.IkeUp)
    assert link.of("a", events.Failure)[0].reason == "child net: TS_UNACCEPTABLE"
    assert not link.of("a", events.ChildUp) and not link.of("b", events.ChildUp)
    assert link.a.ike_sas()[0]["state"] == "established"


def test_child_no_proposal_chosen_keeps_ike_sa(make_link):
    link = make_link(b_conn=conn_b(children=(child("net", B_NET, A_NET, proposals=(ESP_CBC,)),)))
    # IKE_AUTH  HDR, SK {IDi, AUTH, SAi2(GCM), TSi, TSr}  -->
    #           <--  HDR, SK {IDr, AUTH, N(NO_PROPOSAL_CHOSEN)}      (§2.21.2)
    up(link)
    assert link.of("a", events.Failure)[0].reason == "child net: NO_PROPOSAL_CHOSEN"
    assert link.a.ike_sas()[0]["state"] == link.b.ike_sas()[0]["state"] == "established"


def test_narrowing_to_the_responders_policy(make_link):
    wide = child("net", A_NET.supernet(), B_NET.supernet())   # A proposes 198.51.100.0/24 both ways
    link = make_link(conn_a(children=(wide,)))
    # IKE_AUTH  HDR, SK {..., TSi(198.51.100.0/24), TSr(198.51.100.0/24)}  -->
    #           <--  HDR, SK {..., TSi(198.51.100.0/25), TSr(198.51.100.128/25)}     (§2.9)
    up(link)
    a = child_up(link, "a")
    assert [t.net for t in a.out.local_ts] == [A_NET] and [t.net for t in a.out.remote_ts] == [B_NET]
    assert_mirror(a, child_up(link, "b"))


def test_transport_mode(make_link):
    host_a, host_b = conn_a().local_addrs[0], conn_b().local_addrs[0]
    ca = child("host", f"{host_a}/32", f"{host_b}/32", mode=Mode.TRANSPORT)
    cb = child("host", f"{host_b}/32", f"{host_a}/32", mode=Mode.TRANSPORT)
    link = make_link(conn_a(children=(ca,)), conn_b(children=(cb,)))
    # IKE_AUTH  HDR, SK {..., N(USE_TRANSPORT_MODE), SAi2, TSi, TSr}  -->
    #           <--  HDR, SK {..., N(USE_TRANSPORT_MODE), SAr2, TSi, TSr}
    link.a.initiate("a-to-b", "host", link.now)
    link.settle()
    a, b = child_up(link, "a"), child_up(link, "b")
    assert a.out.mode == b.inb.mode == Mode.TRANSPORT
    assert_carries(a.out, b.inb, str(host_a), str(host_b))


def test_certificates(make_link, pki):
    a_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.a_key, certs=(pki.a_cert,))
    b_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.b_key, certs=(pki.b_cert,))
    trust = AuthRound(AuthMethod.PUBKEY, cacerts=(pki.ca_der,))
    link = make_link(conn_a(local=a_round, remote=trust), conn_b(local=b_round, remote=trust))
    # IKE_SA_INIT  HDR, SAi1, KEi, Ni, N(SIGNATURE_HASH_ALGORITHMS)  -->
    #              <--  HDR, SAr1, KEr, Nr, CERTREQ, N(SIGNATURE_HASH_ALGORITHMS)
    # IKE_AUTH     HDR, SK {IDi, CERT, CERTREQ, AUTH, SAi2, TSi, TSr}  -->
    #              <--  HDR, SK {IDr, CERT, AUTH, SAr2, TSi, TSr}
    up(link)
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_certificate_from_untrusted_ca(make_link, pki):
    a_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.a_key, certs=(pki.a_cert,))
    b_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.b_key, certs=(pki.b_cert,))
    link = make_link(conn_a(local=a_round, remote=AuthRound(AuthMethod.PUBKEY, cacerts=(pki.ca_der,))),
                     conn_b(local=b_round, remote=AuthRound(AuthMethod.PUBKEY, cacerts=(pki.rogue_ca_der,))))
    up(link)
    assert link.of("a", events.Failure)[0].reason == "AUTHENTICATION_FAILED"
    assert not link.of("b", events.ChildUp)


def test_cookie_is_echoed(make_link):
    from tests.exchange.conftest import Datagram
    from xdpsec.ike import wire
    from xdpsec.ike.consts import ExchangeType, HeaderFlag, NotifyType, PayloadType

    link = make_link()
    link.a.initiate("a-to-b", "net", link.now)
    (request,) = link.flight()
    # IKE_SA_INIT  HDR, SAi1, KEi, Ni  -->
    #              <--  HDR, N(COOKIE)               (a responder under load, §2.6; forged here)
    cookie = bytes(range(20))
    answer = wire.encode(wire.Message(request.data[:8], bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0,
                                      (wire.Payload(PayloadType.NOTIFY, wire.Notify(NotifyType.COOKIE, data=cookie)),)))
    link.deliver([Datagram("b", answer, request.dst, request.src)])
    # IKE_SA_INIT  HDR, N(COOKIE), SAi1, KEi, Ni  -->
    (retry,) = link.flight()
    first = wire.decode(retry.data).payloads[0]
    assert first.body == wire.Notify(NotifyType.COOKIE, data=cookie)
    link.deliver([retry])
    link.settle()
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_unknown_spi_is_dropped_silently(make_link):
    link = make_link()
    up(link)
    # An INFORMATIONAL request for an IKE SA B never had: header (28 octets) + an SK payload of 32 octets.
    header = b"\x11" * 8 + b"\x22" * 8 + bytes([46, 0x20, 37, 0x08]) + bytes(4) + (60).to_bytes(4, "big")
    data = header + bytes([0, 0, 0, 32]) + bytes(28)
    link.b.receive_datagram(data, (conn_b().local_addrs[0], 500), (conn_a().local_addrs[0], 500), link.now)
    assert link.b.stats["unknown_spi"] == 1 and link.flight() == []  # §2.21.4: no INVALID_IKE_SPI reflection


@pytest.mark.parametrize("pss", [False, True])
def test_rsa_certificate_signs_with_pss_when_configured(make_link, pki, monkeypatch, pss):
    """`rsa_pss = true`: the RSA key signs with RSASSA-PSS (RFC 7427 appendix A), otherwise PKCS#1 v1.5."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from tests.exchange.conftest import _cert, _pem
    from xdpsec.ike.tasks import ike_auth

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("rsa test CA", ca_key, "rsa test CA", ca_key, True)
    a_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    a_cert = _cert("gw-a", a_key, "rsa test CA", ca_key, False)
    der = serialization.Encoding.DER
    seen = []
    real = ike_auth.verify_signature

    def spy(cert, method, data, octets):
        seen.append(bytes(data))
        return real(cert, method, data, octets)

    monkeypatch.setattr(ike_auth, "verify_signature", spy)
    a_round = AuthRound(AuthMethod.PUBKEY, private_key=_pem(a_key), certs=(a_cert.public_bytes(der),), rsa_pss=pss)
    b_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.b_key, certs=(pki.b_cert,))
    link = make_link(conn_a(local=a_round, remote=AuthRound(AuthMethod.PUBKEY, cacerts=(pki.ca_der,))),
                     conn_b(local=b_round, remote=AuthRound(AuthMethod.PUBKEY, cacerts=(ca.public_bytes(der),))))
    up(link)
    assert_mirror(child_up(link, "a"), child_up(link, "b"))
    # RFC 7427 AUTH data: length | AlgorithmIdentifier | signature. A's RSA key: an OID under pkcs-1 (1.2.840.113549.1.1),
    # 10 = id-RSASSA-PSS, 11..13 = sha256/384/512WithRSAEncryption (PKCS#1 v1.5).
    pkcs1 = bytes.fromhex("06092a864886f70d0101")
    a_auth = next(d for d in seen if pkcs1 in d[:20])
    assert (a_auth[a_auth.index(pkcs1) + len(pkcs1)] == 10) == pss, a_auth[:20].hex()
