"""The bcc loader of the XDP classifier (xdpsec/bpf/xdpsec.c): compile, attach, typed map setters, pins, test runs.

This is the only module that imports bcc. The coordinator drives the classifier through `Classifier`: it
registers interfaces and their slots, writes the SPD (two banks, flipped atomically; a generation retires the
flow cache in front of the walk), the child -> outbound SA table, the inbound SAs by (SPI, protocol), the
gateway's own addresses and the AF_XDP sockets, and reads the per-CPU counters back. Every map value is a ctypes mirror from `xdpsec.abi`, so a layout change in
xdpsec/bpf/include/xdpsec_abi.h shows up in tests/bpf/test_abi.py rather than as garbage in a map.

bcc rewrites map method calls (`xs_stats.lookup(&k)`) only in the file it compiles, not in included headers,
so the loader splices the local headers (`#include "parse.h"`) into the source, with `#line` markers so that
compiler and verifier messages still name the right file and line.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import bcc

from xdpsec import abi, spd
from xdpsec.abi import Action, PolicyDir, Stat, XsAcquire, drop_name

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"  # package data: an installed xdpsec compiles it too
SOURCE = BPF_DIR / "xdpsec.c"
INCLUDE = BPF_DIR / "include"
PROG_NAME = b"xdpsec_classify"
SPD_PROG_NAME = b"xdpsec_spd"

XDP_FLAGS = {"native": 1 << 2, "generic": 1 << 1}  # XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE (linux/if_link.h)
SA_PROTOS = frozenset({50, 51})  # ESP, AH

_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"$', re.M)
# BPF_HASH(xs_name, ...) and BPF_TABLE("lru_hash", key, leaf, xs_name, ...) (bcc has no macro for every type)
_MAP_DECL = re.compile(r'^BPF_\w+\((?:"\w+",[^,]+,[^,]+,\s*)?(xs_\w+),', re.M)
NS_PER_S = 1_000_000_000


class XdpAction(enum.IntEnum):
    """The verdict of an XDP program (enum xdp_action, include/uapi/linux/bpf.h)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


@dataclass(frozen=True)
class TestResult:
    """One BPF_PROG_TEST_RUN: the verdict, the frame after the program, and the meta it wrote (if any)."""

    verdict: XdpAction
    data_out: bytes
    meta: abi.XsMeta | None


def splice_source(path: Path = SOURCE, include: Path = INCLUDE) -> str:
    """The program text with each local header of `include` pasted where it is included (once each)."""
    seen: set[str] = set()

    def expand(file: Path) -> str:
        out: list[str] = []
        lines = file.read_text().splitlines()
        for lineno, line in enumerate(lines, 1):
            m = _LOCAL_INCLUDE.match(line)
            if m is None or not (include / m.group(1)).exists():
                out.append(line)
                continue
            if m.group(1) not in seen:
                seen.add(m.group(1))
                out.append(f'#line 1 "{m.group(1)}"')
                out.append(expand(include / m.group(1)))
            out.append(f'#line {lineno + 1} "{file.name}"')
        return "\n".join(out)

    return expand(path)


def _words(addr: bytes) -> ctypes.Array:
    """16 bytes (an IPv4 address padded with zeros) as the four network-order words the maps hold."""
    return (ctypes.c_uint32 * 4).from_buffer_copy(addr.ljust(16, b"\0"))


def addr_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> abi.XsAddrKey:
    return abi.XsAddrKey(addr=_words(addr.packed), family=addr.version)


def ike_limits_entry(rate: int, burst: int, global_rate: int, global_burst: int, prefix4: int,
                     prefix6: int) -> abi.XsIkeLimits:
    """The row of xs_ike_limits: buckets of `rate` requests/s holding `burst` as GCRA intervals (ratelimit.h)."""
    if min(rate, burst, global_rate, global_burst) < 1 or max(rate, global_rate) > NS_PER_S:
        raise ValueError("IKE_SA_INIT rates must be 1..1e9 per second and bursts at least 1")
    interval, global_interval = NS_PER_S // rate, NS_PER_S // global_rate
    return abi.XsIkeLimits(
        interval_ns=interval, burst_ns=burst * interval,
        global_interval_ns=global_interval, global_burst_ns=global_burst * global_interval,
        mask4=_words(ipaddress.IPv4Network(f"0.0.0.0/{prefix4}").netmask.packed),
        mask6=_words(ipaddress.IPv6Network(f"::/{prefix6}").netmask.packed),
    )


