"""RFC 9370 §2.2.4 IKE_FOLLOWUP_KE between two xdpsec cores: hybrid rekeys of the IKE SA and of child SAs.

    CREATE_CHILD_SA  HDR, SK {SA(.. ADDKE1 = ML-KEM ..), Ni, KEi(x25519) [, N(REKEY_SA), TSi, TSr]}  -->
                           <--  HDR, SK {SA, Nr, KEr(x25519) [, TSi, TSr], N(ADDITIONAL_KEY_EXCHANGE)(link1)}
    IKE_FOLLOWUP_KE  HDR, SK {KEi(1) = ML-KEM encapsulation key, N(ADDITIONAL_KEY_EXCHANGE)(link1)}  -->
                           <--  HDR, SK {KEr(1) = ML-KEM ciphertext}
    INFORMATIONAL    HDR, SK {D(old)}  -->

Keys are checked against the §2.2.4 formulas computed here with the standard library's HMAC (prf+ of RFC 7296
§2.13), from the secrets the key exchanges produced:

    SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))     KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) ...)
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

import pytest

from tests.exchange.conftest import ESP_GCM, Link, child, conn_a, conn_b, up
from xdpsec.ike import events, wire
from xdpsec.ike.consts import ExchangeType, KeId, NotifyType, PayloadType
from xdpsec.ike.sa import ChildState
from xdpsec.ike.tasks import child_create as child_create_mod
from xdpsec.ike.tasks import followup_ke, ike_rekey
from xdpsec.ike.tasks.followup_ke import FOLLOWUP_TIMEOUT, IKE_SA, FollowupKe
from xdpsec.proposals import parse_ike

HYBRID = parse_ike("aes128gcm16-prfsha256-x25519-ke1_mlkem768")[0]
TWO_ROUNDS = parse_ike("aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024")[0]
ESP_PFS_MLKEM = replace(ESP_GCM, ke=KeId.CURVE25519, addke=(KeId.ML_KEM_768,))


def _prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13 with HMAC-SHA-256, written out independently of xdpsec.crypto.prf."""
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), hashlib.sha256).digest()
        out, n = out + t, n + 1
    return out[:length]


def _link(make_link, ike=(HYBRID,), esp=(ESP_GCM,), children=("net",)) -> Link:
    nets = {"net": ("198.51.100.0/26", "198.51.100.128/26"), "net2": ("198.51.100.64/26", "198.51.100.192/26")}
    a_children = tuple(child(n, *nets[n], proposals=esp) for n in children)
    b_children = tuple(child(n, nets[n][1], nets[n][0], proposals=esp) for n in children)
    return make_link(conn_a(proposals=ike, children=a_children), conn_b(proposals=ike, children=b_children))


def _usable(link: Link, side: str):
    (sa,) = [s for s in link.side(side)._sas.values() if s.usable]
    return sa


def _requests(link: Link, drop=lambda d, h: False) -> list[int]:
    """Exchange types of every request either side sends while the link settles, once per (sender, SA, ID)."""
    seen: dict[tuple, int] = {}
    for _ in range(40):
        flight = link.flight()
        if not flight:
            return list(seen.values())
        keep = []
        for d in flight:
            h = wire.decode_header(d.data)
            if not h.is_response:
                seen.setdefault((d.sender, h.ispi, h.msg_id), h.exchange)
            if not drop(d, h):
                keep.append(d)
        link.deliver(keep)
    raise AssertionError("did not settle")


@pytest.fixture
def capture(monkeypatch):
    """Every call of a wrapped function: {name: [(args, result)]}."""
    calls: dict[str, list] = {}

    def wrap(module, name):
        orig = getattr(module, name)

        def spy(*args):
            result = orig(*args)
            calls.setdefault(name, []).append((args, result))
            return result
        monkeypatch.setattr(module, name, spy)
    return wrap, calls


# --- the IKE SA -----------------------------------------------------------------------------------------------


