"""The coordinator's data-plane bookkeeping (xdpsec/coordinator.py install_child, remove_child): its indexes
against the definitions they replace, and the order in which the classifier learns of an SA.

`spi_in_use`, `_in_spi_taken`, the SAs per worker and the free child slots are kept as indexes so that 1,000
tunnels cost no more per setup than 10. Each must answer what a scan of `Gateway.sas` (resp. `child_ids`)
would, after any sequence of set-ups, rekeys (RFC 7296 §2.8: make-before-break, as initiator and as
responder), retirements and deletions. The gateway runs here without a kernel: the classifier is a dict per
BPF map and the workers confirm what they are sent, so the maps can be checked against the SAD too.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.netns.test_scale import _scale  # scripts/scale.py renders the configuration
from xdpsec import config as configmod
from xdpsec import coordinator
from xdpsec.abi import XS_MAX_CHILDREN
from xdpsec.coordinator import Gateway
from xdpsec.io.seqstore import SeqStore
from xdpsec.sa import Direction, Encr, Mode, Protocol, SAParams, Transform

CONNS = 4


class FakeClassifier:
    """The two BPF maps install_child and remove_child write, as dicts."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.sa_in: dict[tuple[int, int], int] = {}  # (SPI, protocol) -> SA index
        self.child_out: dict[int, int] = {}  # child slot -> SA index

    def set_sa_in(self, spi, proto, sa_index, owner, encap):
        assert self.gw.sas[sa_index].index in self.gw.confirmed, "XDP would steer to a worker without the SA"
        self.sa_in[(spi, proto)] = sa_index

    def del_sa_in(self, spi, proto):
        del self.sa_in[(spi, proto)]

    def set_child_sa(self, child_id, sa_index, owner):
        assert sa_index in self.gw.confirmed, "XDP would steer to a worker without the SA"
        self.child_out[child_id] = sa_index

    def clear_child_sa(self, child_id):
        self.child_out.pop(child_id, None)

    def set_policies(self, policies, child_ids):
        pass


class Workers:
    """Workers that confirm an SA pair only once both of its SAs were sent: a coordinator that waited for the
    first before sending the second would wait in vain."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.held: list[tuple[int, int]] = []  # (SA index, request) sent, not confirmed yet

    def send(self, wid: int, msg: tuple) -> None:
        if msg[0] not in ("add_in", "add_out"):
            return
        _op, index, _params, _slot, req = msg
        self.held.append((index, req))
        if msg[0] == "add_out" or not req:  # install_child sends the inbound SA, then the outbound one
            for index, req in self.held:
                self.gw.confirmed.add(index)
                if req:
                    self.gw.futures.pop(req).set_result(True)
            self.held.clear()


@contextlib.contextmanager
def kernel_free_gateway(directory: Path):
    """A Gateway of CONNS configured connections, two workers, a fake classifier and a real sequence store."""
    text = _scale().render("idx", CONNS, initiator=True, state_dir=directory, psk="x" * 24)
    (directory / "gw.toml").write_text(text)
    gw = Gateway(configmod.load(directory / "gw.toml"))
    gw.nworkers = 2
    gw.confirmed = set()
    gw.classifier = FakeClassifier(gw)
    gw._send = Workers(gw).send
    gw._want_route = lambda dst: None
    gw.seqstore = SeqStore(directory / "seq.db", 256)
    for pol in gw.policies:  # as Gateway.start does: configured children own their slots
        if pol.child:
            gw._child_id(pol.child)
    timeout, coordinator.QUERY_TIMEOUT = coordinator.QUERY_TIMEOUT, 0.05  # a missing confirmation: a warning, fast
    try:
        yield gw
    finally:
        coordinator.QUERY_TIMEOUT = timeout
        gw.seqstore.close()


@pytest.fixture
def gateway(tmp_path):
    with kernel_free_gateway(tmp_path) as gw:
        yield gw


def sa(spi: int, direction: Direction) -> SAParams:
    return SAParams(spi=spi, protocol=Protocol.ESP, direction=direction, mode=Mode.TUNNEL,
                    transform=Transform(Encr.AES_GCM_16, 128), local=ipaddress.ip_address("192.0.2.1"),
                    remote=ipaddress.ip_address("192.0.2.2"), enc_key=spi.to_bytes(4, "big") * 5)


def check(gw: Gateway, spis: range) -> None:
    """Every index equals the scan it replaces; the classifier's maps follow the SAD."""
    installed = list(gw.sas.values())
    for spi in spis:
        assert gw.spi_in_use(spi) == any(s.params.spi == spi for s in installed), hex(spi)
        inbound = sa(spi, Direction.IN)
        assert gw._in_spi_taken(inbound) == any(
            s.params.direction == Direction.IN and s.params.spi == spi for s in installed), hex(spi)
    assert gw._held == collections.Counter(s.owner for s in installed)
    assert set(gw.classifier.sa_in) == {(s.params.spi, int(s.params.protocol)) for s in installed
                                        if s.params.direction == Direction.IN}
    ids = list(gw.child_ids.values())
    assert len(set(ids)) == len(ids)
    assert set(ids).isdisjoint(gw._free_child_ids)
    assert set(ids) | set(gw._free_child_ids) == set(range(1, gw._next_child_id))
    for child, child_id in gw.child_ids.items():
        active = gw.pairs.active(child)
        assert gw.classifier.child_out.get(child_id) == (active.out if active else None), child
    assert set(gw.seqstore._fp_of) == {s.seq_slot for s in installed}  # deleted negotiated SAs released


