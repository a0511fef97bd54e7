"""The coordinator: one process per gateway that sets up the data path and keeps it running.

Start-up order matters, because from the moment the XDP program is attached it classifies real traffic:

1. read and validate the configuration (nothing starts on a bad one);
2. learn the interfaces (netlink), compile the classifier, fill its maps: interfaces, local addresses,
   inbound SPIs, the child -> outbound SA table and the SPD;
3. create every worker's UMEM, AF_XDP sockets and handoff rings, put the sockets in the XSKMAP, fork the
   workers and hand each the SAs it owns;
4. attach XDP to the interfaces last, pin the maps under /sys/fs/bpf/xdpsec/<instance>, open the control socket.

While running, a pump thread serves the workers (next-hop requests, replies, deaths): a worker that dies is
replaced with fresh sockets and given its SAs again, its outbound sequence numbers resuming after the last
reserved block (xdpsec/io/seqstore.py) so no number is ever used twice. SIGTERM/SIGINT detach XDP first (no
frame is steered to a socket that is going away), then stop the workers and remove pins and the socket.

IKE hands its child SAs over through `install_child` and `remove_child`. A child may hold several SA pairs at
once while it is rekeyed (RFC 7296 §2.8): `ChildPairs` says which one carries its outbound traffic; every
other keeps decrypting until IKE names it in `remove_child`, so no packet is lost at a rekey.

Many peers on one connection (a road-warrior hub, `remote_addrs = ["%any"]`): the unit of the data path is a
child *instance*, one per peer, not the configured child. The IKE shell names it (xdpsec/ikeservice.py):
`conn/child` for a connection with a configured peer, `conn/child[peer address]` (plus `:port` behind a NAT)
for one that accepts any; `xdpsec sas` and `status` show that name. ChildPairs, the classifier's child entries
(`child_ids`, allocated and freed per instance) and the SPD entries below are per instance, so a second peer
never replaces the first. RFC 4301 §4.4.1 and RFC 7296 §2.9: the SPD entries an IKE-created SA needs come from
its negotiated, possibly narrowed, selectors. So for an instance of a `%any` connection, or whose selectors are
narrower than the configuration's, `instance_policies` derives them from the SA (OUT PROTECT steering to this
instance, IN PROTECT requiring ESP for its peer's traffic); they are added with the instance's first pair and
taken away with its last, one atomic SPD flip each time (`merge_policies`: same priority class as the child's
configured policies, before them, more specific first). The configured policies of a `%any` child stay as the
catch-all: their child entry never has an SA, so traffic no instance covers drops as no_sa, never in clear.

Reload (`xdpsec reload`, or SIGHUP, whose handler only queues it for the main thread) re-reads the file the
gateway was started with. A file with errors changes nothing; otherwise xdpsec/reload.py says what differs
and only that is touched: new SAs are installed before the SPD that uses them flips, removed ones are torn
down after it, unchanged ones keep their SA index and sequence numbers, so their traffic never notices.

Also wired in here: logging per subsystem (xdpsec.logs), the Prometheus endpoint (xdpsec.metrics, when
[metrics] listen is set), Wireshark key export (xdpsec.keyexport, when [debug] key_export is set), and the
clean-up after a SIGKILLed predecessor of the same instance (xdpsec.io.adopt), first thing at start.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import ipaddress
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import multiprocess

from xdpsec import config as configmod
from xdpsec import logs, metrics
from xdpsec import reload as reloadmod
from xdpsec.abi import XS_MAX_CHILDREN, Action, PolicyDir
from xdpsec.control import ControlError, ControlServer, socket_path
from xdpsec.dataplane.core import Port, Route
from xdpsec.ike import ts as ike_ts
from xdpsec.ike.conf import StartAction
from xdpsec.io import adopt, caps
from xdpsec.io.bpf import Classifier
from xdpsec.io.localpath import BYPASS_MARK, DATAPATH_END, KERNEL_END, LocalPath, local_routes
from xdpsec.io.netlink import Netlink
from xdpsec.io.ring import HandoffRing
from xdpsec.io.seqstore import SeqStore
from xdpsec.io.xsk import Umem, XskSocket
from xdpsec.keyexport import KeyExport
from xdpsec.proposals import format_transform
from xdpsec.sa import Direction, LimitReached, SAParams
from xdpsec.spd import Policy, auto_priority
from xdpsec.worker import WorkerSpec, worker_main

log = logging.getLogger("xdpsec.dataplane")
config_log = logging.getLogger("xdpsec.config")

PIN_ROOT = Path("/sys/fs/bpf/xdpsec")
UMEM_FRAMES = 8192
RING_SIZE = 2048
HANDOFF_SLOTS = 1024
ROUTE_REFRESH = 30.0  # seconds between re-resolving known next hops (neighbours move, routes change)
RESOLVE_RETRY = 0.5  # do not ask the kernel about the same unresolved destination more often than this
RESOLVE_QUEUE = 1024
#: Threads resolving next hops at once: a neighbour that never answers holds one of them for RESOLVE_TIMEOUT,
#: not every request queued behind it (install_child primes hosts that may well be down).
RESOLVERS = 4
RESOLVE_TIMEOUT = 1.0  # seconds the kernel gets to resolve a neighbour before its held packets are dropped
QUERY_TIMEOUT = 2.0
TRAP_RETRY = 10.0  # seconds before an acquire may start another negotiation of the same child
RESTART_BACKOFF = 1.0  # seconds: a worker that dies sooner than this after starting is restarted this much later
USAGE_MAX_AGE = 1.0  # seconds: IKE's byte/packet lifetimes read counters at most this old (refreshed in the background)
RETIRE_GRACE = 0.5  # seconds an SA replaced in a rekey lives on, for frames XDP already classified for it
TOP_DROPS = 5  # drop reasons `xdpsec status` shows
#: Policy ids of per-instance policies start here, far above any configuration's 1..n: a configured policy keeps
#: its id (and its hit counter) when instances come and go.
INSTANCE_POLICY_IDS = 1 << 24


def instance_policies(instance: str, out_p: SAParams, priority: int = 0) -> list[Policy]:
    """The SPD entries one IKE-created child instance needs, from its outbound SA's negotiated selectors (RFC
    7296 §2.9 narrowing; RFC 4301 §4.4.1: an SA created by IKE brings the SPD entries its selectors describe).

    OUT PROTECT (source in local_ts, destination in remote_ts) steers to this instance; IN PROTECT (the
    reverse) drops that traffic when it arrives in clear (RFC 4301 §5.2). `priority` is the child's configured
    one; 0 picks strongSwan's automatic priority per policy, so narrower selectors come first. Ids are 0: the
    caller numbers them."""
    out = []
    for direction, srcs, dsts in ((PolicyDir.OUT, out_p.local_ts, out_p.remote_ts),
                                  (PolicyDir.IN, out_p.remote_ts, out_p.local_ts)):
        # the same pairing (families, protocols, ICMP types) as the configured policies
        for src, dst, proto, sports, dports in configmod._selector_pairs(srcs, dsts):
            policy = Policy(id=0, name=instance, direction=direction, action=Action.PROTECT, priority=priority,
                            src=src, dst=dst, proto=proto, sports=sports, dports=dports, child=instance)
            out.append(policy if priority else dataclasses.replace(policy, priority=auto_priority(policy)))
    return out


def _selectors(policies: list[Policy]) -> set[tuple]:
    return {(p.direction, p.action, p.src, p.dst, p.proto, p.sports, p.dports) for p in policies}


def needs_own_policies(derived: list[Policy], configured: list[Policy], *, any_peer: bool) -> bool:
    """Whether an instance needs policies of its own: its connection accepts any peer (the configured ones are
    the catch-all of every instance), or its negotiated selectors differ from the configured ones (narrowed)."""
    return any_peer or _selectors(derived) != _selectors(configured)


def merge_policies(configured: list[Policy], instances: dict[str, list[Policy]]) -> list[Policy]:
    """The SPD the classifier walks: configured and per-instance policies in priority order (lower first).

    At equal priority an instance's policies come before configured ones (they are the child's own, narrower
    or peer-specific, entries) and among instances the more specific first (strongSwan's automatic priority as
    the tie-break). The configured policies keep their ids and relative order; the instances' already carry
    theirs (INSTANCE_POLICY_IDS and up)."""
    dynamic = [p for name in sorted(instances) for p in instances[name]]
    tagged = [((p.priority, 0, auto_priority(p)), p) for p in dynamic]
    tagged += [((p.priority, 1, 0), p) for p in configured]
    return [p for _key, p in sorted(tagged, key=lambda t: t[0])]


def base_child(instance: str) -> str:
    """`conn/child` of an instance name `conn/child[peer]` (and of `conn/child` itself)."""
    return instance.split("[", 1)[0]


@dataclass
class InstalledSA:
    index: int
    child: str
    params: SAParams
    owner: int
    seq_slot: int


class PairState(enum.Enum):
    """Where one SA pair of a child stands in a rekey (RFC 7296 §2.8, make-before-break)."""

    PENDING = "pending"  # installed, its outbound SA not used yet: a rekey responder's new pair (ChildUp.activate_out)
    ACTIVE = "active"    # the classifier steers the child's traffic to its outbound SA
    RETIRED = "retired"  # a newer pair took over; its inbound SA still decrypts until the pair's ChildDown


@dataclass
class ChildPair:
    out: int  # SA indices (Gateway.sas)
    inb: int
    out_spi: int
    in_spi: int
    state: PairState = PairState.PENDING


class ChildPairs:
    """The SA pairs each child has installed and which one carries its outbound traffic: bookkeeping only, the
    Gateway makes the data path follow.

    A child holds several pairs while it is rekeyed: the old one, whose inbound SA must keep decrypting until
    the peer says it is gone (its ChildDown), the new one, and after a collision (§2.8.1) briefly a redundant
    one. The rules:

    * `add(..., activate=True)`: the new pair carries the traffic now; the active one is retired (never used
      for sending again: its peer may delete it any moment).
    * `add(..., activate=False)`: pending, for a rekey responder (see xdpsec/ike/events.py ChildUp).
    * `remove(pair)` of the active pair hands the traffic to the newest pending pair: the old pair's Delete
      has arrived, so the peer has the new inbound SA (§2.8). A retired pair is never revived.
    """

    def __init__(self) -> None:
        self._pairs: dict[str, list[ChildPair]] = {}

    def add(self, child: str, pair: ChildPair, *, activate: bool) -> None:
        self._pairs.setdefault(child, []).append(pair)
        if activate:
            self._activate(child, pair)

    def _activate(self, child: str, pair: ChildPair) -> None:
        for other in self._pairs[child]:
            if other.state == PairState.ACTIVE:
                other.state = PairState.RETIRED
        pair.state = PairState.ACTIVE

    def remove(self, child: str, pair: ChildPair) -> ChildPair | None:
        """Forget `pair`; the pending pair that takes the child's traffic over, if `pair` carried it."""
        pairs = self._pairs[child]
        pairs.remove(pair)
        successor = None
        if pair.state == PairState.ACTIVE:
            successor = next((p for p in reversed(pairs) if p.state == PairState.PENDING), None)
            if successor is not None:
                self._activate(child, successor)
        if not pairs:
            del self._pairs[child]
        return successor

    def pop(self, child: str) -> list[ChildPair]:
        return self._pairs.pop(child, [])

    def of(self, child: str) -> list[ChildPair]:
        return list(self._pairs.get(child, ()))

    def find(self, child: str, out_spi: int, in_spi: int) -> ChildPair | None:
        return next((p for p in self._pairs.get(child, ()) if (p.out_spi, p.in_spi) == (out_spi, in_spi)), None)

    def active(self, child: str) -> ChildPair | None:
        return next((p for p in self._pairs.get(child, ()) if p.state == PairState.ACTIVE), None)

    def instances(self, base: str) -> list[str]:
        """The children holding pairs that are `base` (`conn/child`) or an instance of it (`conn/child[...]`)."""
        return sorted(name for name in self._pairs if base_child(name) == base)

    def by_in_spi(self, in_spi: int) -> ChildPair | None:
        return next((p for pairs in self._pairs.values() for p in pairs if p.in_spi == in_spi), None)


