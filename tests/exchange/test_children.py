"""CREATE_CHILD_SA for additional children and INFORMATIONAL deletes (RFC 7296 §1.3.1, §1.4.1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.exchange.conftest import A_NET, B_NET, ESP_GCM, child, child_up, conn_a, conn_b, up
from tests.exchange.test_ike_auth import assert_carries, assert_mirror
from xdpsec.ike import events
from xdpsec.ike.consts import KeId

#: A second pair of subnets, carried by a second child.
A2, B2 = "203.0.113.0/26", "203.0.113.64/26"


def two_children(pfs_a=None, pfs_b=None):
    a = conn_a(children=(child("net", A_NET, B_NET),
                         child("net2", A2, B2, proposals=(replace(ESP_GCM, ke=pfs_a),)),))
    b = conn_b(children=(child("net", B_NET, A_NET),
                         child("net2", B2, A2, proposals=(replace(ESP_GCM, ke=pfs_b),)),))
    return a, b


@pytest.mark.parametrize("pfs", [None, KeId.CURVE25519])
def test_create_child_sa(make_link, pfs):
    link = make_link(*two_children(pfs, pfs))
    up(link)
    link.a.initiate("a-to-b", "net2", link.now)
    # CREATE_CHILD_SA  HDR, SK {SA, Ni, [KEi], TSi, TSr}  -->
    #                  <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
    link.settle()
    a = [e for e in link.of("a", events.ChildUp) if e.child == "net2"][0]
    b = [e for e in link.of("b", events.ChildUp) if e.child == "net2"][0]
    assert_mirror(a, b)
    assert str(a.out.local_ts[0].net) == A2
    assert_carries(a.out, b.inb, "203.0.113.1", "203.0.113.65")
    assert_carries(b.out, a.inb, "203.0.113.65", "203.0.113.1")
    first = [e for e in link.of("a", events.ChildUp) if e.child == "net"][0]
    assert first.out.enc_key != a.out.enc_key


def test_create_child_sa_pfs_group_retry(make_link):
    a_conn, b_conn = two_children(KeId.CURVE25519, KeId.ECP256)
    a_net2 = replace(a_conn.children[1], proposals=(replace(ESP_GCM, ke=KeId.CURVE25519),
                                                    replace(ESP_GCM, ke=KeId.ECP256)))
    link = make_link(replace(a_conn, children=(a_conn.children[0], a_net2)), b_conn)
    up(link)
    link.a.initiate("a-to-b", "net2", link.now)
    # CREATE_CHILD_SA  HDR, SK {SA, Ni, KEi(x25519), TSi, TSr}  -->
    #                  <--  HDR, SK {N(INVALID_KE_PAYLOAD, ecp256)}
    # CREATE_CHILD_SA  HDR, SK {SA, Ni, KEi(ecp256), TSi, TSr}  -->
    #                  <--  HDR, SK {SA, Nr, KEr, TSi, TSr}
    link.settle()
    assert link.b.stats["child_rejected_INVALID_KE_PAYLOAD"] == 1
    assert len(link.of("a", events.ChildUp)) == len(link.of("b", events.ChildUp)) == 2


def test_create_child_sa_ts_unacceptable(make_link):
    a_conn, _ = two_children()
    link = make_link(a_conn, conn_b())        # B knows nothing of net2
    up(link)
    link.a.initiate("a-to-b", "net2", link.now)
    # CREATE_CHILD_SA  HDR, SK {SA, Ni, TSi, TSr}  -->
    #                  <--  HDR, SK {N(TS_UNACCEPTABLE)}
    link.settle()
    assert link.of("a", events.Failure)[0].reason == "child net2: TS_UNACCEPTABLE"
    assert link.a.ike_sas()[0]["state"] == "established" and len(link.a.ike_sas()[0]["children"]) == 1


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_child_from_either_side(make_link, deleter):
    link = make_link()
    up(link)
    a, b = child_up(link, "a"), child_up(link, "b")
    conn = "a-to-b" if deleter == "a" else "b-from-a"
    link.side(deleter).terminate_child(conn, "net", link.now)
    # INFORMATIONAL  HDR, SK {D(ESP, our inbound SPI)}  -->
    #                <--  HDR, SK {D(ESP, the peer's inbound SPI)}
    link.settle()
    assert link.of("a", events.ChildDown) == [events.ChildDown("a-to-b", "net", a.out.spi, a.inb.spi)]
    assert link.of("b", events.ChildDown) == [events.ChildDown("b-from-a", "net", b.out.spi, b.inb.spi)]
    for side in "ab":
        assert link.side(side).ike_sas()[0]["children"] == []
        assert link.side(side).ike_sas()[0]["state"] == "established"


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_ike_sa_from_either_side(make_link, deleter):
    link = make_link()
    up(link)
    link.side(deleter).terminate("a-to-b" if deleter == "a" else "b-from-a", link.now)
    # INFORMATIONAL  HDR, SK {D(IKE)}  -->
    #                <--  HDR, SK {}
    link.settle()
    for side in "ab":
        kinds = [type(e) for e in link.events[side]]
        assert kinds[-2:] == [events.ChildDown, events.IkeDown]
        assert link.side(side).ike_sas() == [] and link.side(side).get_timer() is None
    other = "b" if deleter == "a" else "a"
    assert link.of(deleter, events.IkeDown)[0].reason == "terminated"
    assert link.of(other, events.IkeDown)[0].reason == "deleted by peer"
