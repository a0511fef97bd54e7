"""A worker process: AF_XDP rings on one side, the packet core on the other.

Each worker owns one UMEM and one AF_XDP socket per (interface, rx queue) it serves — queue q belongs to worker
q % N — plus the SAs the coordinator gave it. The loop is:

    receive a batch from every socket ─► read the classifier's metadata in front of each frame
        ├─ SA owned by another worker ─► copy into the handoff ring to that worker (bounded; full = counted drop)
        └─ ours ─► PacketCore.process() ─► frames to send, grouped by egress port
    drain the handoff rings from other workers the same way
    transmit each port's batch with one kick; reap completions; refill fill rings
    every few rounds (or when idle): coordinator commands; next-hop requests up to the coordinator
    nothing for BUSY_POLL_NS since the last frame ─► sleep in poll() (sockets, command pipe, handoff eventfd)

`LoopStats` counts what the loop itself does (rounds, frames per round, tx kicks, sleeps) with one add per
round or kick, never per frame, so `xdpsec stats` shows batch sizes that once had to be derived from perf's
syscall counts (docs/PERFORMANCE.md, "Batches").

The worker runs with no capabilities (xdpsec.io.caps.WORKER): it drops them all before its loop starts.

Nothing here raises on network input: the core turns bad packets into counted drops, and an unexpected
exception from one frame is counted as `bad_meta`, logged once per kind, and the loop goes on.

The coordinator creates the sockets, rings and the sequence store, fills the XSKMAP and then forks the worker,
which inherits them; when a worker dies its sockets close, the kernel empties their XSKMAP slots (packets for
them become `no_socket` drops in XDP) and the coordinator starts a new one.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import struct
import time
from dataclasses import asdict, dataclass, field

from xdpsec.abi import XS_META_MAGIC, DropReason, drop_name
from xdpsec.dataplane.core import PacketCore, Port
from xdpsec.io import caps
from xdpsec.io.ring import HandoffRing
from xdpsec.io.seqstore import RESERVE_BLOCK, SeqStore
from xdpsec.io.xsk import Umem, XskSocket

log = logging.getLogger("xdpsec.worker")

BATCH = 64
TX_OFFSET = 256  # where a frame we build starts inside its 2048-byte UMEM frame (room for the metadata area)
#: Handoff tag: kind, SA index, L3 offset, ingress port slot.
TAG = struct.Struct("<HIHh")
COMMAND_EVERY = 16  # rounds between looks at the command pipe while busy
#: After the last frame, keep polling the rings this long before sleeping in poll(). Time, not a count of empty
#: rounds: an empty round costs ~5 µs warm and ~50 µs cold here, so a round count is no bound at all. Short on
#: purpose (docs/PERFORMANCE.md, "Latency"): spinning does not keep the packet code's caches warm on this VM,
#: and on 2 shared vCPUs a spinning worker delays the very processes (the other gateway, the hosts) whose reply
#: it waits for. Only activity starts the window, so an idle worker costs no CPU.
BUSY_POLL_NS = 50_000
IDLE_WAIT_MS = 100  # poll() timeout when idle: sockets, the command pipe and the handoff eventfd wake us


@dataclass
class WorkerSpec:
    """Everything a worker inherits from the coordinator at fork."""

    wid: int
    ports: dict[int, Port]
    umem: Umem
    sockets: list[tuple[int, XskSocket]]  # (port slot, socket) for every queue this worker serves
    handoff_in: list[HandoffRing]
    handoff_out: dict[int, HandoffRing]  # owner worker -> ring
    seqstore: SeqStore
    wake_fd: int = -1  # eventfd other workers signal after handing frames to this one
    wake_out: dict[int, int] = field(default_factory=dict)  # owner worker -> its wake_fd
    fill_per_socket: int = 1024
    cpu: int | None = None  # pinned to this CPU ([gateway] cpus), None: not pinned
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class LoopStats:
    """The loop's own counters, reported as `loop` in the worker's snapshot (`xdpsec stats`).

    Between two snapshots, frames / busy_rounds is the mean rx batch and kick_frames / kicks the mean tx
    batch. A snapshot is taken between rounds, so every round is counted whole."""

    rounds: int = 0  # every pass of the loop
    busy_rounds: int = 0  # passes that took in at least one frame
    frames: int = 0  # frames those passes took in: from our sockets plus from other workers' handoff rings
    kicks: int = 0  # tx kicks: one send() per port with frames to send, a sendto() in copy mode
    kick_frames: int = 0  # frames those kicks put on tx rings
    sleeps: int = 0  # times the loop went to sleep in poll()


class Worker:
    def __init__(self, spec: WorkerSpec, conn) -> None:
        self.spec = spec
        self.conn = conn
        self.core = PacketCore(spec.wid, spec.ports)
        self.core.on_inbound_seq = self._saw
        self.umem = spec.umem
        self.buf = spec.umem.buf
        self.tx_sock: dict[int, XskSocket] = {}
        for slot, sock in spec.sockets:
            self.tx_sock.setdefault(slot, sock)
        self.seq_slot: dict[int, int] = {}  # SA index -> sequence store record
        self.handoff_in_count = 0
        self.handoff_out_count = 0
        self.loop = LoopStats()
        self.stop = False
        self._logged: set[str] = set()
        self._to_wake: set[int] = set()
        # Descriptors to transmit this round, per egress port: one tx-ring batch and one kick per port.
        self._pending: dict[int, list[tuple[int, int]]] = {slot: [] for slot in self.tx_sock}
        self._copies: list[tuple[int, bytes]] = []  # reused: frames the general path built as bytes
        # Frames each socket's fill ring is owed: exactly what it delivered. Every socket keeps its initial
        # share and the rest of the UMEM stays free for frames being built and sent; topping fill rings up
        # to their size instead would let them swallow every frame and leave none to transmit.
        self._refill = [0] * len(spec.sockets)

    # --- sequence numbers ------------------------------------------------------------------------------------
    def _reserve_for(self, index: int):
        def reserve(sa) -> int:
            upto = sa.seq + RESERVE_BLOCK
            self.spec.seqstore.reserve(self.seq_slot[index], upto)
            return upto
        return reserve

    def _saw(self, index: int, seq: int) -> None:
        slot = self.seq_slot.get(index)
        if slot is not None:
            self.spec.seqstore.saw(slot, seq)

    # --- commands from the coordinator ---------------------------------------------------------------------
    def handle(self, msg: tuple) -> None:
        op = msg[0]
        if op == "add_out":
            _, index, params, slot, req = msg
            self.seq_slot[index] = slot
            next_seq = self.spec.seqstore.reserved(slot) + 1
            self.core.add_outbound(index, params, next_seq=next_seq, reserve=self._reserve_for(index))
            self._ack(req)
        elif op == "add_in":
            _, index, params, slot, req = msg
            self.seq_slot[index] = slot
            self.core.add_inbound(index, params, highest_seq=self.spec.seqstore.highest_seen(slot))
            self._ack(req)
        elif op == "update":
            _, index, params, req = msg
            self.core.update(index, params)
            self._ack(req)
        elif op == "del":
            _, index, req = msg
            self.core.remove(index)
            self.seq_slot.pop(index, None)
            self._ack(req)
        elif op == "route":
            self.core.set_route(msg[1], msg[2])
        elif op == "unresolved":
            self.core.unresolved(msg[1])
        elif op == "forget_routes":
            self.core.forget_routes()
        elif op == "query":
            self.conn.send(("reply", msg[1], self.snapshot()))
        elif op == "stop":
            self.stop = True

    def _ack(self, req: int) -> None:
        """Tell the coordinator a change is in place (0: nobody waits for it)."""
        if req:
            self.conn.send(("reply", req, True))

    def snapshot(self) -> dict:
        core = self.core
        sas = {}
        for index, st in core.sa_stats.items():
            sa = core.out.get(index)
            entry = {"packets": st.packets, "bytes": st.bytes,
                     "drops": {drop_name(r): n for r, n in (st.drops or {}).items()}}
            if sa is not None:
                entry["seq"] = sa.seq
            sas[index] = entry
        socks = {}
        for slot, sock in self.spec.sockets:
            try:
                socks[f"{self.spec.ports[slot].name}/q{sock.queue}"] = sock.stats()
            except OSError:
                pass
        return {"id": self.spec.wid, "pid": os.getpid(), "rx": core.rx, "tx": core.tx,
                "handoff_in": self.handoff_in_count, "handoff_out": self.handoff_out_count,
                "icmp_sent": core.icmp_sent, "dummies": core.dummies,
                "drops": {drop_name(r): n for r, n in core.drops.items()}, "sas": sas, "sockets": socks,
                "loop": asdict(self.loop)}

    def _commands(self) -> int:
        """Handle the coordinator's commands; returns how many frames they released for sending (packets that
        waited for a next hop), which the caller must flush before it sleeps."""
        while self.conn.poll(0):
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.stop = True  # the coordinator is gone: fail closed
                return 0
            self.handle(msg)
        ready = 0
        for slot, data in self.core.take_ready():
            self._queue_tx(slot, data)
            ready += 1
        requests = self.core.take_requests()
        if requests:
            self.conn.send(("resolve", requests))
        return ready

    # --- packets ---------------------------------------------------------------------------------------------
    def _unexpected(self, exc: BaseException) -> None:
        self.core.count_drop(DropReason.BAD_META)
        key = type(exc).__name__
        if key not in self._logged:
            self._logged.add(key)
            log.exception("worker %d: unexpected %s while processing a frame (counted as bad_meta)",
                          self.spec.wid, key)

    def _process_frame(self, slot: int, addr: int, length: int, kind: int, sa_index: int, l3_off: int) -> None:
        """Process the frame at `addr`, ours from now on: sent in place, or freed (and any copies queued)."""
        copies = self._copies
        try:
            tx = self.core.process_frame(slot, self.buf, addr, length, kind, sa_index, l3_off, copies,
                                         self.umem.frame_size)
        except Exception as exc:  # a bug, not a packet problem: keep forwarding
            self._unexpected(exc)
            tx = None
        if tx is None:
            self.umem.free(addr)
        else:
            eslot, start, n = tx
            pending = self._pending.get(eslot)
            if pending is not None:
                pending.append((start, n))  # the frame returns to the free list when the send completes
            else:
                self.umem.free(addr)
                self.core.count_drop(DropReason.NO_ROUTE)
        if copies:
            for eslot, data in copies:
                self._queue_tx(eslot, data)
            copies.clear()

    def _queue_tx(self, slot: int, data: bytes) -> None:
        if slot not in self.tx_sock:
            self.core.count_drop(DropReason.NO_ROUTE)
            return
        addr = self.umem.alloc()
        if addr is None:
            self.core.count_drop(DropReason.NO_FRAME)
            return
        n = len(data)
        if n > self.umem.frame_size - TX_OFFSET:
            self.umem.free(addr)
            self.core.count_drop(DropReason.TOO_BIG)
            return
        start = addr + TX_OFFSET
        self.buf[start:start + n] = data
        self._pending[slot].append((start, n))

    def _rx(self, slot: int, descs: list[tuple[int, int]]) -> None:
        buf = self.buf
        wid = self.spec.wid
        unpack, meta_size = META.unpack_from, META.size
        for addr, length in descs:
            magic, sa_index, _policy, owner, _ifslot, l3_off, _l4, kind, _ver = unpack(buf, addr - meta_size)
            if magic == XS_META_MAGIC and owner == wid:
                self._process_frame(slot, addr, length, kind, sa_index, l3_off)
                continue
            if magic != XS_META_MAGIC:
                self.core.count_drop(DropReason.BAD_META)
            else:
                ring = self.spec.handoff_out.get(owner)
                if ring is not None and ring.push(TAG.pack(kind, sa_index, l3_off, slot), buf[addr:addr + length]):
                    self.handoff_out_count += 1
                    self._to_wake.add(owner)
                else:
                    self.core.count_drop(DropReason.HANDOFF_FULL)
            self.umem.free(addr)

    def _drain_handoff(self) -> int:
        """Frames other workers handed us: each copied once, from the ring into a UMEM frame laid out as a
        received one (packet at TX_OFFSET), then processed exactly like a frame from our own sockets."""
        n = 0
        buf, umem = self.buf, self.umem
        room = umem.frame_size - TX_OFFSET
        for ring in self.spec.handoff_in:
            items = ring.pop(BATCH)
            if not items:
                continue
            for tag, data in items:
                kind, sa_index, l3_off, slot = TAG.unpack(tag[:TAG.size])
                addr = umem.alloc()
                if addr is None:
                    self.core.count_drop(DropReason.NO_FRAME)
                    continue
                length = len(data)
                if length > room:  # cannot come from a 2048-byte frame; refuse rather than overrun
                    umem.free(addr)
                    self.core.count_drop(DropReason.BAD_META)
                    continue
                start = addr + TX_OFFSET
                buf[start:start + length] = data
                self._process_frame(slot, start, length, kind, sa_index, l3_off)
            ring.release(len(items))
            n += len(items)
        self.handoff_in_count += n
        return n

    def _flush(self) -> None:
        # One eventfd write per owner per round, not per frame: the owner may be asleep in poll().
        for owner in self._to_wake:
            fd = self.spec.wake_out.get(owner, -1)
            if fd >= 0:
                try:
                    os.eventfd_write(fd, 1)
                except BlockingIOError:  # counter saturated: the owner has plenty of wake-ups pending
                    pass
        self._to_wake.clear()
        loop = self.loop
        for slot, descs in self._pending.items():
            if not descs:
                continue
            sock = self.tx_sock[slot]
            sent = sock.send(descs)
            loop.kicks += 1
            loop.kick_frames += sent
            for addr, _ in descs[sent:]:
                self.umem.free(addr)
                self.core.count_drop(DropReason.TX_FULL)
            descs.clear()
        refill = self._refill
        for i, (_slot, sock) in enumerate(self.spec.sockets):
            sock.complete()
            if refill[i]:
                refill[i] -= sock.fill(refill[i])

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
        for _slot, sock in self.spec.sockets:
            sock.fill(self.spec.fill_per_socket)
        poller = select.poll()
        for _slot, sock in self.spec.sockets:
            poller.register(sock.fd, select.POLLIN)
        poller.register(self.conn.fileno(), select.POLLIN)
        if self.spec.wake_fd >= 0:
            poller.register(self.spec.wake_fd, select.POLLIN)
        loop = self.loop
        last_busy = 0
        clock = time.monotonic_ns
        while not self.stop:
            n = 0
            for i, (slot, sock) in enumerate(self.spec.sockets):
                descs = sock.recv(BATCH)
                if descs:
                    n += len(descs)
                    self._refill[i] += len(descs)
                    self._rx(slot, descs)
            n += self._drain_handoff()
            self._flush()  # every round: a frame is never held back for the next batch
            loop.rounds += 1
            if n:
                loop.busy_rounds += 1
                loop.frames += n
                last_busy = clock()
                if loop.rounds % COMMAND_EVERY == 0:
                    self._commands()
                continue
            if clock() - last_busy < BUSY_POLL_NS:
                continue
            # Frames released by a command (a resolved next hop) go out now, not after the next wake-up.
            if self._commands():
                continue
            self._sleep(poller)

    def _sleep(self, poller: select.poll) -> None:
        """Block until a socket has frames, the coordinator writes, or another worker hands us frames."""
        self.loop.sleeps += 1
        for fd, _ev in poller.poll(IDLE_WAIT_MS):
            if fd == self.spec.wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass


#: struct xs_meta (xdpsec/bpf/include/xdpsec_abi.h) as struct.unpack_from reads it: a few times faster per frame than
#: the ctypes mirror, and tests/unit/test_worker_meta.py checks the two agree field by field.
META = struct.Struct("<IIIHHHHBB2x")
META_FIELDS = ("magic", "sa_index", "policy_id", "owner", "ifslot", "l3_off", "l4_off", "kind", "ip_version")


def read_meta(buf, addr: int) -> tuple[int, int, int, int, int]:
    """(magic, sa_index, kind, owner, l3_off) from the classifier's metadata just before `addr`.

    `Worker._rx` does the same `META.unpack_from` inline (a call per frame costs ~0.1 µs); this is the
    readable form the tests pin to the ABI."""
    magic, sa_index, _policy, owner, _slot, l3_off, _l4, kind, _ver = META.unpack_from(buf, addr - META.size)
    return magic, sa_index, kind, owner, l3_off


def worker_main(spec: WorkerSpec, conn, log_level: int = logging.INFO) -> None:
    """Entry point of the forked worker process."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{spec.wid} %(levelname)s %(message)s")
    if spec.cpu is not None:
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError as exc:  # EINVAL: no such CPU here, or not in this cgroup's cpuset
            log.warning("worker %d: not pinned to CPU %d: %s", spec.wid, spec.cpu, exc.strerror or exc)
    w = Worker(spec, conn)
    # Everything privileged is done: the coordinator created the sockets and the UMEM, and the loop only moves
    # frames through rings it already holds. A worker is forked from a coordinator thread, which holds
    # caps.COORDINATOR (coordinator.run_main), and drops the rest here. Failing to drop is fatal: never run the network-facing code
    # with capabilities (the coordinator logs the exit and restarts the worker).
    held = caps.drop_to(caps.WORKER)
    log.debug("worker %d: capabilities dropped (CapEff %#x)", spec.wid, held)
    try:
        w.run()
    finally:
        for _slot, sock in spec.sockets:
            sock.close()
