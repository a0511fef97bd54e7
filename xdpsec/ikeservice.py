"""The thin I/O shell around the sans-IO IKEv2 core: UDP sockets, the clock, and the data path.

One thread owns the `IkeManager`. Time is wall-clock (`time.time()`): the core checks certificate validity
against it, and its timers are relative anyway. It waits on the IKE sockets (UDP 500 and 4500 on each local address, IPv4
and IPv6), a wake-up pipe for commands, and the manager's next timer; it feeds datagrams in with the time,
sends what the manager hands back, and turns its events into data-path changes:

    ChildUp   -> Gateway.install_child(instance, outbound SAParams, inbound SAParams, activate_out=...)
    ChildDown -> Gateway.remove_child(instance, out_spi, in_spi)   (only those SAs: a rekey's successor stays)
    IkeUp     -> on_ike_up(event), when set (the key export)

The data path keys a child by its *instance* (`instance_name`): `conn/child` when the connection names its peer,
`conn/child[peer address]` (with `:port` when UDP-encapsulated from a port other than 4500, i.e. behind a NAT)
when it accepts any peer, so each peer of a `%any` responder has its own SA pairs and policies. A pair keeps the
instance it was installed under (a NAT update reports the same SPIs from a new address); a new pair of a peer
that already has one (a rekey, a re-authentication) joins that instance, so the rekey rules below hold per peer.
Two peers must not hold the same traffic (the first instance's policies would take the second's packets): the
core asks `_ts_in_use` before a new child of a `%any` connection, and refuses it with TS_UNACCEPTABLE (RFC
7296 §2.9) when another peer's instance, installed (Gateway.ts_holders) or agreed on this turn, overlaps it.

A child rekey (RFC 7296 §2.8) is make-before-break through these two calls alone: the pair it replaces stays
installed, its inbound SA decrypting, until its ChildDown; a rekey responder's ChildUp(activate_out=False)
keeps sending on the old pair until then (xdpsec/ike/events.py says why).

Events are acted on before the datagrams of the same turn are sent: a new child pair is in the data path
before our CREATE_CHILD_SA response (the peer may use it at once) or our Delete of the pair it replaces goes
out. Byte and packet lifetimes read the data path's counters through `usage(inbound SPI) -> (bytes, packets)`.

Port 4500 carries IKE behind a 4-byte non-ESP marker (RFC 3948 §2.2): stripped on receipt, added on sending.
ESP-in-UDP never reaches these sockets: the XDP classifier steers it to the workers, and drops NAT keepalives.
The sockets carry BYPASS_MARK so that IKE to a peer whose address the local path routes (transport mode)
leaves through the uplink in clear, as IKE must.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable

from xdpsec.ike import ts
from xdpsec.ike.conf import IkeConnConfig, StartAction
from xdpsec.ike.events import ChildDown, ChildUp, Failure, IkeDown, IkeUp
from xdpsec.ike.manager import COOKIE_THRESHOLD, IkeManager
from xdpsec.ike.sa import NAT_KEEPALIVE
from xdpsec.io.localpath import BYPASS_MARK
from xdpsec.sa import IPAddress, LimitReached, SAParams

log = logging.getLogger("xdpsec.ike")

NON_ESP_MARKER = b"\0\0\0\0"
NATT_PORT = 4500
MAX_DATAGRAM = 65535
COMMANDS_MAX = 1024  # operator commands waiting for the IKE thread (one per connection for a full rekey)
#: Receive buffer of each IKE socket. The default (~200 KB) overflows within milliseconds of an IKE_SA_INIT
#: flood that got past XDP's rate limit, and the IKE SAs we already have share the socket: their requests
#: must not be the ones the kernel throws away. SO_RCVBUFFORCE (CAP_NET_ADMIN) goes beyond net.core.rmem_max.
RCVBUF = 4 << 20
#: Python's socket module names SO_RCVBUFFORCE only from 3.12 on; 33 is its number (asm-generic/socket.h).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: A failed send is counted each time but logged at most once per this many seconds: spoofed sources make
#: sends fail (EAGAIN, unreachable) at a rate an attacker chooses.
SEND_FAIL_LOG_INTERVAL = 10.0


def instance_name(conn: IkeConnConfig | None, conn_name: str, child: str, out: SAParams) -> str:
    """The data path's name of one child of one peer (see the module docstring)."""
    return peer_instance(conn, conn_name, child, out.remote, out.encap.dport if out.encap is not None else None)


