"""The Python side of the ABI shared with the XDP programs (xdpsec/bpf/include/xdpsec_abi.h).

Every enum in the header is read from the header itself when this module is imported, so a drop reason or a
counter is defined exactly once, in C, and both sides always agree on its number. Struct mirrors (ctypes)
live next to them; tests/bpf/test_abi.py checks them against the layouts bcc builds from the same header.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "bpf" / "include" / "xdpsec_abi.h"
_ENUM_RE = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_MEMBER_RE = re.compile(r"^[ \t]*(\w+)[ \t]*=[ \t]*(\d+)[ \t]*,?[ \t]*(?:/\*[ \t]*(.*?)[ \t]*\*/)?", re.M)


def _read_enums(text: str) -> dict[str, list[tuple[str, int, str]]]:
    enums: dict[str, list[tuple[str, int, str]]] = {}
    for name, body in _ENUM_RE.findall(text):
        enums[name] = [(m, int(v), (doc or "").strip()) for m, v, doc in _MEMBER_RE.findall(body)]
    return enums


def _int_enum(cname: str, pyname: str, prefix: str) -> type[enum.IntEnum]:
    members = _ENUMS[cname]
    cls = enum.IntEnum(pyname, [(m.removeprefix(prefix), v) for m, v, _ in members if "__" not in m])
    cls.describe = {v: doc for _m, v, doc in members}  # type: ignore[attr-defined]
    return cls


_ENUMS = _read_enums(HEADER.read_text())

#: Why a packet was dropped; `DropReason.REPLAY.name.lower()` is the name shown to users.
DropReason = _int_enum("xs_drop", "DropReason", "XS_DROP_")
#: Per-CPU classifier counters.
Stat = _int_enum("xs_stat", "Stat", "XS_STAT_")
#: The classifier's verdict kind, carried to workers in the frame metadata.
Kind = _int_enum("xs_kind", "Kind", "XS_KIND_")
#: SPD actions.
Action = _int_enum("xs_action", "Action", "XS_ACT_")
#: SPD policy directions.
PolicyDir = _int_enum("xs_dir", "PolicyDir", "XS_DIR_")


def drop_name(reason: int) -> str:
    """User-facing name of a drop reason (``auth_failed``), or ``drop_<n>`` for a code this build doesn't know."""
    try:
        return DropReason(reason).name.lower()
    except ValueError:
        return f"drop_{reason}"


class Drop(Exception):
    """A packet is dropped for a named reason. The only exception network input may raise on the data path."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason):
        super().__init__(drop_name(reason))
        self.reason = reason


# --- Struct mirrors -------------------------------------------------------------------------------------
# ctypes twins of the structs of xdpsec_abi.h, field for field (explicit padding included), named after the
# C struct. Addresses are __be32[4] in C: network-order bytes, so fill them from bytes, not from integers.

import ctypes  # noqa: E402  (the struct section is appended to the enum section above)

_DEFINE_RE = re.compile(r"^#define\s+(XS_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", re.M)
_DEFINES = {name: int(value, 0) for name, value in _DEFINE_RE.findall(HEADER.read_text())}

XS_MAX_POLICIES = _DEFINES["XS_MAX_POLICIES"]
XS_MAX_CHILDREN = _DEFINES["XS_MAX_CHILDREN"]
XS_MAX_SAS = _DEFINES["XS_MAX_SAS"]
XS_MAX_IFACES = _DEFINES["XS_MAX_IFACES"]
XS_MAX_QUEUES = _DEFINES["XS_MAX_QUEUES"]
XS_MAX_LOCAL_ADDRS = _DEFINES["XS_MAX_LOCAL_ADDRS"]
XS_MAX_IKE_PREFIXES = _DEFINES["XS_MAX_IKE_PREFIXES"]
XS_MAX_IKE_EXEMPT = _DEFINES["XS_MAX_IKE_EXEMPT"]
XS_SPD_CACHE_SIZE = _DEFINES["XS_SPD_CACHE_SIZE"]
XS_META_MAGIC = _DEFINES["XS_META_MAGIC"]
XS_PROG_SPD = _DEFINES["XS_PROG_SPD"]

_u8, _u16, _u32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32
_Addr = _u32 * 4


class XsMeta(ctypes.Structure):
    """struct xs_meta: the classifier's verdict, just before the frame in the UMEM."""

    _fields_ = [("magic", _u32), ("sa_index", _u32), ("policy_id", _u32), ("owner", _u16), ("ifslot", _u16),
                ("l3_off", _u16), ("l4_off", _u16), ("kind", _u8), ("ip_version", _u8), ("pad", _u8 * 2)]


