"""Clean up after a coordinator that died without stopping (SIGKILL, OOM, power loss of the process).

A coordinator stopped with SIGTERM detaches XDP, stops its workers and removes its pins (coordinator.py
`stop`). Killed outright it leaves, in the kernel, whatever does not die with its file descriptors:

* the XDP classifier stays attached to the interfaces (netlink attachments are not tied to an fd) and keeps
  classifying: PROTECT traffic whose worker is gone is dropped as `no_socket` (fail closed, never sent in
  clear), but the gateway is down until someone detaches it;
* the maps pinned under /sys/fs/bpf/xdpsec/<instance> (pins hold a reference of their own);
* workers that have not yet noticed their command pipe closed (they stop on EOF, worker.py `_commands`, but a
  wedged one would not).

`clean_stale` undoes all three before a gateway of the same instance starts again. It recognises what is its
instance's without a pid file: the workers are the processes that map the instance's sequence-number file
(`<state_dir>/<instance>/seq.db`, which only a gateway of that instance maps), and the interfaces are the
ifindexes in the stale pinned `xs_ifaces` map (or those the caller names), where only a program named like ours
is detached. The local-path veth and the stale control socket are already handled where they are created
(localpath.py `up`, control.py `_refuse_live_or_foreign`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("xdpsec.bpf")

PIN_ROOT = Path("/sys/fs/bpf/xdpsec")
#: Names the kernel shows for our XDP programs (bcc truncates to BPF_OBJ_NAME_LEN - 1 = 15 characters).
OUR_PROGRAMS = ("xdpsec_classify", "xdpsec_classif", "xdpsec_spd")
SEQ_FILE = "seq.db"
KILL_WAIT = 2.0  # seconds a leftover worker has between SIGTERM and SIGKILL

_SYS_BPF = 321  # x86_64
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_OBJ_GET = 7
_libc = ctypes.CDLL(None, use_errno=True)


class _ObjAttr(ctypes.Structure):
    """union bpf_attr for BPF_OBJ_GET."""

    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _MapElemAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_*_ELEM / GET_NEXT_KEY."""

    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("next_key", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def clean_stale(instance: str, state_dir: Path, *, interfaces: Iterable[str] = ()) -> list[str]:
    """Kill leftover workers, detach our XDP programs and remove the pins of a dead gateway `instance`.

    Returns one line per thing done (empty when nothing was left). Must run before the new gateway opens its
    sequence-number file, or it would count itself as a leftover (its own pid is skipped regardless)."""
    done = _kill_workers(Path(state_dir) / instance / SEQ_FILE)
    pins = PIN_ROOT / instance
    names = set(interfaces) | _pinned_interfaces(pins)
    done += [f"detached XDP program {prog} from {name}" for name in sorted(names) if (prog := _detach(name))]
    return done + _remove_pins(pins)


# --- workers ----------------------------------------------------------------------------------------------------

def _mappers(path: Path) -> list[int]:
    """Pids of the processes (other than us) that have `path` memory-mapped."""
    target = str(path.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            maps = (entry / "maps").read_text()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if any(line.endswith(" " + target) or line.endswith(" " + target + " (deleted)")
               for line in maps.splitlines()):
            pids.append(int(entry.name))
    return pids


def _kill_workers(seq_file: Path) -> list[str]:
    if not seq_file.exists():
        return []
    pids = _mappers(seq_file)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_WAIT
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return [f"stopped leftover process {pid}" for pid in pids]


# --- XDP --------------------------------------------------------------------------------------------------------

def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _pinned_interfaces(pins: Path) -> set[str]:
    """Names of the interfaces in the stale pinned xs_ifaces map (key: __u32 ifindex) that still exist here."""
    path = pins / "xs_ifaces"
    if not path.exists():
        return set()
    name = ctypes.create_string_buffer(os.fsencode(path))
    try:
        fd = _bpf(_BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(name)))
    except OSError as exc:
        log.warning("cannot open the pinned map %s: %s", path, exc)
        return set()
    names = set()
    try:
        key, next_key = ctypes.c_uint32(), ctypes.c_uint32()
        attr = _MapElemAttr(map_fd=fd, key=0, next_key=ctypes.addressof(next_key))  # key 0: from the start
        while True:
            try:
                _bpf(_BPF_MAP_GET_NEXT_KEY, attr)
            except OSError:  # ENOENT: no more keys
                break
            key.value = next_key.value
            attr.key = ctypes.addressof(key)
            with contextlib.suppress(OSError):
                names.add(socket.if_indextoname(key.value))
    finally:
        os.close(fd)
    return names


def attached_program(ifname: str) -> tuple[str, str] | None:
    """(program name, mode) of the XDP program attached to `ifname` here, or None."""
    out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname], capture_output=True, text=True)
    if out.returncode:
        return None
    xdp = json.loads(out.stdout)[0].get("xdp")
    if not xdp or "prog" not in xdp:
        return None
    return xdp["prog"].get("name", ""), str(xdp.get("mode", ""))


def _detach(ifname: str) -> str | None:
    """Detach the XDP program of `ifname` if it is ours; its name, or None if nothing of ours was there."""
    prog = attached_program(ifname)
    if prog is None or prog[0] not in OUR_PROGRAMS:
        return None
    for kind in ("xdp", "xdpgeneric", "xdpdrv"):  # whichever mode it was attached in
        subprocess.run(["ip", "link", "set", "dev", ifname, kind, "off"], capture_output=True)
    return prog[0]


# --- pins -------------------------------------------------------------------------------------------------------

def _remove_pins(pins: Path) -> list[str]:
    if not pins.is_dir():
        return []
    removed = []
    for pin in sorted(pins.iterdir()):
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
            removed.append(pin.name)
    with contextlib.suppress(OSError):
        pins.rmdir()
    return [f"removed {len(removed)} pin(s) under {pins}"] if removed else []
