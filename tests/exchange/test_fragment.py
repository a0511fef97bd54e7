"""IKE fragmentation (RFC 7383) between two managers: certificate authentication over a path that carries
576-octet IP packets and drops anything bigger (as a path does that drops IP fragments), negotiation in every
combination of swanctl's `fragmentation`, and the retransmission rules of §2.6.1 with lost and forged fragments.

    IKE_SA_INIT  HDR, SAi1, KEi, Ni, N(NAT_DETECTION_*), N(IKEV2_FRAGMENTATION_SUPPORTED)  -->
                 <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*), CERTREQ, N(IKEV2_FRAGMENTATION_SUPPORTED)
    IKE_AUTH     HDR, SKF(1/n) {IDi, CERT, CERTREQ, ...}  -->
                 ...
                 HDR, SKF(n/n) {..., SAi2, TSi, TSr}  -->
                 <--  HDR, SKF(1/m) {IDr, CERT, ...}
                 ...
                 <--  HDR, SKF(m/m) {..., TSi, TSr}
"""

from __future__ import annotations

import pytest

from tests.exchange.conftest import Datagram, Link, child_up, conn_a, conn_b
from tests.exchange.test_ike_auth import assert_carries, assert_mirror
from xdpsec.ike import events, fragment, wire
from xdpsec.ike.conf import AuthMethod, AuthRound, Fragmentation, IkeProposal
from xdpsec.ike.consts import EncrId, ExchangeType, HeaderFlag, IntegId, KeId, NotifyType, PayloadType, PrfId
from xdpsec.proposals import parse_ike

#: A 576-octet path (RFC 791's minimum) less the IPv4 and UDP headers: the largest IKE datagram it carries.
PATH_576 = 576 - 20 - 8
CBC = IkeProposal(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256, KeId.CURVE25519)


def cert_link(make_link, pki, a_frag=Fragmentation.YES, b_frag=Fragmentation.YES, nat=False, **kw) -> Link:
    a_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.a_key, certs=(pki.a_cert,))
    b_round = AuthRound(AuthMethod.PUBKEY, private_key=pki.b_key, certs=(pki.b_cert,))
    trust = AuthRound(AuthMethod.PUBKEY, cacerts=(pki.ca_der,))
    return make_link(conn_a(local=a_round, remote=trust, fragmentation=a_frag, **kw),
                     conn_b(local=b_round, remote=trust, fragmentation=b_frag, **kw), nat=nat)


def is_skf(dg: Datagram) -> bool:
    return dg.data[16] == PayloadType.SKF  # the IKE header's Next Payload (RFC 7296 §3.1)


def exchange_of(dg: Datagram) -> int:
    return dg.data[18]


def settle_over_path(link: Link, max_datagram: int, rounds: int = 40) -> list[Datagram]:
    """Like Link.settle, but the path loses every datagram bigger than `max_datagram`. Returns all that was sent."""
    sent: list[Datagram] = []
    for _ in range(rounds):
        flight = link.flight()
        if not flight:
            return sent
        sent += flight
        link.deliver([dg for dg in flight if len(dg.data) <= max_datagram])
    raise AssertionError("the exchange did not settle")


def to_ike_auth(link: Link) -> list[Datagram]:
    """Run IKE_SA_INIT; return A's IKE_AUTH request (its fragments), not yet delivered."""
    link.a.initiate("a-to-b", "net", link.now)
    link.deliver(link.flight())  # IKE_SA_INIT request
    link.deliver(link.flight())  # IKE_SA_INIT response
    request = link.flight()
    assert all(exchange_of(dg) == ExchangeType.IKE_AUTH and dg.sender == "a" for dg in request)
    return request