def peer_instance(conn: IkeConnConfig | None, conn_name: str, child: str, remote: IPAddress,
                  encap_port: int | None) -> str:
    """`instance_name` from the peer's address and the port its ESP-in-UDP comes from (None: plain ESP)."""
    base = f"{conn_name}/{child}"
    if conn is not None and conn.remote_addrs:
        return base
    port = f":{encap_port}" if encap_port is not None and encap_port != NATT_PORT else ""
    return f"{base}[{remote}]{port}"


class IkeService:
    def __init__(self, conns: list[IkeConnConfig], *, install: Callable, remove: Callable,
                 spi_in_use: Callable[[int], bool], on_ike_up: Callable[[IkeUp], None] | None = None,
                 usage: Callable[[int], tuple[int, int]] | None = None, limits=None,
                 ts_holders: Callable[[tuple, tuple], list[str]] | None = None) -> None:
        """`limits` is the configuration's [limits] (xdpsec.config.Limits); None keeps the core's defaults.
        `ts_holders(local_ts, remote_ts)` names the data path's instances holding traffic these selectors
        overlap (Gateway.ts_holders); with it a `%any` responder refuses a peer another peer's selectors."""
        self.conns = {c.name: c for c in conns}
        self.install = install
        self.remove = remove
        self.on_ike_up = on_ike_up
        self.usage = usage
        self.ts_holders = ts_holders
        bounds = {}
        if limits is not None:
            half_open = limits.half_open_ike_sas
            bounds = {"max_half_open": half_open, "max_per_peer": limits.ike_sas_per_peer,
                      # cookies start well before the table is full: a flood then costs no state (§2.6)
                      "cookie_threshold": min(COOKIE_THRESHOLD, max(1, half_open // 2))}
        self.manager = IkeManager(conns, spi_in_use=spi_in_use, usage=self._usage,
                                  ts_in_use=self._ts_in_use if ts_holders is not None else None, **bounds)
        self._send_fail_logged = float("-inf")
        self.sel = selectors.DefaultSelector()
        self.socks: dict[tuple[IPAddress, int], socket.socket] = {}
        self.commands: queue.Queue = queue.Queue(maxsize=COMMANDS_MAX)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # the manager is touched by this thread, and by queries under this lock
        self.errors = 0
        self._instances: dict[int, str] = {}  # inbound SPI of each installed pair -> its instance (IKE thread only)
        self._peers: dict[str, str] = {}  # instance -> the name its peer's current address would give
        #: Children the core agreed to on this turn, not in the data path until its events are applied:
        #: (instance, local_ts, remote_ts) (IKE thread only).
        self._agreed: list[tuple[str, tuple, tuple]] = []

    # --- sockets ---------------------------------------------------------------------------------------------
    def open_sockets(self) -> None:
        for conn in self.conns.values():
            for addr in conn.local_addrs:
                for port in (conn.local_port, NATT_PORT):
                    if (addr, port) not in self.socks:
                        self._bind(addr, port)

    def _bind(self, addr: IPAddress, port: int) -> None:
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, BYPASS_MARK)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((str(addr), port))
        sock.setblocking(False)
        self.socks[(addr, port)] = sock
        self.sel.register(sock, selectors.EVENT_READ, (addr, port))
        log.info("IKE listening on %s port %d", addr, port)

    # --- the thread ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.open_sockets()
        # start_action = start: initiated by the IKE thread itself before anything else, not through the
        # bounded operator queue (a gateway with more such children than COMMANDS_MAX must still start).
        now = time.time()
        with self.lock:
            for conn in self.conns.values():
                for child in conn.children:
                    if child.start_action == StartAction.START:
                        self.manager.initiate(conn.name, child.name, now)
        self.thread = threading.Thread(target=self._run, name="ike", daemon=True)
        self.thread.start()
        self._wake()  # send those requests now, not at the first retransmission timer

    def stop(self) -> None:
        self.stopping.set()
        self._wake()
        if self.thread is not None:
            self.thread.join(5)
        for sock in self.socks.values():
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _usage(self, spi: int) -> tuple[int, int] | None:
        return self.usage(spi) if self.usage is not None else None

    def reconfigure(self, conns: list[IkeConnConfig]) -> dict[str, list[str]]:
        """Adopt a reloaded set of connections (IkeManager.reconfigure); sockets for new local addresses."""
        with self.lock:
            diff = self.manager.reconfigure(conns, time.time())
            self.conns = {c.name: c for c in conns}
            self.open_sockets()
        self._wake()
        log.info("IKE connections reconfigured: %s", {k: v for k, v in diff.items() if v})
        return diff

    def command(self, op: str, *args) -> None:
        """Queue an operator command for the IKE thread: ("initiate", conn, child), ("terminate", conn),
        ("rekey", conn, child or None, ike: bool)."""
        try:
            self.commands.put_nowait((op, *args))
        except queue.Full:
            raise RuntimeError(f"the IKE thread has {COMMANDS_MAX} commands waiting; try again shortly") from None
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                timer = self.manager.get_timer()
            now = time.time()
            timeout = None if timer is None else max(0.0, timer - now)
            for key, _ev in self.sel.select(timeout if timeout is not None else 1.0):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._receive(key.fileobj, key.data)
            try:
                with self.lock:
                    self._commands()
                    now = time.time()
                    timer = self.manager.get_timer()
                    if timer is not None and timer <= now:
                        self.manager.handle_timer(now)
                    out = self.manager.datagrams_to_send()
                    events = []
                    while (ev := self.manager.next_event()) is not None:
                        events.append(ev)
                self._apply(events)  # data-path changes outside the lock: they wait for workers
                self._flush(out)  # only now: the SAs these messages announce are installed
            except Exception:  # a bug in the core must not take IKE down for every other peer
                self.errors += 1
                log.exception("IKE: unexpected error (counted); continuing")

    def _receive(self, sock: socket.socket, local: tuple[IPAddress, int]) -> None:
        for _ in range(64):  # bounded per wake-up: one busy socket cannot starve the timers
            try:
                data, peer = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("IKE socket %s:%d: %s", local[0], local[1], exc)
                return
            if local[1] == NATT_PORT:
                if data[:4] != NON_ESP_MARKER:
                    continue  # a keepalive or stray ESP: not IKE (XDP normally keeps these away)
                data = data[4:]
            remote = (ipaddress.ip_address(peer[0].split("%")[0]), peer[1])
            try:
                with self.lock:
                    self.manager.receive_datagram(data, local, remote, time.time())
            except Exception:
                self.errors += 1
                log.exception("IKE: unexpected error on a datagram from %s (counted)", remote[0])

    def _flush(self, out: list) -> None:
        for data, local, remote in out:
            sock = self.socks.get((local[0], local[1]))
            if sock is None:
                log.warning("IKE: no socket for %s:%d; datagram to %s dropped", local[0], local[1], remote[0])
                continue
            if local[1] == NATT_PORT and data != NAT_KEEPALIVE:  # a keepalive is the one octet 0xFF, bare
                data = NON_ESP_MARKER + data
            try:
                sock.sendto(data, (str(remote[0]), remote[1]))
            except OSError as exc:
                self.manager.stats["send_failed"] += 1
                now = time.monotonic()
                if now - self._send_fail_logged >= SEND_FAIL_LOG_INTERVAL:
                    self._send_fail_logged = now
                    log.warning("IKE: sending to %s:%d failed: %s (counted as send_failed; logged at most every "
                                "%.0f s)", remote[0], remote[1], exc, SEND_FAIL_LOG_INTERVAL)

    def _commands(self) -> None:
        while True:
            try:
                op, *args = self.commands.get_nowait()
            except queue.Empty:
                return
            now = time.time()
            if op == "initiate":
                self.manager.initiate(args[0], args[1], now)
            elif op == "terminate":
                self.manager.terminate(args[0], now)
            elif op == "rekey":
                self.manager.rekey(*args, now)

    def _apply(self, events: list) -> None:
        """Act on one turn's events: afterwards the data path holds every child the core agreed to."""
        for ev in events:
            self._event(ev)
        self._agreed.clear()

    def _event(self, ev) -> None:
        if isinstance(ev, ChildUp):
            log.info("%s/%s: child SA up: in %#010x out %#010x, %s", ev.conn, ev.child, ev.inb.spi, ev.out.spi,
                     ev.out.mode.value)
            instance = self._instance(ev)
            try:
                self.install(instance, ev.out, ev.inb, activate_out=ev.activate_out)
                self._instances[ev.inb.spi] = instance
                self._peers[instance] = instance_name(self.conns.get(ev.conn), ev.conn, ev.child, ev.out)
            except LimitReached as exc:  # the data path is full: the IKE side must not believe the child is up
                self._refuse(ev, instance, exc)
        elif isinstance(ev, ChildDown):
            log.info("%s/%s: child SA down: in %#010x out %#010x", ev.conn, ev.child, ev.in_spi, ev.out_spi)
            instance = self._instances.pop(ev.in_spi, f"{ev.conn}/{ev.child}")
            if instance not in self._instances.values():
                self._peers.pop(instance, None)
            self.remove(instance, ev.out_spi, ev.in_spi)
        elif isinstance(ev, IkeUp):
            log.info("%s: IKE SA up with %s[%d]: %016x_i %016x_r", ev.conn, ev.peer[0], ev.peer[1], ev.ispi, ev.rspi)
            if self.on_ike_up is not None:
                self.on_ike_up(ev)
        elif isinstance(ev, IkeDown):
            log.info("%s: IKE SA down: %s", ev.conn, ev.reason)
        elif isinstance(ev, Failure):
            log.warning("%s: %s", ev.conn, ev.reason)

    def _refuse(self, ev: ChildUp, instance: str, exc: LimitReached) -> None:
        """The data path refused a negotiated pair: delete exactly that pair towards its peer (RFC 7296 §1.4.1)."""
        self.manager.stats["sa_limit"] += 1
        log.warning("%s: child SA not installed (in %#010x, out %#010x): %s; deleting it", instance, ev.inb.spi,
                    ev.out.spi, exc)
        with self.lock:
            queued = self.manager.terminate_child_spi(ev.inb.spi, time.time())
        if not queued:
            log.warning("%s: no established IKE SA holds child SA %#010x any more; nothing to delete", instance,
                        ev.inb.spi)
        self._wake()  # the Delete goes out on this turn, not at the next timer

    def _instance(self, ev: ChildUp) -> str:
        """The instance a reported pair belongs to: the one it was installed under (the same SPIs again: the
        peer moved, RFC 7296 §2.23), else the instance its peer already has (a rekey), else a new one."""
        if (known := self._instances.get(ev.inb.spi)) is not None:
            return known
        return self._peer_now(instance_name(self.conns.get(ev.conn), ev.conn, ev.child, ev.out))

    def _peer_now(self, name: str) -> str:
        """The instance of the peer whose current address gives `name`: one it has already, else `name`."""
        return next((inst for inst, now in self._peers.items() if now == name), name)

    def _ts_in_use(self, conn: str, child: str, peer: tuple, local_ts: tuple, remote_ts: tuple) -> bool:
        """The core's hook (IkeManager ts_in_use, under the lock): does another peer's instance of a `%any`
        connection's child hold traffic these selectors overlap? Asked of the data path (`ts_holders`) and of
        the children agreed on this turn but not installed yet; an instance whose pairs the core has all
        reported down (an INITIAL_CONTACT replaced them, say) is on its way out and holds nothing."""
        cfg = self.conns.get(conn)
        if cfg is None or cfg.remote_addrs:
            return False  # one configured peer: every child of it is one instance
        mine = self._peer_now(peer_instance(cfg, conn, child, *peer))
        holder = next((inst for inst, lts, rts in self._agreed
                       if inst != mine and ts.overlaps(lts, rts, local_ts, remote_ts)), None)
        if holder is None:
            holder = next((inst for inst in self.ts_holders(local_ts, remote_ts)
                           if inst != mine and self._live(inst)), None)
        if holder is None:
            self._agreed.append((mine, local_ts, remote_ts))
            return False
        log.warning("%s: refused (TS_UNACCEPTABLE): its selectors %s -> %s overlap those %s holds (counted as "
                    "ts_in_use)", mine, ", ".join(map(str, local_ts)), ", ".join(map(str, remote_ts)), holder)
        return True

    def _live(self, instance: str) -> bool:
        """Whether the core still holds a pair of this installed instance (one it did not install: yes)."""
        spis = [spi for spi, inst in self._instances.items() if inst == instance]
        return not spis or any(self.manager.holds_child(spi) for spi in spis)

    def ike_sas(self) -> list[dict]:
        with self.lock:
            return self.manager.ike_sas()

    def counters(self) -> dict[str, int]:
        """The core's event counters (malformed, unknown_spi, cookie_sent, ...) and the shell's."""
        with self.lock:
            out = dict(self.manager.stats)
        out["service_error"] = self.errors
        return out