def test_hybrid_ike_rekey_mixes_the_ml_kem_secret_into_skeyseed(make_link, capture):
    wrap, calls = capture
    wrap(ike_rekey, "rekey_skeyseed")
    wrap(followup_ke, "respond")
    link = _link(make_link)
    up(link)
    old_a, old_b = _usable(link, "a"), _usable(link, "b")
    sk_d_old = old_a.crypto.keys.sk_d
    link.a.rekey_ike("a-to-b", link.now)
    assert _requests(link) == [ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE, ExchangeType.INFORMATIONAL]
    new_a, new_b = _usable(link, "a"), _usable(link, "b")
    assert new_a.crypto.keys == new_b.crypto.keys and new_a.crypto.proposal == new_b.crypto.proposal == HYBRID
    assert new_a.children and not old_a.children and not old_b.children  # the children moved

    (_, (ciphertext, sk1)), = calls["respond"]
    assert len(sk1) == 32 and len(ciphertext) == 1088  # ML-KEM-768 (FIPS 203 table 3)
    for (_prf, sk_d, sk0, ni, nr, additional), _seed in calls["rekey_skeyseed"]:  # B's call, then A's
        assert sk_d == sk_d_old and list(additional) == [sk1]
        spis = new_a.ispi.to_bytes(8, "big") + new_a.rspi.to_bytes(8, "big")
        seed = hmac.new(sk_d_old, sk0 + ni + nr + sk1, hashlib.sha256).digest()  # §2.2.4
        assert new_a.crypto.keys.sk_d == _prf_plus(seed, ni + nr + spis, 32)
        classic = hmac.new(sk_d_old, sk0 + ni + nr, hashlib.sha256).digest()  # §2.18 without SK(1)
        assert new_a.crypto.keys.sk_d != _prf_plus(classic, ni + nr + spis, 32)
        other = hmac.new(sk_d_old, sk0 + ni + nr + bytes(32), hashlib.sha256).digest()  # another ML-KEM secret
        assert new_a.crypto.keys.sk_d != _prf_plus(other, ni + nr + spis, 32)
    assert link.a.stats["ike_rekey"] == link.b.stats["ike_rekey"] == 1
    assert link.a.stats["additional_ke"] == link.b.stats["additional_ke"] == 2  # IKE_INTERMEDIATE + FOLLOWUP
    assert not new_a.multi_ke and not new_b.multi_ke and not old_b.followups
    assert not link.of("a", events.Failure) and not link.of("b", events.Failure)


def test_two_additional_exchanges_run_in_order(make_link):
    link = _link(make_link, ike=(TWO_ROUNDS,))
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    assert _requests(link) == [ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE,
                               ExchangeType.IKE_FOLLOWUP_KE, ExchangeType.INFORMATIONAL]
    assert _usable(link, "a").crypto.keys == _usable(link, "b").crypto.keys
    assert link.b.stats["additional_ke"] == 4


def test_a_classic_ike_sa_rekeys_classically(make_link):
    """No ADDKE in the proposals: no IKE_FOLLOWUP_KE, nothing changes (strongSwan 5.9 sees what it saw)."""
    link = _link(make_link, ike=(replace(HYBRID, addke=()),))
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    assert _requests(link) == [ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL]


def test_the_responder_rekeys_the_hybrid_ike_sa_too(make_link):
    link = _link(make_link)
    up(link)
    link.b.rekey_ike("b-from-a", link.now)
    link.settle()
    assert _usable(link, "a").crypto.keys == _usable(link, "b").crypto.keys
    assert link.b.stats["ike_rekey"] == 1 and not link.of("a", events.Failure)


# --- child SAs --------------------------------------------------------------------------------------------------


def test_child_rekey_with_pfs_and_ml_kem(make_link, capture):
    wrap, calls = capture
    wrap(child_create_mod, "child_keymat")
    link = _link(make_link, esp=(ESP_PFS_MLKEM,))
    up(link)
    first = link.of("a", events.ChildUp)[0]
    assert link.a.rekey_child("a-to-b", "net", link.now) == 1
    assert _requests(link) == [ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE, ExchangeType.INFORMATIONAL]
    (_, a_new), (_, b_new) = link.of("a", events.ChildUp), link.of("b", events.ChildUp)
    assert a_new.out.enc_key == b_new.inb.enc_key and a_new.inb.enc_key == b_new.out.enc_key
    assert a_new.out.enc_key != first.out.enc_key
    (_prf, sk_d, ni, nr, *_lens, sk0, additional), _keys = calls["child_keymat"][-1]  # A's, after the follow-up
    assert len(sk0) == 32 and [len(s) for s in additional] == [32]
    # §2.2.4: KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1)); A initiated, so its outbound key comes first
    assert a_new.out.enc_key == _prf_plus(sk_d, sk0 + ni + nr + additional[0], 20)
    assert a_new.out.enc_key != _prf_plus(sk_d, sk0 + ni + nr, 20)  # the ML-KEM secret is in
    assert link.a.stats["child_rekey"] == link.b.stats["child_rekey"] == 1
    assert [c.state for c in _usable(link, "a").children] == [ChildState.INSTALLED]