@pytest.mark.parametrize("proposal", [pytest.param(None, id="aes-gcm"), pytest.param(CBC, id="aes-cbc-sha256")])
@pytest.mark.parametrize("nat", [False, True], ids=["direct", "nat"])
def test_certificates_over_a_576_octet_path(make_link, pki, proposal, nat):
    kw = {"proposals": (proposal,)} if proposal else {}
    link = cert_link(make_link, pki, nat=nat, **kw)
    link.a.initiate("a-to-b", "net", link.now)
    sent = settle_over_path(link, PATH_576)
    budget = fragment.message_budget(0, conn_a().remote_addrs[0], natt=nat)  # 544 behind a NAT: non-ESP marker
    assert budget == PATH_576 - (4 if nat else 0)
    assert max(len(dg.data) for dg in sent) <= budget  # nothing was lost to the path
    auth = [dg for dg in sent if exchange_of(dg) == ExchangeType.IKE_AUTH]
    assert all(is_skf(dg) for dg in auth)
    assert sum(dg.sender == "a" for dg in auth) >= 2 and sum(dg.sender == "b" for dg in auth) >= 2
    assert link.a.stats["fragmented"] == link.b.stats["fragmented"] == 1
    a, b = child_up(link, "a"), child_up(link, "b")
    assert_mirror(a, b)
    assert_carries(a.out, b.inb, "198.51.100.1", "198.51.100.129")


def test_without_fragmentation_the_same_path_loses_ike_auth(make_link, pki):
    """The control experiment: `fragmentation = no`, and IKE_AUTH is bigger than the path carries."""
    link = cert_link(make_link, pki, Fragmentation.NO, Fragmentation.NO)
    link.a.initiate("a-to-b", "net", link.now)
    sent = settle_over_path(link, PATH_576)
    auth = [dg for dg in sent if exchange_of(dg) == ExchangeType.IKE_AUTH]
    assert len(auth) == 1 and len(auth[0].data) > PATH_576 and not is_skf(auth[0])
    assert link.of("a", events.ChildUp) == [] and link.of("b", events.IkeUp) == []


# a's fragmentation, b's, does a announce, does b, does a send fragments, does b
NEGOTIATION = [
    ("yes", "yes", True, True, True, True),
    ("yes", "accept", True, True, True, False),   # accept: announce, never send
    ("accept", "yes", True, True, False, True),
    ("yes", "no", True, False, False, False),     # B stays silent, so A must not fragment (§2.3)
    ("no", "yes", False, False, False, False),    # B answers only an initiator that announced
    ("force", "force", True, True, True, True),   # strongSwan's IKEv1 option: "yes" for IKEv2
]


@pytest.mark.parametrize("a_frag,b_frag,a_says,b_says,a_sends,b_sends", NEGOTIATION)
def test_negotiation(make_link, pki, a_frag, b_frag, a_says, b_says, a_sends, b_sends):
    link = cert_link(make_link, pki, Fragmentation(a_frag), Fragmentation(b_frag))
    link.a.initiate("a-to-b", "net", link.now)
    sent = []
    while flight := link.flight():
        sent += flight
        link.deliver(flight)
    init = [wire.decode(dg.data) for dg in sent if exchange_of(dg) == ExchangeType.IKE_SA_INIT]

    def announces(msg: wire.Message) -> bool:
        return any(p.type == PayloadType.NOTIFY and p.body.type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
                   for p in msg.payloads)

    assert [announces(m) for m in init] == [a_says, b_says]
    skf = {dg.sender for dg in sent if is_skf(dg)}
    assert ("a" in skf, "b" in skf) == (a_sends, b_sends)
    assert_mirror(child_up(link, "a"), child_up(link, "b"))  # unconstrained path: up either way


