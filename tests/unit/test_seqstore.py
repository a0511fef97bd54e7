"""The sequence store's record index (xdpsec/io/seqstore.py) against the file it indexes.

The index (fingerprint -> record, free records) replaces a scan of every record per SA; it must answer exactly
what that scan would: the record holding the SA's fingerprint, else the lowest free one. The oracle here is
such a scan, done on the file's bytes read back with read(2), independently of the store's mapping. Reopening
the file, as a restarted gateway does, must give every SA its record again: sequence numbers resume after the
reserved end (RFC 4303 §3.3.3: a number, the AEAD nonce, is never used twice under one key).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.io.seqstore import HEADER, RECORD, SeqStore, fingerprint
from xdpsec.sa import Direction, Encr, Mode, Protocol, SAParams, Transform

RECORDS = 8


def params(n: int, *, key: bytes = b"") -> SAParams:
    """SA number n: its own SPI, direction and key."""
    return SAParams(spi=0x1000 + n, protocol=Protocol.ESP, direction=Direction.OUT if n % 2 else Direction.IN,
                    mode=Mode.TUNNEL, transform=Transform(Encr.AES_GCM_16, 128),
                    local=ipaddress.ip_address("192.0.2.1"), remote=ipaddress.ip_address("192.0.2.2"),
                    enc_key=key or n.to_bytes(2, "big") * 10)


def file_records(path: Path) -> list[bytes]:
    """The fingerprint of every record, read from the file, not through the store."""
    data = path.read_bytes()
    count = HEADER.unpack_from(data, 0)[1]
    return [fp for fp, _r, _s in RECORD.iter_unpack(data[HEADER.size:HEADER.size + count * RECORD.size])]


def scan_slot(path: Path, p: SAParams) -> int | None:
    """The record the old linear scan chose: the fingerprint's, else the lowest free; None when full."""
    fps = file_records(path)
    fp = fingerprint(p)
    if fp in fps:
        return fps.index(fp)
    return fps.index(bytes(16)) if bytes(16) in fps else None


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "seq.db"


def test_same_sa_same_record_new_key_new_record(path):
    store = SeqStore(path, RECORDS)
    a = store.slot_for(params(1))
    assert store.slot_for(params(1)) == a
    assert store.slot_for(params(1, key=b"\x99" * 20)) != a  # a new key starts afresh


def test_reopen_after_releases_gives_the_same_records(path):
    store = SeqStore(path, RECORDS)
    slots = {n: store.slot_for(params(n)) for n in range(6)}
    for n in (0, 2, 3):
        store.release(slots[n])
    store.reserve(slots[5], 3 << 16)
    store.saw(slots[4], 77)
    store.close()

    again = SeqStore(path, RECORDS)
    assert {n: again.slot_for(params(n)) for n in (1, 4, 5)} == {n: slots[n] for n in (1, 4, 5)}
    assert again.reserved(slots[5]) == 3 << 16  # resumes after the reserved block
    assert again.highest_seen(slots[4]) == 77
    assert again.slot_for(params(10)) == min(slots[n] for n in (0, 2, 3))  # the lowest freed record
    again.close()


def test_full_store_raises_until_a_record_is_released(path):
    store = SeqStore(path, RECORDS)
    slots = [store.slot_for(params(n)) for n in range(RECORDS)]
    assert sorted(slots) == list(range(RECORDS))
    with pytest.raises(RuntimeError, match="sequence records in use"):
        store.slot_for(params(RECORDS))
    assert store.slot_for(params(3)) == slots[3]  # a known SA still finds its record in a full store
    store.release(slots[5])
    store.release(slots[5])  # twice: the record must not become free twice
    assert store.slot_for(params(RECORDS)) == slots[5]
    with pytest.raises(RuntimeError):
        store.slot_for(params(RECORDS + 1))
    store.close()
    with pytest.raises(RuntimeError):  # full after a reopen too
        SeqStore(path, RECORDS).slot_for(params(RECORDS + 2))


def test_release_zeroes_the_record(path):
    store = SeqStore(path, RECORDS)
    slot = store.slot_for(params(1))
    store.reserve(slot, 1 << 16)
    store.saw(slot, 5)
    store.release(slot)
    assert (store.reserved(slot), store.highest_seen(slot)) == (0, 0)
    assert store.slot_for(params(2)) == slot
    assert (store.reserved(slot), store.highest_seen(slot)) == (0, 0)


def test_index_built_from_a_file_with_holes(path):
    """A file whose records sit anywhere (written by an earlier run, or by the scanning version)."""
    SeqStore(path, RECORDS).close()
    with open(path, "r+b") as f:
        for slot, n in ((5, 1), (2, 2)):
            f.seek(HEADER.size + slot * RECORD.size)
            f.write(RECORD.pack(fingerprint(params(n)), 9 << 16, 0))
    store = SeqStore(path, RECORDS)
    assert (store.slot_for(params(1)), store.slot_for(params(2))) == (5, 2)
    assert store.reserved(5) == 9 << 16
    assert [store.slot_for(params(n)) for n in (3, 4, 5)] == [0, 1, 3]


OPS = st.lists(st.one_of(st.tuples(st.just("add"), st.integers(0, 11)),
                         st.tuples(st.just("release"), st.integers(0, 11)),
                         st.just(("reopen", 0))), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_index_answers_as_a_scan_of_the_file(tmp_path_factory, ops):
    """Any sequence of SAs set up, deleted and restarts: each slot_for is what a scan of the file would pick."""
    path = tmp_path_factory.mktemp("seq") / "seq.db"
    store = SeqStore(path, RECORDS)
    held: dict[int, int] = {}
    try:
        for op, n in ops:
            if op == "reopen":
                store.close()
                store = SeqStore(path, RECORDS)
            elif op == "release":
                if n in held:
                    store.release(held.pop(n))
            else:
                expected = scan_slot(path, params(n))
                if expected is None:
                    with pytest.raises(RuntimeError):
                        store.slot_for(params(n))
                else:
                    held[n] = store.slot_for(params(n))
                    assert held[n] == expected
            fps = file_records(path)
            assert {n: fps.index(fingerprint(params(n))) for n in held} == held
            assert sum(fp != bytes(16) for fp in fps) == len(held)
    finally:
        store.close()