def test_a_new_child_with_pfs_and_ml_kem(make_link):
    link = _link(make_link, esp=(ESP_PFS_MLKEM,), children=("net", "net2"))
    up(link, "net")
    link.a.initiate("a-to-b", "net2", link.now)
    assert _requests(link) == [ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE]
    (a_up,), (b_up,) = ([u for u in link.of(s, events.ChildUp) if u.child == "net2"] for s in "ab")
    assert a_up.out.enc_key == b_up.inb.enc_key and a_up.out.spi == b_up.inb.spi


# --- errors: the old SA stays -------------------------------------------------------------------------------------


def _assert_old_sa_kept(link: Link, old_a, children_before) -> None:
    assert _usable(link, "a") is old_a and old_a.children == children_before
    assert [c.state for c in old_a.children] == [ChildState.INSTALLED] * len(children_before)
    assert link.a.stats["rekey_failed"] == 1 and link.a.stats["ike_rekey"] == 0
    assert not link.of("a", events.IkeUp)[1:] and not old_a.multi_ke


def test_an_unexpected_followup_gets_state_not_found(make_link):
    link = _link(make_link)
    up(link)
    ike = _usable(link, "a")
    failed = []
    ike.queue([FollowupKe(ike, initiator=True, target="probe", methods=(KeId.ML_KEM_768,), link=bytes(16),
                          finish=lambda s: None, fail=lambda reason: failed.append(reason))], link.now)
    link.settle()
    assert failed == ["IKE_FOLLOWUP_KE refused: STATE_NOT_FOUND"]
    assert link.b.stats["followup_not_found"] == 1 and link.b.stats["error_sent_STATE_NOT_FOUND"] == 1
    assert _usable(link, "a") is ike and _usable(link, "b").usable  # the IKE SA carries on


@pytest.mark.parametrize("break_it, b_counter", [
    ("link", "followup_not_found"),    # another link: STATE_NOT_FOUND, B keeps its sequence until the timeout
    ("no_ke", "followup_failed"),      # KE left out: INVALID_SYNTAX
    ("short_ke", "followup_failed"),   # an ML-KEM encapsulation key of the wrong length: INVALID_SYNTAX
    ("method", "followup_failed"),     # ML-KEM-1024 where ML-KEM-768 was negotiated: INVALID_SYNTAX
])
def test_a_broken_followup_leaves_the_old_ike_sa(make_link, monkeypatch, break_it, b_counter):
    link = _link(make_link)
    up(link)
    old_a = _usable(link, "a")
    children = list(old_a.children)
    build = FollowupKe.build

    def broken(self, out):
        build(self, out)
        if not self.initiator:
            return
        ke = next(p for p in out if p.type == PayloadType.KE)
        if break_it == "link":
            out[-1] = followup_ke.link_notify(bytes(16))
        elif break_it == "no_ke":
            out.remove(ke)
        elif break_it == "short_ke":
            out[0] = wire.Payload(PayloadType.KE, wire.KE(ke.body.group, ke.body.data[:-1]))
        else:
            out[0] = wire.Payload(PayloadType.KE, wire.KE(KeId.ML_KEM_1024, bytes(1568)))
    monkeypatch.setattr(FollowupKe, "build", broken)
    link.a.rekey_ike("a-to-b", link.now)
    link.settle()
    _assert_old_sa_kept(link, old_a, children)
    assert link.b.stats[b_counter] == 1 and link.b.stats["ike_rekey"] == 0
    old_b = _usable(link, "b")
    assert old_b.children and len(link.b._sas) == 1  # no new IKE SA was made on B either
    link.advance(FOLLOWUP_TIMEOUT + 1)
    assert not old_b.followups and not old_b.multi_ke  # forgotten now at the latest (§2.2.4)
    monkeypatch.undo()
    link.a.rekey_ike("a-to-b", link.now)  # and the next rekey works
    link.settle()
    assert _usable(link, "a").crypto.keys == _usable(link, "b").crypto.keys and link.a.stats["ike_rekey"] == 1