@dataclass
class WorkerHandle:
    wid: int
    proc: object = None
    conn: object = None
    restarts: int = 0
    started: float = 0.0
    sockets: list = field(default_factory=list)  # (slot, queue) pairs this worker serves


class Gateway:
    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self.instance = cfg.instance
        self.started = time.time()
        self.stopping = threading.Event()
        self.ctx = multiprocess.get_context("fork")
        self.classifier: Classifier | None = None
        self.netlink: Netlink | None = None
        self.control: ControlServer | None = None
        self.ports: dict[int, Port] = {}
        self.ifaces: dict[int, object] = {}  # slot -> netlink Iface
        self.slot_by_ifindex: dict[int, int] = {}
        self.workers: list[WorkerHandle] = []
        self.rings: dict[tuple[int, int], HandoffRing] = {}
        self.sas: dict[int, InstalledSA] = {}
        self.child_ids: dict[str, int] = {}  # child or child instance -> its slot in the classifier's xs_child_out
        # Indexes kept exact with `sas` and `child_ids` (under _sa_lock), so that setting up, rekeying and
        # deleting a child costs the same with 10 children as with 1,000.
        self._free_child_ids: list[int] = []  # heap of freed child slots below _next_child_id
        self._next_child_id = 1  # every slot from here up is free
        self._spis: collections.Counter[int] = collections.Counter()  # SPI -> installed SAs using it
        self._in_spis: collections.Counter[tuple[int, int]] = collections.Counter()  # (SPI, protocol), inbound
        self._held: collections.Counter[int] = collections.Counter()  # worker -> installed SAs it owns
        self.instance_policies: dict[str, list[Policy]] = {}  # instance -> its own SPD entries (under _sa_lock)
        self._policy_ids = itertools.count(INSTANCE_POLICY_IDS)
        self.pairs = ChildPairs()  # under _sa_lock
        self._retiring: list[tuple[float, int]] = []  # (when, SA index): SAs deleted after RETIRE_GRACE
        self._sa_index = itertools.count(1)
        self._sa_lock = threading.RLock()
        self._manual_children = {child for child, _o, _i in cfg.manual_sas()}
        self.policies = cfg.policies()
        self.seqstore: SeqStore | None = None
        self.routes: dict[bytes, Route | None] = {}
        self._route_tries: dict[bytes, float] = {}
        self._route_lock = threading.Lock()  # routes and the "route" messages that announce them, in one order
        self.resolve_q: queue.Queue = queue.Queue(maxsize=RESOLVE_QUEUE)
        self.futures: dict[int, Future] = {}
        self._req = itertools.count(1)
        self._lock = threading.Lock()
        self.attached: list[str] = []
        self.nworkers = 0
        self.wake_fds: list[int] = []
        self.localpath: LocalPath | None = None
        self.ike = None
        self._traps: dict[str, tuple[str, str]] = {}
        self._trapped: dict[str, float] = {}
        self._acquiring = False
        self.local_slot: int | None = None
        self.local_kernel_mac = b""
        self.limit_hits: collections.Counter[str] = collections.Counter()  # configured bounds reached, by name
        self.metrics = None  # xdpsec.metrics handle while the Prometheus endpoint runs
        self.keyexport = None  # xdpsec.keyexport.KeyExport when [debug] key_export is set
        self._snaps: dict[int, dict] = {}  # the workers' latest snapshots, for IKE's byte/packet lifetimes
        self._snaps_at = -USAGE_MAX_AGE
        self._reload_lock = threading.Lock()  # a SIGHUP and a `xdpsec reload` arriving together run one by one
        self.reloads = 0

    # --- start-up --------------------------------------------------------------------------------------------
    def start(self) -> None:
        gw = self.cfg.gateway
        self._clean_stale()
        self._open_keyexport(self.cfg.key_export)
        self.netlink = Netlink()
        for slot, name in enumerate(gw.interfaces):
            iface = self.netlink.iface(name)
            self.ifaces[slot] = iface
            self.slot_by_ifindex[iface.index] = slot
            self.ports[slot] = Port(slot, iface.name, iface.mac, iface.mtu, tuple(iface.addrs))
        queues = min(self.ifaces[s].rx_queues for s in self.ifaces)
        self.nworkers = max(1, min(gw.workers, queues))
        if self.nworkers < gw.workers:
            log.warning("using %d worker(s), not %d: an AF_XDP socket receives from one rx queue and the "
                        "interfaces have %d", self.nworkers, gw.workers, queues)
        self.seqstore = SeqStore(Path(gw.state_dir) / self.instance / "seq.db")
        self._setup_local_path()

        log.info("compiling the XDP classifier")
        self.classifier = Classifier()
        cl = self.classifier
        cl.set_config(default_action=Action(gw.default_action), encap_port=gw.encap_port)
        for slot, iface in self.ifaces.items():
            cl.set_iface(iface.index, slot)
        cl.set_local_addrs(self.cfg.local_addresses())
        lim = self.cfg.limits  # IKE_SA_INIT floods are dropped in XDP (RFC 7296 §2.6, bpf/include/ratelimit.h)
        cl.set_ike_limits(rate=lim.ike_init_rate, burst=lim.ike_init_burst, global_rate=lim.ike_init_global_rate,
                          prefix4=lim.ike_init_prefix4, prefix6=lim.ike_init_prefix6)
        cl.set_ike_exempt(self.cfg.ike_peer_addresses())

        for a in range(self.nworkers):
            for b in range(self.nworkers):
                if a != b:
                    self.rings[(a, b)] = HandoffRing(HANDOFF_SLOTS, 2048)
        # A worker sleeping in poll() is woken by its eventfd when another hands it frames; created here, once,
        # so restarted workers inherit the same ones.
        self.wake_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.nworkers)]
        for wid in range(self.nworkers):
            self.workers.append(WorkerHandle(wid))
            self._spawn(self.workers[-1])

        self._install_manual_sas()
        for pol in self.policies:  # children keyed later (IKE) get their entry now: PROTECT without SA drops
            if pol.child:
                self._child_id(pol.child)
        cl.set_policies(self.policies, self.child_ids)

        threading.Thread(target=self._pump, name="pump", daemon=True).start()
        threading.Thread(target=self._resolver, name="resolver", daemon=True).start()

        for slot in sorted(self.ports):
            name = self.ports[slot].name
            cl.attach(name, mode=gw.xdp_mode.value)
            self.attached.append(name)
        pins = PIN_ROOT / self.instance
        try:
            cl.pin(str(pins))
        except OSError as exc:  # bpffs hidden (e.g. under `ip netns exec`): the gateway still works
            log.warning("not pinning maps under %s: %s", pins, exc)
        ike_conns = self.cfg.ike_connections()
        if ike_conns:  # after XDP is attached: negotiated SAs go into a running data path
            self._start_ike(ike_conns)
        self.control = ControlServer(socket_path(self.instance), self._handlers(),
                                     max_clients=self.cfg.limits.control_clients)
        self.control.start()
        self._start_metrics(self.cfg.metrics_listen)
        log.info("gateway %s up: %d interface(s), %d worker(s), %d SA(s), %d policies", self.instance,
                 len(self.ports), self.nworkers, len(self.sas), len(self.policies))

    def _clean_stale(self) -> None:
        """Undo what a SIGKILLed predecessor of this instance left: XDP programs, pins, workers (xdpsec.io.adopt)."""
        gw = self.cfg.gateway
        for what in adopt.clean_stale(self.instance, Path(gw.state_dir), interfaces=gw.interfaces):
            log.warning("cleaned up after an earlier run of %s: %s", self.instance, what)

    def _open_keyexport(self, directory: Path | None) -> None:
        self.keyexport = None
        if directory is None:
            return
        self.keyexport = KeyExport(Path(directory))
        log.warning("exporting ESP and IKE keys to %s (debugging only: anyone who reads it can decrypt)", directory)

    def _start_metrics(self, listen: tuple[str, int] | None) -> None:
        if listen is not None:
            self.metrics = metrics.start(listen, metrics.GatewaySource(self))

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _start_ike(self, conns: list) -> None:
        from xdpsec.ikeservice import IkeService  # the IKE core is only loaded where IKE is configured
        self.ike = IkeService(conns, install=self.install_child, remove=self.remove_child,
                              spi_in_use=self.spi_in_use, usage=self.usage, limits=self.cfg.limits,
                              on_ike_up=self.keyexport.ike if self.keyexport is not None else None,
                              ts_holders=self.ts_holders)
        self.ike.start()
        self._set_traps(conns)

    def _set_traps(self, conns: list) -> None:
        self._traps = {f"{conn.name}/{child.name}": (conn.name, child.name) for conn in conns
                       for child in conn.children if child.start_action == StartAction.TRAP}
        if self._traps and not self._acquiring:
            self._acquiring = True
            self.classifier.on_acquire(self._acquire)
            threading.Thread(target=self._acquires, name="acquire", daemon=True).start()

    def _setup_local_path(self) -> None:
        """Create the veth pair that carries this host's own protected traffic, if any child needs it."""
        host_addrs = {a for iface in self.ifaces.values() for a in iface.addrs}
        children = [(out_p.local_ts, out_p.remote_ts) for _child, out_p, _in_p in self.cfg.manual_sas()]
        children += [(ch.local_ts, ch.remote_ts) for conn in self.cfg.ike_connections() for ch in conn.children]
        routes = local_routes(children, host_addrs)
        if not routes:
            return
        self.localpath = LocalPath(self.nworkers, max(p.mtu for p in self.ports.values()))
        self.localpath.up(routes)
        slot = len(self.ports)
        iface = self.netlink.iface(DATAPATH_END)
        self.ifaces[slot] = iface
        self.slot_by_ifindex[iface.index] = slot
        self.ports[slot] = Port(slot, iface.name, iface.mac, iface.mtu, tuple(host_addrs))
        self.local_slot = slot
        self.local_kernel_mac = self.netlink.iface(KERNEL_END).mac

    def _spawn(self, handle: WorkerHandle) -> None:
        """Create a worker's UMEM and sockets, publish them in the XSKMAP and fork the worker."""
        wid, n = handle.wid, self.nworkers
        umem = Umem(UMEM_FRAMES)
        sockets: list[tuple[int, XskSocket]] = []
        first = None
        for slot, iface in self.ifaces.items():
            for q in range(iface.rx_queues):
                if q % n != wid:
                    continue
                sock = XskSocket(umem, iface.index, q, ring_size=RING_SIZE, shared_with=first)
                first = first or sock
                sockets.append((slot, sock))
        # The handoff rings are kept as they are across a restart: a slot is published by its index only
        # after it is written, so a producer that died mid-push left nothing visible, and a new consumer
        # resumes at the shared consumer index. (Resetting them would race with the live worker at the other end.)
        spec = WorkerSpec(
            wid=wid, ports=self.ports, umem=umem, sockets=sockets,
            handoff_in=[self.rings[(a, wid)] for a in range(n) if a != wid],
            handoff_out={b: self.rings[(wid, b)] for b in range(n) if b != wid},
            seqstore=self.seqstore, wake_fd=self.wake_fds[wid],
            wake_out={b: self.wake_fds[b] for b in range(n) if b != wid},
            cpu=self.cfg.gateway.worker_cpu(wid, os.cpu_count() or 1), fill_per_socket=min(RING_SIZE, UMEM_FRAMES // (2 * max(1, len(sockets)))))
        parent, child = self.ctx.Pipe()
        level = logging.getLogger("xdpsec.worker").getEffectiveLevel()
        proc = self.ctx.Process(target=worker_main, args=(spec, child, level),
                                name=f"xdpsec-worker{wid}", daemon=True)
        proc.start()
        child.close()
        handle.proc, handle.conn, handle.started = proc, parent, time.time()
        handle.sockets = [(slot, sock.queue) for slot, sock in sockets]
        for slot, sock in sockets:
            self.classifier.set_xsk(slot, sock.queue, sock.fd)
        # The worker holds its own copies now. Ours go, so that the worker's death closes the sockets and the
        # kernel empties their XSKMAP slots instead of letting frames pile up in rings nobody reads.
        for _slot, sock in sockets:
            sock.close()
        umem.close()
        log.info("worker %d started (pid %d) on %s", wid, proc.pid,
                 ", ".join(f"{self.ports[s].name}/q{q}" for s, q in handle.sockets))

    def _install_manual_sas(self) -> None:
        for child, out_p, in_p in self.cfg.manual_sas():
            self.install_child(child, out_p, in_p, wait=False)  # workers take them before XDP is attached

    # --- the data-plane seam: what manual keying and IKE both use ------------------------------------------
    def install_child(self, child: str, out_p: SAParams, in_p: SAParams, *, wait: bool = True,
                      activate_out: bool = True) -> None:
        """Install an SA pair of a child so that no packet is sent in clear or dropped for want of an SA: both
        SAs go to their workers; once the inbound one's worker has confirmed it, the classifier's entry for its
        SPI (the peer may use it as soon as it has its own); once the outbound one's has, with `activate_out`,
        the classifier's child entry that makes XDP steer the child's traffic to it. With `wait` both are in
        their workers when this returns.

        The pairs it replaces stay installed, their inbound SAs decrypting, until `remove_child` names them
        (RFC 7296 §2.8: the old SA is deleted after the new one is up, and the peer sends on it until it has
        switched). Without `activate_out` (a rekey responder) the new outbound SA waits for the active pair's
        `remove_child`. Manual keying has no Delete: a manual child's earlier pairs go at once.

        `child` is a child instance for IKE (see the module docstring): its first pair brings the SPD entries
        its negotiated selectors need, if the configured ones do not cover exactly that."""
        if self._update_child(child, out_p, in_p):
            return
        with self._sa_lock:
            n = self._child_id(child) - 1
            try:
                if len(self.pairs.of(child)) != 1:  # a rekey of a child with one pair has room (REKEY_ROOM)
                    self._check_room(n % self.nworkers, (n + 1) % self.nworkers)
            except LimitReached:
                if not self.pairs.of(child):  # refused before anything was installed: the slot is free again
                    self._drop_instance(child)
                raise
            out_sa = self._new_sa(child, out_p, owner=n % self.nworkers)
            in_sa = self._new_sa(child, in_p, owner=(n + 1) % self.nworkers)  # two directions, two cores
        # Both SAs go to their workers at once (two workers: one round trip of waiting, not two); nothing
        # reaches either before the classifier entry that names it, written only once it is confirmed.
        in_fut, out_fut = self._send_sa(in_sa, wait), self._send_sa(out_sa, wait)
        self._confirmed(in_sa, in_fut)
        self.classifier.set_sa_in(in_p.spi, int(in_p.protocol), in_sa.index, in_sa.owner, in_p.encap is not None)
        self._confirmed(out_sa, out_fut)
        pair = ChildPair(out_sa.index, in_sa.index, out_p.spi, in_p.spi)
        with self._sa_lock:
            self.pairs.add(child, pair, activate=activate_out)
            replaced = [p for p in self.pairs.of(child) if p is not pair] if self.cfg_is_manual(child) else []
            for old in replaced:
                self.pairs.remove(child, old)
        if activate_out:
            self._steer(child, pair)
        if not self.cfg_is_manual(child):  # after the steering: a new policy never points at an empty entry
            self._set_instance_policies(child, out_p)
        for old in replaced:
            self._delete_pair(old)
        self._prime_next_hops(out_p)
        log.info("%s: SAs installed: out 0x%08x (#%d, worker %d%s), in 0x%08x (#%d, worker %d)", child, out_p.spi,
                 out_sa.index, out_sa.owner, "" if activate_out else ", used once the pair it replaces is deleted",
                 in_p.spi, in_sa.index, in_sa.owner)
        self._export_keys("child", out_p, in_p)

    def _child_id(self, child: str) -> int:
        """The classifier's child slot of a child or instance (1.., 0 means none): its own, else the lowest free
        one. Instances come and go with peers; their slots are freed (`_drop_instance`) and reused."""
        with self._sa_lock:
            if child in self.child_ids:
                return self.child_ids[child]
            if self._free_child_ids:
                free = heapq.heappop(self._free_child_ids)
            elif self._next_child_id < XS_MAX_CHILDREN:
                free, self._next_child_id = self._next_child_id, self._next_child_id + 1
            else:
                self.limit_hits["children"] += 1
                raise LimitReached(f"all {XS_MAX_CHILDREN - 1} child entries of the classifier are in use")
            self.child_ids[child] = free
            return free

    def _free_child_id(self, child: str) -> None:
        """Give a child's classifier slot back, its entry cleared, for `_child_id` to hand out again."""
        with self._sa_lock:
            child_id = self.child_ids.pop(child)
            self.classifier.clear_child_sa(child_id)
            heapq.heappush(self._free_child_ids, child_id)

    def _set_instance_policies(self, instance: str, out_p: SAParams) -> None:
        """Give an IKE child instance the SPD entries its negotiated selectors need (see the module docstring),
        if the configured ones do not already say exactly that for its one peer; one SPD flip when they change."""
        base = base_child(instance)
        conn_name, _, child_name = base.partition("/")
        conn = next((c for c in self.cfg.connections if c.name == conn_name), None)
        child = next((ch for ch in conn.children if ch.name == child_name), None) if conn else None
        derived = instance_policies(instance, out_p, child.priority if child is not None else 0)
        configured = [p for p in self.policies if p.child == base]
        own = needs_own_policies(derived, configured, any_peer=conn is None or not conn.remote_addrs)
        with self._sa_lock:
            current = self.instance_policies.get(instance, [])
            if _selectors(current) == _selectors(derived if own else []):
                return
            if own:
                self.instance_policies[instance] = [dataclasses.replace(p, id=next(self._policy_ids))
                                                    for p in derived]
            else:
                self.instance_policies.pop(instance, None)
            self._flip_spd()
        log.info("%s: %d polic%s of its own from the negotiated selectors %s -> %s", instance,
                 len(derived) if own else 0, "y" if own and len(derived) == 1 else "ies",
                 ", ".join(map(str, out_p.local_ts)), ", ".join(map(str, out_p.remote_ts)))

    def _drop_instance(self, instance: str) -> None:
        """An instance's last pair went: remove its own policies (one flip) and free its child entry, unless a
        configured policy names it (a child with a configured peer keeps its slot)."""
        with self._sa_lock:
            if self.instance_policies.pop(instance, None) is not None:
                self._flip_spd()
                log.info("%s: its own policies removed", instance)
            if instance in self.child_ids and not any(p.child == instance for p in self.policies):
                self._free_child_id(instance)

    def _flip_spd(self) -> None:
        """Write the whole SPD (configured and per-instance policies) into the classifier: one atomic bank flip."""
        self.classifier.set_policies(self.spd(), self.child_ids)

    def spd(self) -> list[Policy]:
        """The SPD in force: the configured policies and every instance's own, in the order XDP walks them."""
        with self._sa_lock:
            return merge_policies(self.policies, self.instance_policies)

    def _steer(self, child: str, pair: ChildPair) -> None:
        """Point the classifier's child entry at `pair`'s outbound SA: one map update, so each packet meets
        either the old SA or the new one, both installed in their workers."""
        with self._sa_lock:
            out_sa = self.sas[pair.out]
        self.classifier.set_child_sa(self.child_ids[child], out_sa.index, out_sa.owner)

    def _export_keys(self, what: str, *args) -> None:
        """Hand keys to the Wireshark key export, if on. A debugging aid must never break the data path."""
        if self.keyexport is None:
            return
        try:
            getattr(self.keyexport, what)(*args)
        except Exception as exc:
            log.warning("key export (%s) failed: %s", what, exc)

    def _update_child(self, child: str, out_p: SAParams, in_p: SAParams) -> bool:
        """The same SAs (SPIs and keys) with new outer addresses or ports: the peer moved behind a NAT (RFC 7296
        §2.23). Update them in place, whichever pair of the child they are (its state stays): a second SA with
        the same key would share its sequence numbers with the first, and a nonce must never be used twice."""
        with self._sa_lock:
            pair = self.pairs.find(child, out_p.spi, in_p.spi)
            if pair is None:
                return False
            installed = [self.sas[pair.out], self.sas[pair.inb]]
            same = all(sa.params.enc_key == p.enc_key and sa.params.integ_key == p.integ_key
                       for sa, p in zip(installed, (out_p, in_p), strict=True))
            if not same:
                return False
            old_encap = installed[1].params.encap
            for sa, p in zip(installed, (out_p, in_p), strict=True):
                sa.params = p
        if (old_encap is None) != (in_p.encap is None):  # XDP must know whether it arrives in UDP or bare
            self.classifier.set_sa_in(in_p.spi, int(in_p.protocol), installed[1].index, installed[1].owner,
                                      in_p.encap is not None)
        for sa in installed:
            req, fut = self._future()
            self._send(sa.owner, ("update", sa.index, sa.params, req))
            try:
                fut.result(timeout=QUERY_TIMEOUT)
            except FutureTimeout:
                log.warning("worker %d did not confirm the update of SA %d in time", sa.owner, sa.index)
        log.info("%s: peer moved to %s; SAs 0x%08x/0x%08x follow (encap %s)", child, out_p.remote, out_p.spi,
                 in_p.spi, out_p.encap)
        self._want_route(out_p.remote.packed)
        return True

    def remove_child(self, child: str, out_spi: int | None = None, in_spi: int | None = None) -> None:
        """Tear SAs of a child down: with SPIs exactly that pair (a rekey's old pair, a collision's redundant
        one) whatever else the child has, else all its pairs.

        A pair that carried the child's traffic hands it to the pending pair of a rekey we answered: its Delete
        proves the peer has the new inbound SA (§2.8). With no successor, steering stops first (the child's
        traffic then drops as no_sa, never goes out in clear), then the SAs go. While the child carries on,
        the SAs of the pair go RETIRE_GRACE later: frames XDP already classified for them are still queued."""
        with self._sa_lock:
            if out_spi is None:
                gone, successor = self.pairs.pop(child), None
            else:
                pair = self.pairs.find(child, out_spi, in_spi)
                if pair is None:  # e.g. the redundant pair of a collision we lost: never installed here
                    log.debug("%s: SAs 0x%08x/0x%08x went down; not installed here", child, out_spi, in_spi or 0)
                    return
                gone, successor = [pair], self.pairs.remove(child, pair)
            carries_on = self.pairs.active(child) is not None
        if successor is not None:
            self._steer(child, successor)
            log.info("%s: sending on SA 0x%08x now (the pair it replaces was deleted)", child, successor.out_spi)
        elif not carries_on and child in self.child_ids:
            self.classifier.clear_child_sa(self.child_ids[child])
        if not self.pairs.of(child):  # the instance is gone: so are its own policies and, then, its child entry
            self._drop_instance(child)
        for pair in gone:
            if carries_on:
                self._retire(pair)
            else:
                self._delete_pair(pair)
            log.info("%s: SAs removed: out 0x%08x, in 0x%08x", child, pair.out_spi, pair.in_spi)
            self._export_keys("child_removed", pair.out_spi, pair.in_spi)

    def _delete_pair(self, pair: ChildPair) -> None:
        for index in (pair.out, pair.inb):
            self._delete_sa(index)

    def _retire(self, pair: ChildPair) -> None:
        when = time.monotonic() + RETIRE_GRACE
        with self._sa_lock:
            self._retiring += [(when, pair.out), (when, pair.inb)]

    def _retire_due(self) -> None:
        """Delete the retired SAs whose grace is over (called from the pump)."""
        now = time.monotonic()
        with self._sa_lock:
            due = [index for when, index in self._retiring if when <= now]
            self._retiring = [(when, index) for when, index in self._retiring if when > now]
        for index in due:
            self._delete_sa(index)

    def _check_room(self, *owners: int) -> None:
        """[limits] sas_per_worker: a worker's SAD shard is bounded; a full one refuses the pair, counted.

        REKEY_ROOM: the second pair of a child (its rekey: make-before-break, RFC 7296 §2.8) is not checked, so
        a full worker can still rekey the children it has instead of losing them (the old pair goes with its
        Delete). Bounded all the same: a third pair of a child is checked like a first."""
        limit = self.cfg.limits.sas_per_worker
        for owner in owners:
            if self._held[owner] >= limit:
                self.limit_hits["sas_per_worker"] += 1
                raise LimitReached(f"worker {owner} holds {self._held[owner]} SAs, the most [limits] sas_per_worker "
                                   f"allows ({limit})")

    def _new_sa(self, child: str, params: SAParams, owner: int) -> InstalledSA:
        sa = InstalledSA(next(self._sa_index), child, params, owner, self.seqstore.slot_for(params))
        with self._sa_lock:
            self.sas[sa.index] = sa
            self._count_sa(sa, 1)
        return sa

    def _count_sa(self, sa: InstalledSA, delta: int) -> None:
        """Keep the SPI and per-worker indexes exact as `sa` comes (+1) or goes (-1); under _sa_lock."""
        keys: list[tuple[collections.Counter, object]] = [(self._spis, sa.params.spi), (self._held, sa.owner)]
        if sa.params.direction == Direction.IN:
            keys.append((self._in_spis, (sa.params.spi, int(sa.params.protocol))))
        for counter, key in keys:
            counter[key] += delta
            if not counter[key]:
                del counter[key]

    def _delete_sa(self, index: int) -> None:
        with self._sa_lock:
            sa = self.sas.pop(index, None)
            if sa is None:
                return
            self._count_sa(sa, -1)
        if sa.params.direction == Direction.IN and not self._in_spi_taken(sa.params):
            self.classifier.del_sa_in(sa.params.spi, int(sa.params.protocol))
        self._send(sa.owner, ("del", index, 0))
        if not self.cfg_is_manual(sa.child):
            self.seqstore.release(sa.seq_slot)  # negotiated keys are never used again

    def _in_spi_taken(self, params: SAParams) -> bool:
        """Whether another installed inbound SA has this SPI: a manual child re-keyed on reload under the same
        SPI. Its classifier entry already points at the successor and must stay."""
        with self._sa_lock:
            return (params.spi, int(params.protocol)) in self._in_spis

    def cfg_is_manual(self, child: str) -> bool:
        return child in self._manual_children

    def spi_in_use(self, spi: int) -> bool:
        """Whether an installed SA, of either direction, has this SPI: IKE asks for each inbound SPI it picks."""
        with self._sa_lock:
            return spi in self._spis

    def ts_holders(self, local_ts: tuple, remote_ts: tuple) -> list[str]:
        """The children (instances) with an installed pair whose selectors overlap these: IKE refuses a `%any`
        peer traffic another peer's instance holds (RFC 7296 §2.9, xdpsec/ikeservice.py). One pass over the
        installed pairs' outbound selectors, the negotiated ones the SPD entries come from."""
        with self._sa_lock:
            return [child for child in self.child_ids
                    if any(ike_ts.overlaps(p.local_ts, p.remote_ts, local_ts, remote_ts)
                           for p in (self.sas[pair.out].params for pair in self.pairs.of(child)))]

    def _send_sa(self, sa: InstalledSA, wait: bool) -> Future | None:
        """Hand an SA to its worker; with `wait`, the Future its confirmation completes (see `_confirmed`)."""
        op = "add_out" if sa.params.direction == Direction.OUT else "add_in"
        if not wait:
            self._send(sa.owner, (op, sa.index, sa.params, sa.seq_slot, 0))
            return None
        req, fut = self._future()
        self._send(sa.owner, (op, sa.index, sa.params, sa.seq_slot, req))
        return fut

    def _confirmed(self, sa: InstalledSA, fut: Future | None) -> None:
        """Wait until the worker has `sa` (nothing to wait for without a Future)."""
        if fut is None:
            return
        try:
            fut.result(timeout=QUERY_TIMEOUT)
        except FutureTimeout:
            log.warning("worker %d did not confirm SA %d in time; installing anyway", sa.owner, sa.index)

    def _future(self) -> tuple[int, Future]:
        req = next(self._req)
        fut: Future = Future()
        self.futures[req] = fut
        return req, fut

    def _send(self, wid: int, msg: tuple) -> None:
        handle = self.workers[wid]
        try:
            with self._lock:
                handle.conn.send(msg)
        except (OSError, ValueError):
            pass  # the worker is dead or dying; its restart re-sends what it needs

    # --- the pump: messages from workers, and their deaths ------------------------------------------------
    def _pump(self) -> None:
        from multiprocess.connection import wait
        while not self.stopping.is_set():
            self._retire_due()
            conns = {h.conn: h for h in self.workers}
            sentinels = {h.proc.sentinel: h for h in self.workers}
            for ready in wait(list(conns) + list(sentinels), timeout=0.5):
                if ready in sentinels:
                    if not self.stopping.is_set():
                        self._restart(sentinels[ready])
                    continue
                handle = conns[ready]
                try:
                    msg = ready.recv()
                except (EOFError, OSError):
                    continue  # its sentinel fires next
                if msg[0] == "resolve":
                    for dst in msg[1]:
                        self._want_route(dst)
                elif msg[0] == "reply":
                    fut = self.futures.pop(msg[1], None)
                    if fut is not None:
                        fut.set_result(msg[2])
                else:
                    log.warning("worker %d sent unknown message %r", handle.wid, msg[0])

    def _restart(self, handle: WorkerHandle) -> None:
        code = handle.proc.exitcode
        log.error("worker %d (pid %s) died with exit code %s; restarting it", handle.wid, handle.proc.pid, code)
        if time.time() - handle.started < RESTART_BACKOFF:
            time.sleep(RESTART_BACKOFF)  # a worker that dies at once would otherwise be restarted in a tight loop
        handle.conn.close()
        handle.restarts += 1
        self._spawn(handle)
        for sa in list(self.sas.values()):
            if sa.owner == handle.wid:
                self._send_sa(sa, wait=False)
        for dst, route in list(self.routes.items()):
            self._send(handle.wid, ("route", dst, route))

    # --- next hops -------------------------------------------------------------------------------------------
    def _want_route(self, dst: bytes) -> None:
        now = time.monotonic()
        if now - self._route_tries.get(dst, 0.0) < RESOLVE_RETRY:
            return
        self._route_tries[dst] = now
        try:
            self.resolve_q.put_nowait(dst)
        except queue.Full:
            log.warning("next-hop resolution queue full; dropping a request")

    def _prime_next_hops(self, out_p: SAParams) -> None:
        """Resolve a new child's next hops now rather than when its first packet needs them: a worker holds only
        HOLD_PER_DST packets per unresolved next hop, so a burst (or the first tenth of a second of a stream)
        right after the SA comes up would be dropped as no_neighbor.

        Outbound, the outer destination: the peer (tunnel endpoint, or the host itself in transport mode).
        Inbound, the decrypted packets' destinations, which lie in the child's local selectors: those naming a
        single host (a host-to-host child, transport mode's own address) can be resolved ahead; of a subnet
        nobody knows which host comes first, so its packets wait in the hold queue for their resolution."""
        self._want_route(out_p.remote.packed)
        for ts in out_p.local_ts:
            if ts.net.num_addresses == 1:
                self._want_route(ts.net.network_address.packed)

    def _resolver(self) -> None:
        """RESOLVERS threads take next-hop requests (this one and RESOLVERS - 1 it starts); this one also
        re-resolves the known next hops every ROUTE_REFRESH."""
        for n in range(1, RESOLVERS):
            threading.Thread(target=self._resolve_requests, name=f"resolver-{n}", daemon=True).start()
        self._resolve_requests(refresh=True)

    def _resolve_requests(self, refresh: bool = False) -> None:
        nl = Netlink()  # its own netlink socket: pyroute2 sockets are not shared across threads
        last_refresh = time.monotonic()
        while not self.stopping.is_set():
            try:
                dst = self.resolve_q.get(timeout=1.0)
            except queue.Empty:
                dst = None
            if dst is not None:
                self._resolve(nl, dst, requested=True)
            if refresh and time.monotonic() - last_refresh > ROUTE_REFRESH:
                last_refresh = time.monotonic()
                for known in list(self.routes):
                    self._resolve(nl, known, requested=False)
        nl.close()

    def _resolve(self, nl: Netlink, dst: bytes, *, requested: bool) -> None:
        """Resolve `dst` and tell the workers. A request is always answered, even with a route they were sent
        before: the asking worker holds packets for it (it may have lost the route from its bounded cache)
        and only an answer releases them. A refresh tells them only what changed."""
        addr = ipaddress.ip_address(dst)
        try:
            nh = nl.resolve(addr, timeout=RESOLVE_TIMEOUT, mark=BYPASS_MARK if self.localpath else None)
        except Exception as exc:  # netlink trouble must not kill the resolver
            log.warning("resolving %s failed: %s", addr, exc)
            nh = None
        if nh is None:
            for h in self.workers:
                self._send(h.wid, ("unresolved", dst))
            return
        if nh.local:  # for this host: into the kernel through the local path, if there is one
            slot = self.local_slot
            route = None if slot is None else Route.make(slot, self.ports[slot].mac, self.local_kernel_mac,
                                                         self.ports[slot].mtu, local=True)
        else:
            slot = self.slot_by_ifindex.get(nh.ifindex)
            route = None if slot is None else Route.make(slot, nh.src_mac, nh.dst_mac, nh.mtu)
        if route is None:
            log.warning("%s is reached through %s, which xdpsec does not drive: dropping as no_route",
                        addr, nh.ifname)
        with self._route_lock:  # resolvers answer in the order they store: a worker ends with the latest route
            changed = self.routes.get(dst, ...) != route
            self.routes[dst] = route
            if changed or requested:
                for h in self.workers:
                    self._send(h.wid, ("route", dst, route))

    # --- start_action = trap: XDP asks, IKE negotiates ----------------------------------------------------------
    def _acquires(self) -> None:
        while not self.stopping.is_set():
            try:
                self.classifier.poll_acquires(500)
            except Exception as exc:  # a broken ring buffer must not take the gateway down
                log.warning("acquire events: %s", exc)
                time.sleep(1.0)

    def _acquire(self, ev) -> None:
        """A packet of a child with no SA was dropped in XDP: negotiate the child if it is a trap child.
        XDP already limits this to one event per child per second; initiating again while a negotiation is
        under way is avoided here too."""
        child = next((name for name, cid in self.child_ids.items() if cid == ev.child_id), None)
        trap = self._traps.get(child)
        with self._sa_lock:
            keyed = self.pairs.active(child) is not None
        if trap is None or keyed:
            return
        now = time.monotonic()
        if now - self._trapped.get(child, -TRAP_RETRY) < TRAP_RETRY:
            return
        with self._sa_lock:  # started within TRAP_RETRY and not keyed yet (a failed one counts until then)
            pending = sum(now - t < TRAP_RETRY and self.pairs.active(name) is None
                          for name, t in self._trapped.items())
        if pending >= self.cfg.limits.pending_acquires:  # negotiations started by traffic, still in progress
            self.limit_hits["pending_acquires"] += 1
            log.warning("%s: acquire ignored: %d negotiations started by traffic are pending ([limits] "
                        "pending_acquires)", child, pending)
            return
        self._trapped[child] = now
        log.info("%s: traffic needs an SA (acquire): initiating", child)
        try:
            self.ike.command("initiate", *trap)
        except RuntimeError:  # the IKE thread is behind: the next acquire (XDP sends one a second) retries
            self.limit_hits["ike_commands"] += 1
            del self._trapped[child]

    # --- control socket ----------------------------------------------------------------------------------------
    def _handlers(self) -> dict:
        return {"sas": self._cmd_sas, "policies": self._cmd_policies, "stats": self._cmd_stats,
                "status": self._cmd_status, "ike-sas": self._cmd_ike_sas, "initiate": self._cmd_initiate,
                "terminate": self._cmd_terminate, "rekey": self._cmd_rekey, "reload": self._cmd_reload}

    def _cmd_reload(self, _args: dict) -> dict:
        return self.reload()

    def _cmd_rekey(self, args: dict) -> dict:
        conn = self._need_ike(args)
        child, ike = args.get("child"), bool(args.get("ike"))
        if child is not None and ike:
            raise ControlError("rekey either one child (--child NAME) or the IKE SA (--ike), not both")
        if child is not None and child not in {c.name for c in self.ike.conns[conn].children}:
            raise ControlError(f"connection {conn!r} has no child {child!r}")
        self.ike.command("rekey", conn, child, ike)
        return {"rekeying": conn, "child": child, "ike": ike}

    def _need_ike(self, args: dict) -> str:
        if self.ike is None:
            raise ControlError("no IKE connections are configured on this gateway")
        conn = str(args.get("conn", ""))
        if conn not in self.ike.conns:
            known = ", ".join(sorted(self.ike.conns)) or "none"
            raise ControlError(f"unknown connection {conn!r} (configured: {known})")
        return conn

    def _cmd_ike_sas(self, _args: dict) -> list[dict]:
        return self.ike.ike_sas() if self.ike is not None else []

    def _cmd_initiate(self, args: dict) -> dict:
        conn = self._need_ike(args)
        child = args.get("child")
        if child is not None and child not in {c.name for c in self.ike.conns[conn].children}:
            raise ControlError(f"connection {conn!r} has no child {child!r}")
        self.ike.command("initiate", conn, child)
        return {"initiating": conn, "child": child}

    def _cmd_terminate(self, args: dict) -> dict:
        conn = self._need_ike(args)
        self.ike.command("terminate", conn)
        return {"terminating": conn}

    def _query_workers(self) -> dict[int, dict]:
        futs = {}
        for h in self.workers:
            futs[h.wid] = req, _fut = self._future()
            self._send(h.wid, ("query", req))
        out = {}
        deadline = time.monotonic() + QUERY_TIMEOUT
        for wid, (req, fut) in futs.items():
            try:
                out[wid] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self.futures.pop(req, None)  # a dead or stuck worker: nobody will answer this one
                out[wid] = None
        for wid, snap in out.items():
            if snap is not None:
                self._snaps[wid] = snap
        self._snaps_at = time.monotonic()
        return out

    # --- counters for IKE's byte and packet lifetimes (RFC 7296 §2.8) -------------------------------------------
    def usage(self, in_spi: int) -> tuple[int, int]:
        """(bytes, packets) carried so far by the child SA pair whose inbound SPI is `in_spi`: the larger of its
        two directions, since either may run out first, and the one that must never run out is the outbound
        sequence number (RFC 4303 §3.3.3: no wrap without ESN). Counters are at most about USAGE_MAX_AGE old:
        this runs on the IKE thread, which must not wait for workers, so an old snapshot is answered now and a
        fresh one asked for in the background."""
        if time.monotonic() - self._snaps_at > USAGE_MAX_AGE:
            self._refresh_snapshots()
        with self._sa_lock:
            pair = self.pairs.by_in_spi(in_spi)
            sas = [self.sas[i] for i in (pair.out, pair.inb) if i in self.sas] if pair is not None else []
        used_bytes = used_packets = 0
        for sa in sas:
            entry = ((self._snaps.get(sa.owner) or {}).get("sas") or {}).get(sa.index, {})
            used_bytes = max(used_bytes, entry.get("bytes", 0))
            # "seq" (outbound only) is the last sequence number used: it also counts packets dropped after
            # numbering, and it is what must not wrap.
            used_packets = max(used_packets, entry.get("packets", 0), entry.get("seq", 0))
        return used_bytes, used_packets

    def _refresh_snapshots(self) -> None:
        self._snaps_at = time.monotonic()  # asked: not again until USAGE_MAX_AGE has passed
        for h in self.workers:
            req, fut = self._future()
            fut.add_done_callback(lambda f, wid=h.wid: self._snaps.__setitem__(wid, f.result()))
            self._send(h.wid, ("query", req))

    def _cmd_sas(self, _args: dict) -> list[dict]:
        snaps = self._query_workers()
        rows = []
        with self._sa_lock:
            installed = sorted(self.sas.values(), key=lambda s: s.index)
        for sa in installed:
            p = sa.params
            live = ((snaps.get(sa.owner) or {}).get("sas") or {}).get(sa.index, {})
            row = {"index": sa.index, "name": sa.child, "direction": p.direction.value,  # the instance
                   "protocol": p.protocol.name.lower(), "mode": p.mode.value, "spi": f"0x{p.spi:08x}",
                   "local": str(p.local), "remote": str(p.remote),
                   "encap": f"{p.encap.sport}->{p.encap.dport}" if p.encap else None,
                   "transform": format_transform(p.transform), "worker": sa.owner,
                   "packets": live.get("packets", 0), "bytes": live.get("bytes", 0),
                   "drops": live.get("drops", {})}
            if p.direction == Direction.OUT:
                row["seq"] = live.get("seq", 0)
            else:
                row["replay_window"] = p.replay_window
            rows.append(row)
        return rows

    def _cmd_policies(self, _args: dict) -> list[dict]:
        hits = self.classifier.policy_hits()
        with self._sa_lock:
            policies = self.spd()
            sending = {pol.child: pair.out for pol in policies if (pair := self.pairs.active(pol.child))}
        rows = []
        for pol in policies:
            def ports(r):
                return "any" if r.is_any else (str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}")
            rows.append({"id": pol.id, "name": pol.name, "direction": pol.direction.name.lower(),
                         "action": pol.action.name.lower(), "priority": pol.priority, "src": str(pol.src),
                         "dst": str(pol.dst), "proto": pol.proto or "any", "sports": ports(pol.sports),
                         "dports": ports(pol.dports),
                         "sa": sending.get(pol.child) if pol.direction == PolicyDir.OUT else None,
                         "hits": hits.get(pol.id, 0)})
        return rows

    def _cmd_stats(self, _args: dict) -> dict:
        snaps = self._query_workers()
        workers = []
        for h in self.workers:
            snap = snaps.get(h.wid) or {}
            workers.append({"id": h.wid, "pid": h.proc.pid, "alive": h.proc.is_alive(), "restarts": h.restarts,
                            "rx": snap.get("rx", 0), "tx": snap.get("tx", 0),
                            "handoff_in": snap.get("handoff_in", 0), "handoff_out": snap.get("handoff_out", 0),
                            "drops": snap.get("drops", {}), "sockets": snap.get("sockets", {}),
                            "loop": snap.get("loop", {})})  # worker.LoopStats: rounds, batches, kicks, sleeps
        return {"workers": workers, "xdp": {"stats": self.classifier.stats(), "drops": self.classifier.drops()},
                "ike": self.ike.counters() if self.ike is not None else {}, "limits": {**self.limit_hits,
                           "control_clients": self.control.refused if self.control is not None else 0}}

    def _cmd_status(self, _args: dict) -> dict:
        """One screen: what runs, whether the tunnels are up, and what is being dropped."""
        snaps = self._query_workers()
        drops: dict[str, int] = dict(self.classifier.drops())
        for snap in snaps.values():
            for reason, n in ((snap or {}).get("drops") or {}).items():
                drops[reason] = drops.get(reason, 0) + n
        top = sorted(((n, r) for r, n in drops.items() if n), key=lambda t: (-t[0], t[1]))[:TOP_DROPS]
        return {"instance": self.instance, "config": str(self.cfg.path),
                "uptime": round(time.time() - self.started, 1), "reloads": self.reloads,
                "interfaces": [{"name": p.name, "xdp_mode": self.cfg.gateway.xdp_mode.value,
                                "queues": self.ifaces[s].rx_queues} for s, p in self.ports.items()],
                "workers": [{"id": h.wid, "pid": h.proc.pid, "alive": h.proc.is_alive(), "restarts": h.restarts}
                            for h in self.workers],
                "connections": self._connections_status(), "sas": len(self.sas), "policies": len(self.spd()),
                "top_drops": [{"reason": r, "count": n} for n, r in top]}

    def _connections_status(self) -> list[dict]:
        """Each configured connection: keying, peer, up or down, and each child with its installed SPIs."""
        ike_sas: dict[str, list[dict]] = {}
        for info in self.ike.ike_sas() if self.ike is not None else []:
            ike_sas.setdefault(info["conn"], []).append(info)
        rows = []
        for conn in self.cfg.connections:
            children = [row for child in conn.children for row in self._child_status(conn.name, child)]
            keyed = [c for c in children if c["state"] in ("installed", "down")]
            if conn.ike is not None:
                states = {info["state"] for info in ike_sas.get(conn.name, ())}
                state = ("up" if "established" in states else "connecting" if states - {"deleting"}
                         else "down")
            else:
                state = "up" if keyed and all(c["state"] == "installed" for c in keyed) else (
                    "down" if keyed else "shunt")
            rows.append({"name": conn.name, "keying": "ike" if conn.ike is not None else "manual",
                         "local": [str(a) for a in conn.local_addrs], "remote": [str(a) for a in conn.remote_addrs],
                         "state": state, "children": children})
        return rows

    def _child_status(self, conn: str, child) -> list[dict]:
        """One row per installed instance of the child (`net`, or `net[192.0.2.11]` per peer of a `%any`
        connection), or one "down" row when it has none."""
        if child.mode in (configmod.ChildMode.PASS, configmod.ChildMode.DROP):
            return [{"name": child.name, "state": child.mode.value}]
        base = f"{conn}/{child.name}"
        rows = []
        with self._sa_lock:
            for instance in self.pairs.instances(base):
                if (active := self.pairs.active(instance)) is None:
                    continue
                out_p, in_p = self.sas[active.out].params, self.sas[active.inb].params
                rows.append({"name": child.name + instance[len(base):], "state": "installed",
                             "mode": out_p.mode.value, "peer": str(out_p.remote),
                             "out_spi": f"0x{out_p.spi:08x}", "in_spi": f"0x{in_p.spi:08x}"})
        return rows or [{"name": child.name, "state": "down"}]

    # --- reload ----------------------------------------------------------------------------------------------
    def reload(self) -> dict:
        """Re-read the configuration file and apply what changed (see the module docstring and xdpsec/reload.py).

        Returns what was done; a file with errors changes nothing and is answered with {"applied": False,
        "errors": [...]} (the CLI exits 2)."""
        with self._reload_lock:
            path = self.cfg.path
            try:
                new = configmod.load(path)
            except configmod.ConfigError as exc:
                config_log.error("reload of %s refused, still running the previous configuration: %s", path,
                                 "; ".join(map(str, exc.problems)))
                return {"applied": False, "file": str(path), "errors": [str(p) for p in exc.problems],
                        "warnings": [str(w) for w in exc.warnings]}
            plan = reloadmod.plan(self.cfg, new)
            restart = [*plan.restart, *self._local_path_change(plan.effective)]
            for message in restart:
                config_log.warning("reload: %s", message)
            ike = self._apply(plan)
            self.reloads += 1
            result = {"applied": True, "file": str(path), **plan.as_dict(), "ike": ike, "restart_needed": restart,
                      "warnings": [str(w) for w in new.warnings]}
            config_log.info("reloaded %s: manual children %s; IKE connections %s; policies %s", path,
                            _summary(plan.manual.as_dict()), _summary(ike),
                            "replaced" if plan.policies_changed else "unchanged")
            return result

    def _apply(self, plan: reloadmod.Plan) -> dict:
        """Carry a reload plan out, in the order that keeps every packet protected or deliberately handled."""
        new = plan.effective
        self._apply_live(plan.live, new)
        manual = {name: (out_p, in_p) for name, out_p, in_p in new.manual_sas()}
        self._manual_children |= set(manual)  # never release a manual key's sequence numbers (nonce reuse)
        for name in plan.manual.added + plan.manual.changed:  # make: the SAs exist before a policy points at them
            self.install_child(name, *manual[name])
        policies = new.policies()
        with self._sa_lock:
            for pol in policies:
                if pol.child:
                    self._child_id(pol.child)
            if plan.policies_changed:  # one atomic bank flip; the instances' own policies stay
                self.classifier.set_policies(merge_policies(policies, self.instance_policies), self.child_ids)
            self.policies = policies
        self.cfg = new
        for name in plan.manual.removed:  # break: no policy steers traffic to them any more
            self.remove_child(name)
        return self._reconfigure_ike(new.ike_connections(), plan.ike)

    def _apply_live(self, live: tuple[str, ...], new: configmod.Config) -> None:
        gw = new.gateway
        if {"default_action", "encap_port"} & set(live):
            self.classifier.set_config(default_action=Action(gw.default_action), encap_port=gw.encap_port)
        if "local_addrs" in live:
            self.classifier.set_local_addrs(new.local_addresses())
        if "log" in live:
            logs.setup(new.log)
        try:  # a port in use or a directory we cannot write: the rest of the reload still applies
            if "metrics_listen" in live:
                self._stop_metrics()
                self._start_metrics(new.metrics_listen)
            if "key_export" in live:
                self._open_keyexport(new.key_export)
        except Exception as exc:
            config_log.error("reload: %s", exc)
        if self.ike is not None:
            self.ike.on_ike_up = self.keyexport.ike if self.keyexport is not None else None

    def _local_path_change(self, new: configmod.Config) -> list[str]:
        """The local path's routes are set up at start; a reload that would need others says so."""
        def routes(cfg: configmod.Config) -> list:
            host = {a for iface in self.ifaces.values() for a in iface.addrs}
            children = [(o.local_ts, o.remote_ts) for _c, o, _i in cfg.manual_sas()]
            children += [(ch.local_ts, ch.remote_ts) for conn in cfg.ike_connections() for ch in conn.children]
            return local_routes(children, host)
        if routes(self.cfg) == routes(new):
            return []
        return ["the routes of this host's own protected traffic (local path) changed: needs a restart; "
                "until then traffic from the gateway host itself follows the old routes"]

    def _reconfigure_ike(self, conns: list, diff: reloadmod.Diff) -> dict:
        # Peers of added connections get their own IKE_SA_INIT bucket in XDP, removed ones lose it.
        self.classifier.set_ike_exempt({a for conn in conns for a in conn.remote_addrs})
        if self.ike is None:
            if conns:
                self._start_ike(conns)
            return diff.as_dict()
        result = self.ike.reconfigure(conns)
        self._set_traps(conns)
        return result

    # --- shutdown --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        self._stop_metrics()
        if self.ike is not None:
            self.ike.stop()
        cl = self.classifier
        if cl is not None:
            for name in self.attached:  # first: no frame is steered to a socket that is going away
                try:
                    cl.detach(name)
                except Exception as exc:
                    log.warning("detaching XDP from %s: %s", name, exc)
            self.attached.clear()
        for h in self.workers:
            self._send(h.wid, ("stop",))
        deadline = time.monotonic() + 3.0
        for h in self.workers:
            h.proc.join(max(0.0, deadline - time.monotonic()))
            if h.proc.is_alive():
                h.proc.kill()
                h.proc.join(1.0)
        if self.control is not None:
            self.control.stop()
        if cl is not None:
            cl.close()
        if self.localpath is not None:
            self.localpath.down()
        if self.netlink is not None:
            self.netlink.close()
        if self.seqstore is not None:
            self.seqstore.close()
        for fd in self.wake_fds:
            os.close(fd)
        self.wake_fds = []
        log.info("gateway %s stopped", self.instance)


def _summary(diff: dict) -> str:
    """``added a, b; removed c`` (empty groups left out), or ``unchanged``."""
    parts = [f"{what} {', '.join(diff[what])}" for what in ("added", "removed", "changed") if diff.get(what)]
    return "; ".join(parts) or "unchanged"


def _setup_logging(args, cfg: configmod.Config | None) -> None:
    """Before the configuration is read: plain lines at --log-level (or info). After: the configuration's
    [log] table, --log-level, when given, overriding its default level. (xdpsec.logs replaces its handler.)"""
    level = getattr(args, "log_level", None)
    log_cfg = cfg.log if cfg is not None else configmod.LogConfig()
    logs.setup(dataclasses.replace(log_cfg, level=level) if level else log_cfg)


class _Signals:
    """SIGTERM/SIGINT (stop) and SIGHUP (reload) as bytes on a pipe the main thread reads, so the work happens
    in the main loop, never in a handler (a handler that reloaded could interrupt a reload holding a lock).

    The signal numbers are written by the interpreter's C-level handler (signal.set_wakeup_fd): a signal may
    be delivered to any thread, and then only this pipe wakes the main thread from its read."""

    STOP = frozenset({signal.SIGTERM, signal.SIGINT})
    RELOAD = signal.SIGHUP

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self.r, True)
        for sig in (*self.STOP, self.RELOAD):
            signal.signal(sig, lambda *_: None)  # the work is done by the reader of the pipe
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)  # full: requests nobody has read yet

    def wait(self) -> set[int]:
        """Block until signals arrive; their numbers."""
        return set(os.read(self.r, 64))

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (*self.STOP, self.RELOAD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.r)
        os.close(self.w)


