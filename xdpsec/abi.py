"""The Python side of the ABI shared with the XDP programs (bpf/include/xdpsec_abi.h).

Every enum in the header is read from the header itself when this module is imported, so a drop reason or a
counter is defined exactly once, in C, and both sides always agree on its number. Struct mirrors (ctypes)
live next to them; tests/bpf/test_abi.py checks them against the layouts bcc builds from the same header.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

HEADER = Path(__file__).resolve().parent.parent / "bpf" / "include" / "xdpsec_abi.h"
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
