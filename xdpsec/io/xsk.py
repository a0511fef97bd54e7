"""AF_XDP in pure Python: one UMEM per worker, one socket per (interface, rx queue), batched rings.

Why pure Python: the kernel's AF_XDP interface is a handful of setsockopt calls and four rings in shared memory,
so libxdp is not needed. Only `bind` goes through ctypes, because `socket.bind` rejects family 44.

How it works:

* `Umem` is an anonymous shared mapping cut into fixed-size frames, with a LIFO free list of frame-base
  addresses (LIFO keeps recently used frames warm in cache).
* The first `XskSocket` on a `Umem` registers it (XDP_UMEM_REG). Every later socket binds with
  XDP_SHARED_UMEM and a bound socket's fd, *with its own fill and completion rings*: the kernel requires that
  for sockets on another device or queue and has supported sharing one UMEM across devices since 5.10. A frame
  received on socket A can therefore be rewritten in place and transmitted on socket B; its address comes
  back on B's completion ring and returns to the free list. tests/netns/test_xsk.py checks exactly that on
  veth in copy mode (XDP_COPY; XDP_ZEROCOPY is EOPNOTSUPP on veth): received on one veth pair, sent on a
  second one, captured intact in a third namespace. A socket receives only from the one (device, rx queue)
  it is bound to; on veth that queue is the sender's tx queue, chosen per flow (both queues saw traffic).
* Rings are the kernel's single-producer single-consumer queues: free-running u32 producer/consumer indices
  and a power-of-two array of descriptors. Every operation takes a whole batch with one read of the other
  side's index and one write of ours.
* Receive descriptors point at packet data: frame base + XDP_PACKET_HEADROOM (256) + UMEM headroom. The
  classifier's metadata (bpf_xdp_adjust_meta; the kernel copies it in copy mode too, as the netns test
  checks) sits in the bytes right before it: `Umem.metadata(addr, size)`.

Memory ordering. The kernel reads our producer index with an acquire load and publishes its own with a
release store. On x86-64 (TSO) stores are not reordered with older stores and loads not with older loads, so
"write the descriptors, then store the producer index" and "load the producer index, then read the
descriptors" need no fence from us, nor does "read the descriptors, then store the consumer index" (x86 does
not move a store ahead of an older load). CPython cannot reorder them either: each store is a separate C call
reached through the interpreter's indirect dispatch, so the compiler cannot move one across another. Indices
are written through `memoryview.cast("I")`, a single aligned 4-byte store (struct's '<I' would store byte by
byte and a torn index could be seen). On a weakly ordered CPU (arm64) this would need real barriers.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import mmap
import socket
import struct
import time
from collections.abc import Sequence

AF_XDP = 44
SOL_XDP = 283
XDP_PACKET_HEADROOM = 256  # the kernel's reserved headroom in front of received data (include/uapi/linux/bpf.h)


class SockOpt(enum.IntEnum):
    """SOL_XDP socket options (include/uapi/linux/if_xdp.h)."""

    MMAP_OFFSETS = 1
    RX_RING = 2
    TX_RING = 3
    UMEM_REG = 4
    UMEM_FILL_RING = 5
    UMEM_COMPLETION_RING = 6
    STATISTICS = 7
    MAX_TX_SKB_BUDGET = 9


class BindFlag(enum.IntFlag):
    """sockaddr_xdp.sxdp_flags."""

    SHARED_UMEM = 1
    COPY = 2
    ZEROCOPY = 4
    USE_NEED_WAKEUP = 8


class PgOff(enum.IntEnum):
    """mmap offsets selecting which ring of a socket to map."""

    RX = 0
    TX = 0x80000000
    FILL = 0x100000000
    COMPLETION = 0x180000000


XDP_RING_NEED_WAKEUP = 1
#: Copy mode sends 32 descriptors per kick unless told otherwise (net/xdp/xsk.c MAX_PER_SOCKET_BUDGET).
TX_SKB_BUDGET = 256
#: errnos a wakeup may return while the kernel still holds our descriptors: the next one tries again.
_KICK_RETRY = frozenset({errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.ENETDOWN})
#: A closed socket's hold on its (device, queue) is released by deferred kernel work (xp_release_deferred):
#: binding the same queue again right away fails with EBUSY for ~16 ms here. A restarted worker retries.
BIND_BUSY_SECONDS = 1.0

_UMEM_REG = struct.Struct("=QQIIII")  # addr, len, chunk_size, headroom, flags, tx_metadata_len
_SOCKADDR_XDP = struct.Struct("=HHIII")  # family, flags, ifindex, queue_id, shared_umem_fd
_OFFSETS = struct.Struct("=16Q")  # {producer, consumer, desc, flags} for rx, tx, fill, completion
_STATS_FIELDS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                 "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
_STATS = struct.Struct(f"={len(_STATS_FIELDS)}Q")

_libc = ctypes.CDLL(None, use_errno=True)


class Umem:
    """The packet buffer area shared by all of one worker's sockets, and its free list of frames."""

    def __init__(self, nframes: int = 4096, frame_size: int = 2048) -> None:
        # Aligned mode: the kernel wants a power-of-two chunk of 2048..PAGE_SIZE bytes.
        if frame_size & (frame_size - 1) or not 2048 <= frame_size <= mmap.PAGESIZE:
            raise ValueError(f"frame_size {frame_size}: must be a power of two in 2048..{mmap.PAGESIZE}")
        if nframes <= 0:
            raise ValueError(f"nframes {nframes}: must be positive")
        self.frame_size = frame_size
        self.nframes = nframes
        self._mask = ~(frame_size - 1)
        self._mm = mmap.mmap(-1, nframes * frame_size,
                             flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        anchor = ctypes.c_char.from_buffer(self._mm)
        self.address = ctypes.addressof(anchor)  # valid while the mapping is open
        del anchor  # drop the buffer export, or the mapping could never be closed
        self.buf = memoryview(self._mm)
        # LIFO: pop() hands out the most recently freed, cache-warm frame.
        self._free = list(range((nframes - 1) * frame_size, -1, -frame_size))
        #: Bound sockets using this UMEM; a new socket shares it through any of them.
        self.sockets: list[XskSocket] = []

    def alloc(self) -> int | None:
        """A free frame's base address, or None when all frames are in use."""
        return self._free.pop() if self._free else None

    def free(self, addr: int) -> None:
        """Return a frame; `addr` may point anywhere inside it (rx descriptors point past the headroom)."""
        self._free.append(addr & self._mask)

    def free_count(self) -> int:
        return len(self._free)

    def metadata(self, addr: int, size: int) -> memoryview:
        """The `size` bytes of XDP metadata the classifier left immediately before the packet at `addr`."""
        return self.buf[addr - size:addr]

    def close(self) -> None:
        """Unmap; after its sockets are closed and with no view of `buf` left (else BufferError)."""
        self.buf.release()
        self._mm.close()


class _Ring:
    """One mmapped kernel ring: producer, consumer and flags words and the descriptor array."""

    def __init__(self, fd: int, pgoff: int, offsets: tuple[int, ...], size: int, entry: int) -> None:
        prod_off, cons_off, desc_off, flags_off = offsets
        self.size = size
        self.mask = size - 1
        self._mm = mmap.mmap(fd, desc_off + size * entry, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        whole = memoryview(self._mm)
        self._views = [whole]
        self.producer = self._view(whole[prod_off:prod_off + 4], "I")
        self.consumer = self._view(whole[cons_off:cons_off + 4], "I")
        self.flags = self._view(whole[flags_off:flags_off + 4], "I")
        area = whole[desc_off:desc_off + size * entry]
        self._views.append(area)
        # A descriptor {u64 addr; u32 len; u32 options} is Q[2i] and I[4i + 2]; a fill/completion entry is Q[i].
        self.q = self._view(area, "Q")
        self.u32 = self._view(area, "I") if entry == 16 else None

    def _view(self, mv: memoryview, fmt: str) -> memoryview:
        view = mv.cast(fmt)
        self._views += [mv, view]
        return view

    def needs_wakeup(self) -> bool:
        return bool(self.flags[0] & XDP_RING_NEED_WAKEUP)

    def close(self) -> None:
        for view in reversed(self._views):
            view.release()
        self._mm.close()


def _bind(fd: int, ifindex: int, queue: int, flags: int, shared_fd: int) -> None:
    """libc bind(); EBUSY is retried for a while, see BIND_BUSY_SECONDS."""
    addr = _SOCKADDR_XDP.pack(AF_XDP, flags, ifindex, queue, shared_fd)
    deadline = time.monotonic() + BIND_BUSY_SECONDS
    while _libc.bind(fd, ctypes.c_char_p(addr), len(addr)) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY or time.monotonic() > deadline:
            raise OSError(err, f"AF_XDP bind(ifindex {ifindex}, queue {queue}): {errno.errorcode.get(err, err)}")
        time.sleep(0.002)


class XskSocket:
    """An AF_XDP socket bound to one (interface, rx queue), with its own rx, tx, fill and completion rings."""

    def __init__(self, umem: Umem, ifindex: int, queue: int, *, ring_size: int = 2048,
                 shared_with: XskSocket | None = None, need_wakeup: bool = True) -> None:
        """Register `umem` if no socket has yet, else share it with its owner (or `shared_with`).

        A shared socket inherits copy mode and need_wakeup from the owner: the kernel refuses other bind flags
        next to XDP_SHARED_UMEM.
        """
        if ring_size & (ring_size - 1) or ring_size <= 0:
            raise ValueError(f"ring_size {ring_size}: must be a power of two")
        shared_with = shared_with or (umem.sockets[0] if umem.sockets else None)
        if shared_with is not None and shared_with.umem is not umem:
            raise ValueError("shared_with must use the same Umem")
        self.umem = umem
        self.ifindex = ifindex
        self.queue = queue
        self._sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        self.fd = self._sock.fileno()
        self._rings: list[_Ring] = []
        self._need_wakeup = need_wakeup if shared_with is None else shared_with._need_wakeup
        try:
            self._setup(ring_size, shared_with, need_wakeup)
        except BaseException:
            self.close()
            raise

    def _setup(self, ring_size: int, shared_with: XskSocket | None, need_wakeup: bool) -> None:
        sock, umem = self._sock, self.umem
        if shared_with is None:
            sock.setsockopt(SOL_XDP, SockOpt.UMEM_REG,
                            _UMEM_REG.pack(umem.address, umem.nframes * umem.frame_size, umem.frame_size, 0, 0, 0))
        for opt in (SockOpt.UMEM_FILL_RING, SockOpt.UMEM_COMPLETION_RING, SockOpt.RX_RING, SockOpt.TX_RING):
            sock.setsockopt(SOL_XDP, opt, ring_size)
        offs = _OFFSETS.unpack(sock.getsockopt(SOL_XDP, SockOpt.MMAP_OFFSETS, _OFFSETS.size))
        self._rx = self._map(PgOff.RX, offs[0:4], ring_size, 16)
        self._tx = self._map(PgOff.TX, offs[4:8], ring_size, 16)
        self._fq = self._map(PgOff.FILL, offs[8:12], ring_size, 8)
        self._cq = self._map(PgOff.COMPLETION, offs[12:16], ring_size, 8)
        try:  # 6.18+; without it copy mode sends 32 frames a kick (EAGAIN while more wait)
            sock.setsockopt(SOL_XDP, SockOpt.MAX_TX_SKB_BUDGET, min(TX_SKB_BUDGET, ring_size))
        except OSError:
            pass
        if shared_with is None:
            flags = BindFlag.COPY | (BindFlag.USE_NEED_WAKEUP if need_wakeup else 0)
            _bind(self.fd, self.ifindex, self.queue, flags, 0)
        else:
            _bind(self.fd, self.ifindex, self.queue, BindFlag.SHARED_UMEM, shared_with.fd)
        umem.sockets.append(self)

    def _map(self, pgoff: int, offsets: tuple[int, ...], size: int, entry: int) -> _Ring:
        ring = _Ring(self.fd, pgoff, offsets, size, entry)
        self._rings.append(ring)
        return ring

    def fill(self, n: int | None = None) -> int:
        """Move up to `n` free frames (default: as many as fit) to the fill ring; returns how many moved."""
        fq, free = self._fq, self.umem._free
        prod = fq.producer[0]
        room = fq.size - ((prod - fq.consumer[0]) & 0xFFFFFFFF)
        count = min(room, len(free), room if n is None else n)
        q, mask = fq.q, fq.mask
        for i in range(prod, prod + count):
            q[i & mask] = free.pop()
        fq.producer[0] = (prod + count) & 0xFFFFFFFF  # after the entries: see the module docstring
        if count and fq.needs_wakeup():  # only drivers in zero-copy mode ask for this
            self._syscall(self._sock.recv, 0, socket.MSG_DONTWAIT)
        return count

    def recv(self, batch: int = 64) -> list[tuple[int, int]]:
        """Up to `batch` received packets as (address of the data in the UMEM, length).

        The frames are the caller's until it sends them or returns them with `umem.free`.
        """
        rx = self._rx
        cons = rx.consumer[0]
        count = min(batch, (rx.producer[0] - cons) & 0xFFFFFFFF)
        q, u32, mask = rx.q, rx.u32, rx.mask
        out = []
        for i in range(cons, cons + count):
            slot = i & mask
            out.append((q[2 * slot], u32[4 * slot + 2]))
        rx.consumer[0] = (cons + count) & 0xFFFFFFFF  # after reading the descriptors: the slots are reusable
        return out

    def send(self, descs: Sequence[tuple[int, int]]) -> int:
        """Queue (address, length) descriptors on the tx ring and kick; returns how many were queued.

        Descriptors not queued (ring full) stay the caller's; queued ones come back through `complete`, which
        the caller must run every batch (a full completion ring stalls transmission). An address may point
        into the frame's headroom, but the packet must not cross the frame's end: such a descriptor is not
        sent, is counted in tx_invalid_descs, and (measured on 6.18) still completes. Calling with no
        descriptors kicks again if earlier ones are still waiting.
        """
        tx = self._tx
        prod = tx.producer[0]
        pending = (prod - tx.consumer[0]) & 0xFFFFFFFF
        count = min(len(descs), tx.size - pending)
        q, u32, mask = tx.q, tx.u32, tx.mask
        for i in range(count):
            slot = (prod + i) & mask
            addr, length = descs[i]
            q[2 * slot] = addr
            u32[4 * slot + 2] = length
            u32[4 * slot + 3] = 0
        tx.producer[0] = (prod + count) & 0xFFFFFFFF  # after the descriptors: see the module docstring
        if count or pending:
            self._kick()
        return count

    def _kick(self) -> None:
        # Copy mode keeps the tx NEED_WAKEUP flag set, so in practice this always makes the syscall.
        if not self._need_wakeup or self._tx.needs_wakeup():
            self._syscall(self._sock.send, b"", socket.MSG_DONTWAIT)

    @staticmethod
    def _syscall(call, *args) -> None:
        try:
            call(*args)
        except OSError as exc:
            if exc.errno not in _KICK_RETRY:
                raise

    def complete(self) -> int:
        """Return the frames of finished transmissions to the UMEM's free list; returns how many."""
        cq, free, mask_frame = self._cq, self.umem._free, self.umem._mask
        cons = cq.consumer[0]
        count = (cq.producer[0] - cons) & 0xFFFFFFFF
        q, mask = cq.q, cq.mask
        for i in range(cons, cons + count):
            free.append(q[i & mask] & mask_frame)
        cq.consumer[0] = (cons + count) & 0xFFFFFFFF
        return count

    def stats(self) -> dict[str, int]:
        """The kernel's XDP_STATISTICS counters for this socket."""
        raw = self._sock.getsockopt(SOL_XDP, SockOpt.STATISTICS, _STATS.size)
        return dict(zip(_STATS_FIELDS, _STATS.unpack(raw), strict=True))

    def close(self) -> None:
        """Unmap the rings and close the socket (which empties its XSKMAP slot). Idempotent."""
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        if self in self.umem.sockets:
            self.umem.sockets.remove(self)
        self._sock.close()
