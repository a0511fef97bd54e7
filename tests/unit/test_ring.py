"""HandoffRing: bounds, order, wrap-around, and two processes passing 100,000 packets through a small ring."""

from __future__ import annotations

import os
import signal
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.io.ring import HandoffRing


@pytest.fixture
def ring():
    r = HandoffRing(nslots=8, slot_size=64)
    yield r
    r.close()


def drain(r: HandoffRing, limit: int = 64) -> list[tuple[bytes, bytes]]:
    got = [(bytes(t), bytes(d)) for t, d in r.pop(limit)]
    r.release(len(got))
    return got


@pytest.mark.parametrize(("nslots", "slot_size"), [(0, 64), (3, 64), (1000, 64), (8, 4), (8, 65536)])
def test_bad_geometry_refused(nslots, slot_size):
    with pytest.raises(ValueError):
        HandoffRing(nslots, slot_size)


def test_empty_pop_returns_nothing(ring):
    assert len(ring) == 0
    assert ring.pop() == []


def test_full_ring_refuses_then_accepts_after_release(ring):
    for i in range(8):
        assert ring.push(b"T", bytes([i]))
    assert len(ring) == 8
    assert not ring.push(b"T", b"x")  # full: the caller counts HANDOFF_FULL
    first = ring.pop(limit=3)
    assert [bytes(d) for _t, d in first] == [b"\x00", b"\x01", b"\x02"]
    assert not ring.push(b"T", b"x")  # popped is not released: still occupied
    ring.release(3)
    assert len(ring) == 5
    for i in range(3):
        assert ring.push(b"T", bytes([100 + i]))
    assert not ring.push(b"T", b"x")
    assert [d for _t, d in drain(ring)] == [bytes([i]) for i in range(3, 8)] + [bytes([100 + i]) for i in range(3)]


@pytest.mark.parametrize(("tag_len", "data_len", "fits"), [
    (0, 60, True),    # 4-byte slot header + 60 = 64
    (32, 28, True),
    (32, 29, False),  # one byte over: refused, not truncated
    (0, 61, False),
    (0, 0, True),
])
def test_record_size_limit(ring, tag_len, data_len, fits):
    assert ring.push(b"t" * tag_len, b"d" * data_len) is fits
    assert len(ring) == int(fits)
    if fits:
        assert drain(ring) == [(b"t" * tag_len, b"d" * data_len)]


def test_pop_continues_after_unreleased_records(ring):
    for i in range(5):
        ring.push(b"", bytes([i]))
    a = ring.pop(limit=2)
    b = ring.pop(limit=10)
    assert [bytes(d) for _t, d in a + b] == [bytes([i]) for i in range(5)]
    with pytest.raises(ValueError):
        ring.release(6)
    ring.release(5)
    assert len(ring) == 0


def test_views_point_into_the_ring_without_copy(ring):
    ring.push(b"meta", b"payload")
    ((tag, data),) = ring.pop()
    assert (bytes(tag), bytes(data)) == (b"meta", b"payload")
    assert tag.readonly is False and data.obj is tag.obj  # both are views of the shared mapping
    ring.release(1)


def test_reset_empties(ring):
    for i in range(4):
        ring.push(b"", bytes([i]))
    ring.pop(2)
    ring.reset()
    assert len(ring) == 0 and ring.pop() == []
    assert ring.push(b"", b"z") and drain(ring) == [(b"", b"z")]


def test_index_wraps_past_u32(ring):
    # Free-running u32 indices: start both just below 2**32 and go around it (and around the slots) many times.
    ring._idx[0] = ring._idx[16] = 0xFFFFFFFA
    for n in range(40):
        for k in range(n % 8 + 1):
            assert ring.push(struct.pack("=I", n), bytes([k]) * k)
        assert drain(ring) == [(struct.pack("=I", n), bytes([k]) * k) for k in range(n % 8 + 1)]
    assert ring._idx[0] < 0xFFFFFFFA  # it did wrap


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=70), st.integers(min_value=0, max_value=9)), max_size=60))
def test_matches_a_bounded_fifo(ops):
    # Property: pushes of byte strings and pops of n records behave exactly like a bounded FIFO.
    ring = HandoffRing(nslots=4, slot_size=64)
    model: list[bytes] = []
    try:
        for op in ops:
            if isinstance(op, bytes):
                accepted = len(model) < 4 and len(op) + 4 <= 64
                assert ring.push(b"", op) is accepted
                if accepted:
                    model.append(op)
            else:
                got = drain(ring, op)
                assert [d for _t, d in got] == model[:op]
                del model[:op]
            assert len(ring) == len(model)
    finally:
        ring.close()


def _record(i: int) -> tuple[bytes, bytes]:
    body = i.to_bytes(4, "little") * (1 + i % 300)  # 4..1200 bytes, varying
    return struct.pack("=IIQ", i, zlib.crc32(body), 0xC0FFEE), body


def test_two_processes_pass_100k_packets_in_order():
    count = 100_000
    ring = HandoffRing(nslots=256, slot_size=1280)  # far smaller than the count: it wraps ~390 times
    pid = os.fork()
    if pid == 0:  # producer: retries while full; its time is bounded by the parent, which kills it
        i = 0
        while i < count:
            tag, body = _record(i)
            i += ring.push(tag, body)
        os._exit(0)
    got = 0
    try:
        deadline = time.monotonic() + 60
        while got < count and time.monotonic() < deadline:
            batch = ring.pop(64)
            for tag, data in batch:
                seq, crc, magic = struct.unpack("=IIQ", tag)
                assert (seq, magic) == (got, 0xC0FFEE), f"expected packet {got}, got tag {seq}/{magic:#x}"
                assert zlib.crc32(data) == crc and bytes(data) == _record(got)[1], f"packet {got} corrupt"
                got += 1
            ring.release(len(batch))
        assert got == count
        assert len(ring) == 0
    finally:
        if got < count:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