class XsIface(ctypes.Structure):
    """struct xs_iface: value of xs_ifaces (key: ifindex)."""

    _fields_ = [("slot", _u32)]


class XsConfigVal(ctypes.Structure):
    """struct xs_config_val: xs_config[0]."""

    _fields_ = [("active_bank", _u32), ("count", _u32 * 2), ("encap_port", _u16), ("default_action", _u8),
                ("pad", _u8), ("spd_generation", _u32)]


class XsPolicy(ctypes.Structure):
    """struct xs_policy: xs_policies[bank * XS_MAX_POLICIES + i]."""

    _fields_ = [("src", _Addr), ("src_mask", _Addr), ("dst", _Addr), ("dst_mask", _Addr),
                ("sport_lo", _u16), ("sport_hi", _u16), ("dport_lo", _u16), ("dport_hi", _u16),
                ("child_id", _u32), ("policy_id", _u32),
                ("family", _u8), ("direction", _u8), ("action", _u8), ("proto", _u8)]


class XsSpdHit(ctypes.Structure):
    """struct xs_spd_hit: the first policy of one direction that matched a flow (found 0: none did)."""

    _fields_ = [("policy_id", _u32), ("child_id", _u32), ("action", _u8), ("found", _u8), ("pad", _u8 * 2)]


class XsSpdMatch(ctypes.Structure):
    """struct xs_spd_match: a walk's result, the first OUT and the first IN match."""

    _fields_ = [("out", XsSpdHit), ("in_", XsSpdHit)]  # `in` in C


class XsFlowKey(ctypes.Structure):
    """struct xs_flow_key: key of xs_spd_cache, the selectors the SPD walk looks at."""

    _fields_ = [("src", _Addr), ("dst", _Addr), ("sport", _u16), ("dport", _u16), ("family", _u8), ("proto", _u8),
                ("pad", _u8 * 2)]


class XsSpdCacheVal(ctypes.Structure):
    """struct xs_spd_cache_val: value of xs_spd_cache, a walk's result under one SPD generation."""

    _fields_ = [("m", XsSpdMatch), ("generation", _u32), ("key", XsFlowKey)]


class XsChild(ctypes.Structure):
    """struct xs_child: xs_child_out[child_id]."""

    _fields_ = [("sa_index", _u32), ("owner", _u16), ("valid", _u8), ("pad", _u8)]


class XsSaInKey(ctypes.Structure):
    """struct xs_sa_in_key: key of xs_sa_in (SPI in host order)."""

    _fields_ = [("spi", _u32), ("proto", _u8), ("pad", _u8 * 3)]


class XsSaInVal(ctypes.Structure):
    """struct xs_sa_in_val: value of xs_sa_in."""

    _fields_ = [("sa_index", _u32), ("owner", _u16), ("encap", _u8), ("pad", _u8)]


class XsAddrKey(ctypes.Structure):
    """struct xs_addr_key: key of xs_local_addrs."""

    _fields_ = [("addr", _Addr), ("family", _u8), ("pad", _u8 * 3)]


class XsIkeLimits(ctypes.Structure):
    """struct xs_ike_limits: xs_ike_limits[0], the IKE_SA_INIT rate limit as GCRA intervals and masks."""

    _fields_ = [("interval_ns", ctypes.c_uint64), ("burst_ns", ctypes.c_uint64),
                ("global_interval_ns", ctypes.c_uint64), ("global_burst_ns", ctypes.c_uint64),
                ("mask4", _Addr), ("mask6", _Addr)]


class XsAcquire(ctypes.Structure):
    """struct xs_acquire: an event of the xs_acquire ring buffer (a PROTECT packet found no SA)."""

    _fields_ = [("src", _Addr), ("dst", _Addr), ("child_id", _u32), ("policy_id", _u32), ("sport", _u16),
                ("dport", _u16), ("family", _u8), ("proto", _u8), ("pad", _u8 * 2)]


XS_ACQUIRE_INTERVAL_NS = int(re.search(r"#define XS_ACQUIRE_INTERVAL_NS (\d+)", HEADER.read_text())[1])