def policy_entry(policy: spd.Policy, child_id: int) -> abi.XsPolicy:
    """The map row of one policy. Both networks must be of one IP version."""
    if policy.src.version != policy.dst.version:
        raise ValueError(f"policy {policy.name}: source and destination are of different IP versions")
    return abi.XsPolicy(
        src=_words(policy.src.network_address.packed),
        src_mask=_words(policy.src.netmask.packed),
        dst=_words(policy.dst.network_address.packed),
        dst_mask=_words(policy.dst.netmask.packed),
        sport_lo=policy.sports.lo,
        sport_hi=policy.sports.hi,
        dport_lo=policy.dports.lo,
        dport_hi=policy.dports.hi,
        child_id=child_id,
        policy_id=policy.id,
        family=policy.src.version,
        direction=int(policy.direction),
        action=int(policy.action),
        proto=policy.proto,
    )


class _BpfAttrTestRun(ctypes.Structure):
    """The BPF_PROG_TEST_RUN member of union bpf_attr (include/uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _BpfAttrObj(ctypes.Structure):
    """The BPF_OBJ_PIN member of union bpf_attr."""

    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _XdpMd(ctypes.Structure):
    """struct xdp_md, the context of an XDP program, as BPF_PROG_TEST_RUN takes and returns it."""

    _fields_ = [(name, ctypes.c_uint32) for name in
                ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


_SYS_BPF = 321  # x86_64
_BPF_OBJ_PIN = 6
_BPF_PROG_TEST_RUN = 10
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return ret


class Classifier:
    """One loaded instance of the classifier and its maps."""

    def __init__(self, *, cflags: Sequence[str] = ()) -> None:
        self._source = splice_source()
        self._bpf = bcc.BPF(text=self._source.encode(), cflags=[f"-I{INCLUDE}", *cflags])
        self._fn = self._bpf.load_func(PROG_NAME, bcc.BPF.XDP)
        # the SPD half, reached by a tail call (see the top of xdpsec/bpf/xdpsec.c)
        self._spd_fn = self._bpf.load_func(SPD_PROG_NAME, bcc.BPF.XDP)
        self["xs_progs"][ctypes.c_int(abi.XS_PROG_SPD)] = ctypes.c_int(self._spd_fn.fd)
        self._attached: dict[str, int] = {}
        self._pinned: list[Path] = []
        self._pin_dir: Path | None = None
        self._hit_ids: set[int] = set()  # policy ids with an entry in xs_policy_hits
        self.set_config()

    def __getitem__(self, name: str):
        """A bcc table by map name (xs_...), for tests and diagnostics."""
        return self._bpf[name.encode()]

    # -- attach -------------------------------------------------------------------------------------------

    def attach(self, ifname: str, *, mode: str = "native") -> None:
        if mode not in XDP_FLAGS:
            raise ValueError(f"XDP mode {mode!r}: native or generic")
        flags = XDP_FLAGS[mode]
        self._bpf.attach_xdp(ifname.encode(), self._fn, flags)
        self._attached[ifname] = flags

    def detach(self, ifname: str) -> None:
        flags = self._attached.pop(ifname)
        bcc.BPF.remove_xdp(ifname.encode(), flags)

    def detach_all(self) -> None:
        for ifname in list(self._attached):
            self.detach(ifname)

    # -- maps ---------------------------------------------------------------------------------------------

    def set_iface(self, ifindex: int, slot: int) -> None:
        if not 0 <= slot < abi.XS_MAX_IFACES:
            raise ValueError(f"interface slot {slot} out of range 0..{abi.XS_MAX_IFACES - 1}")
        self["xs_ifaces"][ctypes.c_uint32(ifindex)] = abi.XsIface(slot=slot)

    def del_iface(self, ifindex: int) -> None:
        del self["xs_ifaces"][ctypes.c_uint32(ifindex)]

    def _config(self) -> abi.XsConfigVal:
        return abi.XsConfigVal.from_buffer_copy(self["xs_config"][ctypes.c_uint32(0)])

    def _write_config(self, cfg: abi.XsConfigVal) -> None:
        self["xs_config"][ctypes.c_uint32(0)] = cfg

    def set_config(self, *, default_action: Action = Action.BYPASS, encap_port: int = 4500) -> None:
        """What happens to traffic no policy matches, and the UDP port of RFC 3948 encapsulation."""
        if default_action not in (Action.BYPASS, Action.DISCARD):
            raise ValueError("the default action is BYPASS or DISCARD")
        cfg = self._config()
        cfg.default_action = default_action
        cfg.encap_port = encap_port
        self._write_config(cfg)

    def set_policies(self, policies: Sequence[spd.Policy], child_ids: Mapping[str, int]) -> None:
        """Replace the whole SPD at once.

        Rows go into the inactive bank in priority order (a stable sort: ties keep their given order, as in
        xdpsec/spd.py); then that bank's count is stored and last the active bank flips, so a packet sees the
        old set or the new one, never a mix (see struct xs_config_val); then the SPD generation moves on, so
        no flow keeps a decision of the old set (the flow cache, spd.h). `child_ids` maps a PROTECT OUT
        policy's child name to its slot in xs_child_out.
        """
        ordered = sorted(policies, key=lambda p: p.priority)
        if len(ordered) > abi.XS_MAX_POLICIES:
            raise ValueError(f"{len(ordered)} policies, at most {abi.XS_MAX_POLICIES} fit")
        rows = []
        for p in ordered:
            child_id = 0
            if p.action == Action.PROTECT and p.direction == PolicyDir.OUT:
                if p.child not in child_ids:
                    raise ValueError(f"policy {p.name}: no child id for child {p.child!r}")
                child_id = child_ids[p.child]
                if not 0 <= child_id < abi.XS_MAX_CHILDREN:
                    raise ValueError(f"policy {p.name}: child id {child_id} outside 0..{abi.XS_MAX_CHILDREN - 1}")
            rows.append(policy_entry(p, child_id))

        hits = self["xs_policy_hits"]
        new_ids = {p.id for p in ordered}
        for policy_id in new_ids - self._hit_ids:
            hits[ctypes.c_uint32(policy_id)] = hits.Leaf()  # zero on every CPU
        cfg = self._config()
        bank = 1 - cfg.active_bank
        table = self["xs_policies"]
        for i, row in enumerate(rows):
            table[ctypes.c_uint32(bank * abi.XS_MAX_POLICIES + i)] = row
        cfg.count[bank] = len(rows)
        self._write_config(cfg)
        cfg.active_bank = bank
        self._write_config(cfg)
        self.invalidate_spd_cache()
        # counters of policies that are gone go with them (a packet racing the flip may still count one)
        for policy_id in self._hit_ids - new_ids:
            del hits[ctypes.c_uint32(policy_id)]
        self._hit_ids = new_ids

    def invalidate_spd_cache(self) -> None:
        """Make every flow cached so far walk the SPD again: its entry's generation is no longer current.

        A map update of its own, after the bank flip: the program reads the generation before the bank, so a
        walk that read the new generation walks the new bank (spd.h). Child SAs are not cached and need none.
        """
        cfg = self._config()
        cfg.spd_generation = (cfg.spd_generation + 1) & 0xFFFF_FFFF
        self._write_config(cfg)

    def set_child_sa(self, child_id: int, sa_index: int, owner: int) -> None:
        self["xs_child_out"][ctypes.c_uint32(child_id)] = abi.XsChild(sa_index=sa_index, owner=owner, valid=1)

    def clear_child_sa(self, child_id: int) -> None:
        self["xs_child_out"][ctypes.c_uint32(child_id)] = abi.XsChild()

    def set_sa_in(self, spi: int, proto: int, sa_index: int, owner: int, encap: bool) -> None:
        if proto not in SA_PROTOS:
            raise ValueError(f"inbound SA protocol {proto} is neither ESP (50) nor AH (51)")
        self["xs_sa_in"][abi.XsSaInKey(spi=spi, proto=proto)] = abi.XsSaInVal(
            sa_index=sa_index, owner=owner, encap=int(encap))

    def del_sa_in(self, spi: int, proto: int) -> None:
        del self["xs_sa_in"][abi.XsSaInKey(spi=spi, proto=proto)]

    def set_local_addrs(self, addrs: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        """Replace the set of the gateway's own addresses (ESP/AH to them with an unknown SPI is dropped)."""
        table = self["xs_local_addrs"]
        wanted = {bytes(addr_key(a)): addr_key(a) for a in addrs}
        for key in list(table.keys()):
            if bytes(key) not in wanted:
                del table[key]
        for key in wanted.values():
            table[key] = ctypes.c_uint32(1)

    def set_ike_limits(self, *, rate: int, burst: int, global_rate: int, global_burst: int | None = None,
                       prefix4: int = 24, prefix6: int = 64) -> None:
        """Limit IKE_SA_INIT requests to `rate`/s per source prefix (/prefix4, /prefix6) with bursts of `burst`,
        and to `global_rate`/s in all (bursts of `global_burst`, default one second's worth). See ratelimit.h."""
        row = ike_limits_entry(rate, burst, global_rate, global_burst or global_rate, prefix4, prefix6)
        self["xs_ike_limits"][ctypes.c_uint32(0)] = row

    def clear_ike_limits(self) -> None:
        """No IKE_SA_INIT limit (the state after loading)."""
        self["xs_ike_limits"][ctypes.c_uint32(0)] = abi.XsIkeLimits()
        self["xs_ike_prefixes"].clear()
        self["xs_ike_global"][ctypes.c_uint32(0)] = ctypes.c_uint64(0)

    def set_ike_exempt(self, addrs: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        """Replace the configured IKE peers that get a bucket of their own (by exact address) instead of their
        prefix's and the global one; a peer that stays keeps its bucket."""
        table = self["xs_ike_exempt"]
        wanted = {bytes(addr_key(a)): addr_key(a) for a in addrs}
        if len(wanted) > abi.XS_MAX_IKE_EXEMPT:
            raise ValueError(f"{len(wanted)} IKE peers exempt from the prefix limit, at most {abi.XS_MAX_IKE_EXEMPT}")
        kept = set()
        for key in list(table.keys()):
            if bytes(key) in wanted:
                kept.add(bytes(key))
            else:
                del table[key]
        for raw, key in wanted.items():
            if raw not in kept:
                table[key] = ctypes.c_uint64(0)

    def _xsk_key(self, ifslot: int, queue: int) -> ctypes.c_uint32:
        if not (0 <= ifslot < abi.XS_MAX_IFACES and 0 <= queue < abi.XS_MAX_QUEUES):
            raise ValueError(f"(slot {ifslot}, queue {queue}) outside the XSKMAP")
        return ctypes.c_uint32(ifslot * abi.XS_MAX_QUEUES + queue)

    def set_xsk(self, ifslot: int, queue: int, fd: int) -> None:
        self["xs_xsks"][self._xsk_key(ifslot, queue)] = ctypes.c_int(fd)

    def del_xsk(self, ifslot: int, queue: int) -> None:
        del self["xs_xsks"][self._xsk_key(ifslot, queue)]

    # -- counters -----------------------------------------------------------------------------------------

    def _sums(self, name: str) -> list[int]:
        table = self[name]
        return [table.sum(ctypes.c_uint32(i)).value for i in range(len(table))]

    def drops(self) -> dict[str, int]:
        """Drops by reason name, summed over CPUs (reasons never counted are left out)."""
        return {drop_name(i): n for i, n in enumerate(self._sums("xs_drops")) if n}

    def stats(self) -> dict[str, int]:
        return {Stat(i).name.lower(): n for i, n in enumerate(self._sums("xs_stats"))}

    def policy_hits(self) -> dict[int, int]:
        """Packets decided by each installed policy, by policy id, summed over CPUs."""
        hits = self["xs_policy_hits"]
        return {policy_id: hits.sum(ctypes.c_uint32(policy_id)).value for policy_id in sorted(self._hit_ids)}

    # -- acquires (start_action = trap) ----------------------------------------------------------------

    def on_acquire(self, callback: Callable[[XsAcquire], None]) -> None:
        """Call `callback` with each acquire event (see poll_acquires): a packet that matched a PROTECT policy
        whose child has no SA. Events are rate-limited per child in XDP."""
        def handle(_ctx, data, size):
            if size >= ctypes.sizeof(XsAcquire):
                callback(XsAcquire.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(XsAcquire))))
            return 0
        self._acquire_cb = handle  # bcc keeps only a weak hold on the callback
        self["xs_acquire"].open_ring_buffer(handle)

    def poll_acquires(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` for acquire events and deliver them to the on_acquire callback."""
        self._bpf.ring_buffer_poll(timeout_ms)

    # -- pins ---------------------------------------------------------------------------------------------

    def pin(self, directory: str) -> None:
        """Pin every xs_ map under `directory` (on a bpffs, e.g. /sys/fs/bpf/xdpsec/<instance>)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._pin_dir = path
        for name in self.map_names():
            target = path / name
            name_buf = ctypes.create_string_buffer(os.fsencode(target))
            attr = _BpfAttrObj(pathname=ctypes.addressof(name_buf), bpf_fd=self[name].map_fd)
            _bpf(_BPF_OBJ_PIN, attr)
            self._pinned.append(target)

    def unpin(self) -> None:
        while self._pinned:
            self._pinned.pop().unlink(missing_ok=True)
        if self._pin_dir is not None:
            try:
                self._pin_dir.rmdir()
            except OSError:
                pass  # not empty: someone else's pins live there too
            self._pin_dir = None

    def map_names(self) -> list[str]:
        """Every map the program declares (bcc opens its tables lazily: `tables` holds only those used)."""
        return sorted(set(_MAP_DECL.findall(self._source)))

    def close(self) -> None:
        self.detach_all()
        self.unpin()
        self._bpf.cleanup()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- BPF_PROG_TEST_RUN --------------------------------------------------------------------------------

    def test_run(self, frame: bytes, *, ifindex: int = 0, rx_queue: int = 0) -> TestResult:
        """Run the program once on `frame` as if received on (ifindex, rx_queue), without a device.

        ifindex 0 means the loopback device of the caller's namespace (ifindex 1), which is what the kernel
        uses when no context is given. The kernel requires the interface to exist in the caller's network
        namespace and rx_queue to be one of its queues. The output starts at the meta area: the context
        returned says how long it is (ctx.data is data - data_meta).
        """
        ctx_in = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex or 1, rx_queue_index=rx_queue)
        ctx_out = _XdpMd()
        data_in = ctypes.create_string_buffer(frame, len(frame))
        data_out = ctypes.create_string_buffer(len(frame) + 256)
        attr = _BpfAttrTestRun(
            prog_fd=self._fn.fd, data_in=ctypes.addressof(data_in), data_size_in=len(frame),
            data_out=ctypes.addressof(data_out), data_size_out=len(data_out), repeat=1,
            ctx_in=ctypes.addressof(ctx_in), ctx_size_in=ctypes.sizeof(ctx_in),
            ctx_out=ctypes.addressof(ctx_out), ctx_size_out=ctypes.sizeof(ctx_out),
        )
        _bpf(_BPF_PROG_TEST_RUN, attr)
        out = data_out.raw[:attr.data_size_out]
        metalen = ctx_out.data
        meta = abi.XsMeta.from_buffer_copy(out[:metalen]) if metalen == ctypes.sizeof(abi.XsMeta) else None
        return TestResult(XdpAction(attr.retval), out[metalen:], meta)