CHILDREN = [f"t{i}/c" for i in range(CONNS)] + [f"t0/c[192.0.2.{i}]" for i in range(10, 14)]
OPS = st.lists(st.tuples(st.sampled_from(["up", "up_pending", "down_oldest", "down_all", "grace"]),
                         st.sampled_from(CHILDREN)), max_size=40)


@settings(max_examples=80, deadline=None)
@given(ops=OPS)
def test_indexes_answer_as_scans(tmp_path_factory, ops):
    with kernel_free_gateway(tmp_path_factory.mktemp("gw")) as gw:
        run_ops(gw, ops)


def run_ops(gw: Gateway, ops: list[tuple[str, str]]) -> None:
    spis = iter(range(0x1000, 0x1000 + 2 * len(ops) + 2))
    for op, child in ops:
        if op in ("up", "up_pending"):  # a new pair: set-up, or a rekey as initiator / as responder
            out_spi, in_spi = next(spis), next(spis)
            gw.install_child(child, sa(out_spi, Direction.OUT), sa(in_spi, Direction.IN),
                             activate_out=op == "up")
        elif op == "down_oldest" and (pairs := gw.pairs.of(child)):  # the old pair's Delete
            gw.remove_child(child, pairs[0].out_spi, pairs[0].in_spi)
        elif op == "down_all":
            gw.remove_child(child)
        elif op == "grace":  # RETIRE_GRACE has passed
            gw._retiring = [(0.0, index) for _when, index in gw._retiring]
            gw._retire_due()
        check(gw, range(0x1000, 0x1000 + 2 * len(ops) + 2))
    for child in CHILDREN:
        gw.remove_child(child)
    gw._retiring = [(0.0, index) for _when, index in gw._retiring]
    gw._retire_due()
    assert not gw.sas and not gw._spis and not gw._in_spis and not gw._held
    assert not gw.classifier.sa_in and not gw.classifier.child_out


def test_both_sas_sent_before_waiting(gateway, caplog):
    """One round trip per pair: the workers here confirm a pair only once both SAs were sent."""
    with caplog.at_level(logging.WARNING, logger="xdpsec.dataplane"):
        gateway.install_child("t1/c", sa(0x2001, Direction.OUT), sa(0x2002, Direction.IN))
    assert "did not confirm" not in caplog.text
    assert gateway.classifier.sa_in == {(0x2002, 50): 2}


def test_freed_child_slot_is_the_lowest_reused(gateway):
    gw = gateway
    configured = len(gw.child_ids)
    for i, child in enumerate(CHILDREN[CONNS:]):
        gw.install_child(child, sa(0x3000 + 2 * i, Direction.OUT), sa(0x3001 + 2 * i, Direction.IN))
    slots = {child: gw.child_ids[child] for child in CHILDREN[CONNS:]}
    assert sorted(slots.values()) == list(range(configured + 1, configured + 1 + len(slots)))
    gw.remove_child(CHILDREN[-1])
    gw.remove_child(CHILDREN[CONNS + 1])
    assert CHILDREN[-1] not in gw.child_ids and gw.child_ids[CHILDREN[CONNS]] == slots[CHILDREN[CONNS]]
    assert gw._child_id("t9/c[192.0.2.99]") == slots[CHILDREN[CONNS + 1]]  # the lowest free one
    assert gw._child_id("t9/c[192.0.2.98]") == slots[CHILDREN[-1]]
    assert gw._child_id("t9/c[192.0.2.97]") == configured + len(slots) + 1


def test_children_limit(gateway):
    gw = gateway
    gw._next_child_id = XS_MAX_CHILDREN - 1
    assert gw._child_id("t9/c[192.0.2.1]") == XS_MAX_CHILDREN - 1
    with pytest.raises(coordinator.LimitReached):
        gw._child_id("t9/c[192.0.2.2]")
    assert gw.limit_hits["children"] == 1


def test_a_full_worker_still_rekeys_its_children_but_takes_no_new_one(gateway):
    """[limits] sas_per_worker refuses a new child on a full worker, not the rekey of a child it holds (the
    old pair goes with its Delete, RFC 7296 §2.8); a third pair of one child is refused again."""
    gw = gateway
    gw.cfg = dataclasses.replace(gw.cfg, limits=dataclasses.replace(gw.cfg.limits, sas_per_worker=1))
    gw.install_child("t1/c", sa(0x4001, Direction.OUT), sa(0x4002, Direction.IN))  # workers 0 and 1: full
    with pytest.raises(coordinator.LimitReached):
        gw.install_child("t2/c", sa(0x4003, Direction.OUT), sa(0x4004, Direction.IN))
    gw.install_child("t1/c", sa(0x4005, Direction.OUT), sa(0x4006, Direction.IN))  # its rekey
    assert len(gw.pairs.of("t1/c")) == 2
    with pytest.raises(coordinator.LimitReached):
        gw.install_child("t1/c", sa(0x4007, Direction.OUT), sa(0x4008, Direction.IN))
    gw.remove_child("t1/c", 0x4001, 0x4002)  # the old pair's Delete
    assert [(p.out_spi, p.in_spi) for p in gw.pairs.of("t1/c")] == [(0x4005, 0x4006)]
    assert gw.limit_hits["sas_per_worker"] == 2
