"""Give up every capability a running gateway process does not need (least privilege, issue 7).

The gateway starts as root because setting up needs nearly everything: compiling and loading BPF, attaching
XDP, creating AF_XDP sockets, pinning maps, binding UDP 500/4500, netlink. Once set up, each process keeps
only what it still uses, so a bug exploited through packet parsing (the code that faces the network) cannot
load kernel modules, trace other processes, read any file or reconfigure the host:

* a worker only moves frames through sockets and rings it already holds: it needs no capability (`WORKER`);
* the coordinator still restarts workers (new AF_XDP sockets: CAP_NET_RAW; UMEM pinned against
  RLIMIT_MEMLOCK: CAP_IPC_LOCK), updates BPF maps and detaches XDP (CAP_BPF, CAP_PERFMON for bcc's
  program and map operations, CAP_NET_ADMIN), installs routes for the local path (CAP_NET_ADMIN), binds IKE
  ports below 1024 for connections added by a reload (CAP_NET_BIND_SERVICE) and signals its workers (same
  uid: no capability) (`COORDINATOR`). CAP_SYS_ADMIN is not among them: loading, attaching and AF_XDP were
  measured to work without it on 6.x (config/xdpsec.service keeps it out of the bounding set too).

How: the capset(2) system call through ctypes (no libcap binding is installed), setting the permitted and
effective sets to `needed` and the inheritable set to nothing, after dropping every other capability from the
bounding set with prctl(PR_CAPBSET_DROP) so that not even an execve of a set-uid program gives them back
(`execve` as uid 0 would otherwise grant the whole bounding set again). PR_SET_NO_NEW_PRIVS makes that final.
Dropping is one-way: call it after setup, in the process that is done with it.
"""

from __future__ import annotations

import ctypes
import enum
import os
from pathlib import Path


class Cap(enum.IntEnum):
    """The capabilities of linux/capability.h this module names (numbers are the kernel's ABI)."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    DAC_READ_SEARCH = 2
    FOWNER = 3
    KILL = 5
    SETGID = 6
    SETUID = 7
    SETPCAP = 8
    NET_BIND_SERVICE = 10
    NET_BROADCAST = 11
    NET_ADMIN = 12
    NET_RAW = 13
    IPC_LOCK = 14
    SYS_MODULE = 16
    SYS_RAWIO = 17
    SYS_PTRACE = 19
    SYS_ADMIN = 21
    SYS_RESOURCE = 24
    PERFMON = 38
    BPF = 39
    CHECKPOINT_RESTORE = 40


WORKER: frozenset[str] = frozenset()
COORDINATOR = frozenset({"net_admin", "net_raw", "ipc_lock", "bpf", "perfmon", "net_bind_service"})

_SYS_CAPSET = 126  # x86_64
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def mask(names: set[str] | frozenset[str]) -> int:
    """The bit mask of capability names ("net_admin" or "CAP_NET_ADMIN"); ValueError for an unknown name."""
    bits = 0
    for name in names:
        key = name.upper().removeprefix("CAP_")
        try:
            bits |= 1 << Cap[key]
        except KeyError:
            raise ValueError(f"unknown capability {name!r}") from None
    return bits


def effective(pid: int | str = "self") -> int:
    """CapEff of a process, as /proc/<pid>/status shows it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise RuntimeError(f"/proc/{pid}/status has no CapEff line")


def effective_by_thread(pid: int | str = "self") -> dict[int, int]:
    """CapEff of every thread of a process (capabilities are per thread; /proc/<pid>/status shows the main one)."""
    held = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            held[int(task.name)] = effective(f"{pid}/task/{task.name}")
        except (FileNotFoundError, ProcessLookupError):  # the thread ended while we looked
            continue
    return held


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def drop_to(needed: set[str] | frozenset[str]) -> int:
    """Keep only `needed` (names as in `Cap`, any case, with or without CAP_) in this process, for good.

    Returns the new effective mask. Capabilities not currently held are not gained: the result is the
    intersection. Raises OSError if the kernel refuses (then nothing of the permitted set was changed)."""
    keep = mask(needed)
    held = effective()
    # Emptying the bounding set needs CAP_SETPCAP; a process that no longer holds it (forked from one that
    # already dropped) has a bounding set that is already narrow, and capset below still lowers its own sets.
    can_bound = bool(held >> Cap.SETPCAP & 1)
    for cap in range(_last_cap() + 1):
        if can_bound and not keep >> cap & 1:
            # Needs CAP_SETPCAP, so the bounding set goes before the permitted set loses it. EINVAL: the
            # capability is unknown to this kernel, nothing to drop.
            if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
                _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
    bits = keep & held
    data = (_Data * 2)(_Data(bits & 0xFFFFFFFF, bits & 0xFFFFFFFF, 0), _Data(bits >> 32, bits >> 32, 0))
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return effective()