def test_a_lost_request_fragment_is_made_good_by_the_retransmission(make_link, pki):
    """§2.6.1: the initiator resends every fragment; the responder keeps what it had and takes the missing one."""
    link = cert_link(make_link, pki, fragment_size=280)  # smaller than any real path: more fragments
    request = to_ike_auth(link)
    assert len(request) >= 3
    link.deliver(request[:1] + request[2:])  # a hole in the middle
    assert link.flight() == []  # incomplete: no answer
    link.advance(conn_a().retransmit_timeout)
    again = link.flight()
    assert [dg.data for dg in again] == [dg.data for dg in request]  # all of them, the same bytes
    link.deliver(again)
    link.settle()
    assert link.a.stats["retransmit"] == 1
    # fragment 1 was held already; fragment 2 completed the request; 3 and 4 then belong to an answered request
    # and, not being fragment 1, do not make B send its response again (§2.6.1)
    assert link.b.stats["fragment_duplicate"] == 1 and "response_resent" not in link.b.stats
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_a_lost_response_fragment_is_resent_once_on_fragment_one(make_link, pki):
    """§2.6.1: a retransmitted fragmented request makes the responder resend its response once, on fragment 1
    (not once per fragment), and the initiator completes the response with the missing piece."""
    link = cert_link(make_link, pki)
    link.deliver(to_ike_auth(link))
    response = link.flight()
    assert len(response) >= 2 and all(dg.sender == "b" and is_skf(dg) for dg in response)
    link.deliver(response[:-1])  # the last fragment lost
    link.advance(conn_a().retransmit_timeout)
    link.deliver(link.flight())  # A's retransmitted request: B answers again
    resent = link.flight()
    assert [dg.data for dg in resent] == [dg.data for dg in response]
    assert link.b.stats["response_resent"] == 1
    link.deliver(resent)
    assert link.a.stats["fragment_duplicate"] == len(response) - 1
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_a_forged_fragment_is_dropped_and_does_not_spoil_the_message(make_link, pki):
    link = cert_link(make_link, pki)
    request = to_ike_auth(link)
    forged = bytearray(request[1].data)
    forged[-1] ^= 0x01  # the ICV
    link.deliver([Datagram("a", bytes(forged), request[1].src, request[1].dst)])
    assert link.b.stats["integrity_failed"] == 1
    link.deliver(request)  # the genuine fragment 2 is not a duplicate: the forgery was never kept
    link.settle()
    assert "fragment_duplicate" not in link.b.stats
    assert_mirror(child_up(link, "a"), child_up(link, "b"))


def test_fragments_are_not_accepted_in_ike_sa_init(make_link):
    """No keys before IKE_SA_INIT is done, so nothing could check a fragment: an IKE_SA_INIT request made of an
    SKF is refused like any IKE_SA_INIT without SA, KE and Nonce, and leaves no half-open SA behind."""
    link = make_link()
    skf = wire.Payload(PayloadType.SKF, wire.EncryptedFragment(PayloadType.SA, 1, 1, bytes(64)))
    data = wire.encode(wire.Message(b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, (skf,)))
    a, b = conn_a(), conn_b()
    link.deliver([Datagram("a", data, (a.local_addrs[0], 500), (b.local_addrs[0], 500))])
    (answer,) = link.flight()
    (notify,) = wire.decode(answer.data).payloads
    assert notify.body.type == NotifyType.INVALID_SYNTAX
    assert link.b.ike_sas() == []


def test_ml_kem_1024_and_certificates_over_a_576_octet_path(make_link, pki):
    """RFC 9242's point: IKE_INTERMEDIATE carries keys too big for IKE_SA_INIT and, being protected, can be
    fragmented. An ML-KEM-1024 key (1568 octets) and the certificates both cross the 576-octet path.

        IKE_SA_INIT       HDR, SAi1, KEi, Ni, N(IKEV2_FRAGMENTATION_SUPPORTED), ...  -->  <--  (the same)
        IKE_INTERMEDIATE  HDR, SKF(1/n) {KEi(1)} ... SKF(n/n)  -->  <--  HDR, SKF(1/m) {KEr(1)} ... SKF(m/m)
        IKE_AUTH          HDR, SKF {IDi, CERT, AUTH, ...}  -->  <--  HDR, SKF {IDr, CERT, AUTH, ...}
    """
    hybrid = parse_ike("aes256gcm16-prfsha384-x25519-ke1_mlkem1024")[0]
    link = cert_link(make_link, pki, proposals=(hybrid,))
    link.a.initiate("a-to-b", "net", link.now)
    sent = settle_over_path(link, PATH_576)
    assert max(len(dg.data) for dg in sent) <= PATH_576
    for exchange in (ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH):
        pieces = [dg for dg in sent if exchange_of(dg) == exchange]
        assert all(is_skf(dg) for dg in pieces) and {dg.sender for dg in pieces} == {"a", "b"}
    assert sum(exchange_of(dg) == ExchangeType.IKE_INTERMEDIATE and dg.sender == "a" for dg in sent) >= 3
    assert link.a.ike_sas()[0]["state"] == "established"
    assert_mirror(child_up(link, "a"), child_up(link, "b"))
