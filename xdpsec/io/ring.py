"""The handoff ring: a bounded single-producer single-consumer packet queue between two worker processes.

Why: a packet lands on the worker that owns the rx queue it arrived on, but only the worker owning its SA may
touch the SA's sequence counter or replay window (docs/DESIGN.md). The receiving worker copies the packet
into a ring to the owner, as VPP's esp-encrypt-handoff does. A full ring is a drop the caller counts.

How: an anonymous MAP_SHARED mapping, created before the workers fork so both inherit it. It holds a header
with two free-running u32 indices, the producer's and the consumer's, each on its own cache line so the two
processes do not fight over one line, then `nslots` fixed-size slots. A slot is
``u16 tag_len | u16 data_len | tag | data``. The producer writes a slot, then publishes it by storing the
producer index; the consumer reads the producer index, then the slots, and frees them by storing the consumer
index. Those two-step orders are all the synchronisation there is: x86-64 (TSO) keeps stores in order and
loads in order, and CPython cannot reorder two stores made by separate bytecodes (see xdpsec/io/xsk.py).
Indices are stored through `memoryview.cast("I")`, a single aligned 4-byte store, never torn.

Nothing blocks and nothing is allocated per packet except the memoryviews `pop` returns.
"""

from __future__ import annotations

import mmap
import struct

_CACHE_LINE = 64
_PROD, _CONS = 0, _CACHE_LINE // 4  # u32 positions of the two indices in the header
_HEADER = 2 * _CACHE_LINE
_SLOT_HDR = struct.Struct("=HH")  # tag_len, data_len
_U32 = 0xFFFFFFFF


class HandoffRing:
    """Bounded SPSC ring of (tag, packet) records in shared memory; one process pushes, one pops."""

    def __init__(self, nslots: int = 1024, slot_size: int = 2048) -> None:
        if nslots <= 0 or nslots & (nslots - 1):
            raise ValueError(f"nslots {nslots}: must be a power of two")
        if not _SLOT_HDR.size < slot_size <= 0xFFFF:
            raise ValueError(f"slot_size {slot_size}: must be in {_SLOT_HDR.size + 1}..65535")
        self.nslots = nslots
        self.slot_size = slot_size
        self._mask = nslots - 1
        self._mm = mmap.mmap(-1, _HEADER + nslots * slot_size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._buf = memoryview(self._mm)
        self._header = self._buf[:_HEADER]
        self._idx = self._header.cast("I")
        self._pending = 0  # consumer side: popped, not yet released

    def push(self, tag: bytes, data: bytes | memoryview) -> bool:
        """Copy one record in; False if the ring is full or the record does not fit a slot."""
        tag_len, data_len = len(tag), len(data)
        if _SLOT_HDR.size + tag_len + data_len > self.slot_size:
            return False
        idx = self._idx
        prod = idx[_PROD]
        if (prod - idx[_CONS]) & _U32 >= self.nslots:
            return False
        start = _HEADER + (prod & self._mask) * self.slot_size
        _SLOT_HDR.pack_into(self._buf, start, tag_len, data_len)
        start += _SLOT_HDR.size
        self._buf[start:start + tag_len] = tag
        self._buf[start + tag_len:start + tag_len + data_len] = data
        idx[_PROD] = (prod + 1) & _U32  # publish after the slot is written
        return True

    def pop(self, limit: int = 64) -> list[tuple[memoryview, memoryview]]:
        """Up to `limit` records after those already popped, as (tag, data) views valid until `release`."""
        idx = self._idx
        first = (idx[_CONS] + self._pending) & _U32
        count = min(limit, (idx[_PROD] - first) & _U32)
        out = []
        buf, size, mask = self._buf, self.slot_size, self._mask
        for i in range(first, first + count):
            start = _HEADER + (i & mask) * size
            tag_len, data_len = _SLOT_HDR.unpack_from(buf, start)
            start += _SLOT_HDR.size
            out.append((buf[start:start + tag_len], buf[start + tag_len:start + tag_len + data_len]))
        self._pending += count
        return out

    def release(self, n: int) -> None:
        """Give the oldest `n` popped slots back to the producer; their views must no longer be used."""
        if not 0 <= n <= self._pending:
            raise ValueError(f"release({n}) with {self._pending} popped")
        self._pending -= n
        self._idx[_CONS] = (self._idx[_CONS] + n) & _U32

    def reset(self) -> None:
        """Empty the ring (both indices to 0). For the coordinator after one end died: the surviving end
        must not be inside push/pop meanwhile, or it could publish an index from before the reset."""
        self._idx[_PROD] = 0
        self._idx[_CONS] = 0
        self._pending = 0

    def __len__(self) -> int:
        """Records pushed and not yet released."""
        return (self._idx[_PROD] - self._idx[_CONS]) & _U32

    def close(self) -> None:
        self._idx.release()
        self._header.release()
        self._buf.release()
        self._mm.close()
