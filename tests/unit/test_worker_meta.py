"""The worker reads struct xs_meta with struct.unpack_from; it must agree with the ABI mirror field by field."""

import ctypes

from xdpsec.abi import XsMeta
from xdpsec.worker import META, META_FIELDS, read_meta


def test_meta_struct_matches_abi_mirror():
    assert META.size == ctypes.sizeof(XsMeta)
    m = XsMeta()
    for i, name in enumerate(META_FIELDS):
        setattr(m, name, i + 1)
    raw = bytes(m)
    assert META.unpack(raw) == tuple(range(1, len(META_FIELDS) + 1))


def test_read_meta_reads_the_bytes_just_before_the_packet():
    m = XsMeta(magic=0x78736563, sa_index=7, owner=1, l3_off=18, kind=2)
    buf = bytearray(64) + bytes(m) + b"packet"
    assert read_meta(buf, 64 + len(bytes(m))) == (0x78736563, 7, 2, 1, 18)
