"""Ethernet II framing: find the L3 header behind up to two VLAN tags, build a header, convert MAC addresses.

Workers receive whole frames from AF_XDP; `parse_eth` tells them where the IP header starts, the same walk the
XDP classifier does (IEEE 802.1Q tag, and 802.1ad QinQ outer tag). A frame too short for the headers it
announces is `Drop(MALFORMED_ETH)`; an ethertype other than IP is the caller's decision.
"""

from __future__ import annotations

import re
import struct

from xdpsec.abi import Drop, DropReason

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

ETH_HLEN = 14
ETH_ALEN = 6
VLAN_HLEN = 4
MAX_VLAN_TAGS = 2  # QinQ: one 802.1ad service tag and one 802.1Q customer tag

_VLAN_TYPES = frozenset({ETH_P_8021Q, ETH_P_8021AD})
_HEX_OCTET = re.compile(r"[0-9A-Fa-f]{1,2}")


def parse_eth(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(offset of the L3 header, its ethertype), skipping up to two VLAN tags.

    A third tag is not skipped: its TPID comes back as the ethertype, which no caller treats as IP.
    """
    if len(frame) < ETH_HLEN:
        raise Drop(DropReason.MALFORMED_ETH)
    off = ETH_HLEN
    ethertype = struct.unpack_from("!H", frame, off - 2)[0]
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in _VLAN_TYPES:
            break
        # The tag's TCI sits where the ethertype would be; the real ethertype follows it.
        off += VLAN_HLEN
        if len(frame) < off:
            raise Drop(DropReason.MALFORMED_ETH)
        ethertype = struct.unpack_from("!H", frame, off - 2)[0]
    return off, ethertype


def build_eth(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """A 14-byte Ethernet II header."""
    if len(dst) != ETH_ALEN or len(src) != ETH_ALEN:
        raise ValueError("MAC addresses are 6 bytes")
    return struct.pack("!6s6sH", dst, src, ethertype)


def mac_bytes(text: str) -> bytes:
    """'02:00:5e:10:00:01' (or with '-' separators) -> 6 bytes."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != ETH_ALEN or not all(_HEX_OCTET.fullmatch(p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(mac: bytes) -> str:
    """6 bytes -> '02:00:5e:10:00:01'."""
    if len(mac) != ETH_ALEN:
        raise ValueError("MAC addresses are 6 bytes")
    return ":".join(f"{b:02x}" for b in mac)