def _drop_capabilities() -> None:
    """Keep only caps.COORDINATOR for the rest of the coordinator's life, before any thread exists.

    Capabilities belong to threads in Linux: capset(2) changes the calling thread only, and a new thread starts
    with its creator's sets. So the drop happens here, once, in the main thread before Gateway.start creates the
    pump, resolver, IKE, control, metrics and acquire threads (and before it forks workers, which drop the rest
    themselves): every thread of the coordinator then holds at most COORDINATOR. Setting up needs nothing
    beyond that set (config/xdpsec.service bounds the service to the same set and says why each is needed);
    started as root from a shell this is what makes the shell's other capabilities go.
    """
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:  # they would keep what this thread drops
        raise RuntimeError(f"threads already running: {', '.join(others)}")
    held = caps.drop_to(caps.COORDINATOR)
    log.debug("coordinator: capabilities dropped to CapEff %#x", held)


def run_main(args) -> int:
    """`xdpsec run -c FILE`: the gateway in the current network namespace, in the foreground, until SIGTERM or
    SIGINT; SIGHUP reloads the configuration file."""
    _setup_logging(args, None)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    _setup_logging(args, cfg)
    try:
        _drop_capabilities()
    except (OSError, RuntimeError) as exc:
        print(f"xdpsec: cannot drop capabilities before starting {cfg.instance!r}: {exc}", file=sys.stderr)
        return 1
    gw = Gateway(cfg)
    signals = _Signals()
    try:
        gw.start()
    except Exception as exc:
        # Everything set up so far is undone by stop(); the user gets one line, the details go to the debug log.
        log.debug("start-up failed", exc_info=True)
        print(f"xdpsec: {cfg.path}: cannot start gateway {cfg.instance!r}: {exc}", file=sys.stderr)
        gw.stop()
        signals.close()
        return 1
    try:
        while not signals.STOP & (what := signals.wait()):
            if signals.RELOAD in what:
                config_log.info("SIGHUP: reloading %s", cfg.path)
                try:
                    gw.reload()
                except Exception:  # a bug in applying a reload must not stop a gateway that carries traffic
                    config_log.exception("reload of %s failed part-way; check `xdpsec status`", cfg.path)
    finally:
        gw.stop()
        signals.close()
    return 0