def test_a_lost_followup_is_retransmitted(make_link):
    link = _link(make_link)
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    dropped = []

    def drop_first(d, h):
        if h.exchange == ExchangeType.IKE_FOLLOWUP_KE and not h.is_response and not dropped:
            dropped.append(d)
            return True
        return False
    _requests(link, drop_first)
    assert dropped and link.a.stats["ike_rekey"] == 0
    link.advance(5)  # the first retransmission (4 s)
    link.settle()
    assert link.a.stats["retransmit"] == 1 and link.a.stats["ike_rekey"] == 1
    assert _usable(link, "a").crypto.keys == _usable(link, "b").crypto.keys


def test_a_responder_that_waited_too_long_answers_state_not_found(make_link):
    """The follow-up is lost until B's FOLLOWUP_TIMEOUT has passed: B forgets the sequence and answers A's
    retransmission with STATE_NOT_FOUND; A's rekey fails and both keep the old SA."""
    link = _link(make_link)
    up(link)
    old_a = _usable(link, "a")
    children = list(old_a.children)
    link.a.rekey_ike("a-to-b", link.now)
    start = link.now

    def blackhole(d, h):
        return h.exchange == ExchangeType.IKE_FOLLOWUP_KE and link.now < start + FOLLOWUP_TIMEOUT + 1
    _requests(link, blackhole)
    while link.now < start + 40 and link.a.stats["rekey_failed"] == 0:
        link.advance(2)
        _requests(link, blackhole)
    assert link.b.stats["followup_expired"] == 1 and link.b.stats["followup_not_found"] == 1
    _assert_old_sa_kept(link, old_a, children)
    assert any("STATE_NOT_FOUND" in f.reason for f in link.of("a", events.Failure))


# --- collisions ---------------------------------------------------------------------------------------------------


def test_simultaneous_hybrid_ike_rekeys_are_refused_then_one_wins(make_link):
    link = _link(make_link)
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    link.b.rekey_ike("b-from-a", link.now)
    link.settle()
    for side in "ab":  # RFC 9370 §2.2.4 with RFC 7296 §2.25: each refused the other's
        assert link.side(side).stats["error_sent_TEMPORARY_FAILURE"] == 1
        assert link.side(side).stats["rekey_failed"] == 1
        assert _usable(link, side).children
    for _ in range(20):  # both retry after 10-15 s, jittered: one goes first, the other's is then obsolete
        link.advance(1)
        link.settle()
    a, b = _usable(link, "a"), _usable(link, "b")
    assert a.crypto.keys == b.crypto.keys and a.crypto.proposal == HYBRID and a.children and b.children
    assert link.a.stats["ike_rekey"] + link.b.stats["ike_rekey"] >= 2


def test_a_child_rekey_during_an_ike_followup_is_temporary_failure(make_link):
    link = _link(make_link)
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    link.deliver(link.flight())  # A's CREATE_CHILD_SA reaches B, which now expects the follow-up
    assert IKE_SA in _usable(link, "b").multi_ke
    link.b.rekey_child("b-from-a", "net", link.now)
    link.settle()
    assert link.a.stats["child_rekey_rejected_TEMPORARY_FAILURE"] == 1 and link.b.stats["rekey_failed"] == 1
    assert link.a.stats["ike_rekey"] == 1  # the IKE rekey itself completed
    for _ in range(20):  # B retries its child rekey, now on the new IKE SA
        link.advance(1)
        link.settle()
    assert link.b.stats["child_rekey"] == 1 and _usable(link, "b").children[0].state == ChildState.INSTALLED


def test_the_state_not_found_notify_is_47():
    """IANA "IKEv2 Notify Message Error Types": 47 STATE_NOT_FOUND, RFC 9370 (16442 is USE_AGGFRAG)."""
    assert NotifyType.STATE_NOT_FOUND == 47 and NotifyType.ADDITIONAL_KEY_EXCHANGE == 16441
    assert ExchangeType.IKE_FOLLOWUP_KE == 44
