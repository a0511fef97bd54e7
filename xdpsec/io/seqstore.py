"""Sequence-number reservations that survive worker and gateway restarts.

AES-GCM and ChaCha20-Poly1305 use the ESP sequence number as their nonce: sending two packets with the same
number under one key breaks both confidentiality and integrity. A worker therefore never uses a number it has
not first *reserved* here: it reserves a block of RESERVE_BLOCK numbers by writing the block's end into a
memory-mapped file and flushing it (msync) before sending the first packet of the block. Whoever restarts the
SA — a new worker after a crash, or the whole gateway with the same manual key after a reboot — begins after
the recorded end. Numbers are skipped, never reused; the peer's replay window accepts gaps.

Inbound SAs record the highest authenticated sequence number (no flush: a worker crash keeps the page cache),
so a restarted worker's replay window does not forget what it has already accepted.

Records are found by a fingerprint of (SPI, direction, keys) — a BLAKE2b digest, never the keys themselves —
so a manual SA with an unchanged key picks up where it stopped, and a new key starts afresh. The coordinator
finds them through an index in memory (fingerprint -> record, and the free records), read from the file once
when it opens it and kept exact by `slot_for` and `release`: setting up or deleting an SA touches one record,
not all NRECORDS. Only the coordinator assigns and frees records; the workers write the numbers of the records
they were given.

The file is created before the workers fork; they inherit the shared mapping.
"""

from __future__ import annotations

import hashlib
import heapq
import mmap
import os
import struct
import threading
from pathlib import Path

from xdpsec.sa import SAParams

MAGIC = b"XDPSSEQ1"
HEADER = struct.Struct("<8sII")  # magic, record count, reserved
RECORD = struct.Struct("<16sQQ")  # fingerprint, outbound reserved end, inbound highest seen
NRECORDS = 16384
FREE = bytes(16)  # the fingerprint of an unused record
RESERVE_BLOCK = 1 << 16
PAGE = mmap.PAGESIZE


def fingerprint(params: SAParams) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"xdpsec-seq-v1")
    h.update(struct.pack("!IB", params.spi, 0 if params.direction.value == "out" else 1))
    h.update(params.enc_key)
    h.update(params.integ_key)
    return h.digest()


class SeqStore:
    def __init__(self, path: str | Path, nrecords: int = NRECORDS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        size = HEADER.size + nrecords * RECORD.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        magic, count, _ = HEADER.unpack_from(self.mm, 0)
        if magic != MAGIC:
            if magic.strip(b"\0"):
                raise ValueError(f"{self.path}: not an xdpsec sequence store")
            HEADER.pack_into(self.mm, 0, MAGIC, nrecords, 0)
            self.mm.flush()
            count = nrecords
        self.nrecords = min(count, nrecords)
        self._lock = threading.Lock()  # slot_for (under the coordinator's SA lock) and release (not) may meet
        self._slot_of: dict[bytes, int] = {}  # fingerprint -> its record
        self._fp_of: dict[int, bytes] = {}  # record in use -> its fingerprint
        self._free: list[int] = []  # heap of the unused records: the lowest is taken first, as a scan would
        self._load_index()

    def _load_index(self) -> None:
        records = self.mm[HEADER.size:HEADER.size + self.nrecords * RECORD.size]
        for slot, (fp, _reserved, _seen) in enumerate(RECORD.iter_unpack(records)):
            if fp == FREE:
                self._free.append(slot)
            elif fp not in self._slot_of:  # a duplicate never arises; were it there, the first one wins
                self._slot_of[fp] = slot
                self._fp_of[slot] = fp
        heapq.heapify(self._free)

    def _off(self, slot: int) -> int:
        return HEADER.size + slot * RECORD.size

    def slot_for(self, params: SAParams) -> int:
        """The record of this SA: an existing one with the same fingerprint, else the lowest free one (zeroed).

        Not flushed here: no number of the SA is used before the worker's first `reserve`, whose flush takes
        the whole record, fingerprint included, to the file. A record assigned but never reserved holds no
        number that was used, so losing it in a crash loses nothing."""
        fp = fingerprint(params)
        with self._lock:
            slot = self._slot_of.get(fp)
            if slot is not None:
                return slot
            if not self._free:
                raise RuntimeError(f"{self.path}: all {self.nrecords} sequence records in use")
            slot = heapq.heappop(self._free)
            RECORD.pack_into(self.mm, self._off(slot), fp, 0, 0)
            self._slot_of[fp] = slot
            self._fp_of[slot] = fp
            return slot

    def release(self, slot: int) -> None:
        """Forget an SA whose keys will never be used again (a deleted IKE-negotiated SA)."""
        with self._lock:
            fp = self._fp_of.pop(slot, None)
            if fp is None:  # already free: the index holds each free record once
                return
            del self._slot_of[fp]
            RECORD.pack_into(self.mm, self._off(slot), FREE, 0, 0)
            heapq.heappush(self._free, slot)

    def reserved(self, slot: int) -> int:
        return RECORD.unpack_from(self.mm, self._off(slot))[1]

    def highest_seen(self, slot: int) -> int:
        return RECORD.unpack_from(self.mm, self._off(slot))[2]

    def reserve(self, slot: int, upto: int) -> None:
        """Record that numbers up to `upto` may be in use, durably, before any of them is sent."""
        struct.pack_into("<Q", self.mm, self._off(slot) + 16, upto)
        self._sync(slot)

    def saw(self, slot: int, seq: int) -> None:
        struct.pack_into("<Q", self.mm, self._off(slot) + 24, seq)

    def _sync(self, slot: int) -> None:
        off = self._off(slot)
        start = off - off % PAGE
        self.mm.flush(start, min(PAGE * 2, len(self.mm) - start))

    def close(self) -> None:
        self.mm.close()
