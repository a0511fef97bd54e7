"""The ctypes mirrors of xdpsec/abi.py against the layouts clang gives the same structs (via bcc).

bcc turns each map's key and value type into a ctypes class from the compiled program's debug info; a mirror
that disagrees in size or in any field's offset would write garbage into the map. struct xs_meta is no map
type of the classifier, so a one-map probe program is compiled for it.
"""

from __future__ import annotations

import ctypes

import pytest

from xdpsec import abi

pytestmark = pytest.mark.bpf

#: (map, "Key" or "Leaf") -> the mirror that the loader writes there
MIRRORS = [
    ("xs_ifaces", "Leaf", abi.XsIface),
    ("xs_config", "Leaf", abi.XsConfigVal),
    ("xs_policies", "Leaf", abi.XsPolicy),
    ("xs_child_out", "Leaf", abi.XsChild),
    ("xs_sa_in", "Key", abi.XsSaInKey),
    ("xs_sa_in", "Leaf", abi.XsSaInVal),
    ("xs_local_addrs", "Key", abi.XsAddrKey),
    ("xs_ike_limits", "Leaf", abi.XsIkeLimits),
    ("xs_ike_prefixes", "Key", abi.XsAddrKey),
    ("xs_ike_exempt", "Key", abi.XsAddrKey),
    ("xs_spd_cache", "Key", abi.XsFlowKey),
    ("xs_spd_cache", "Leaf", abi.XsSpdCacheVal),
]


def layout(cls, base: int = 0, prefix: str = "") -> list[tuple[str, int, int]]:
    """(field path, offset, size) of every field, nested structs' fields included."""
    rows = []
    for name, ftype, *_ in cls._fields_:
        field = getattr(cls, name)
        path = prefix + name.removesuffix("_")  # C's `in` is `in_` in Python
        rows.append((path, base + field.offset, field.size))
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure):
            rows += layout(ftype, base + field.offset, path + ".")
    return rows


def assert_same_layout(generated, mirror) -> None:
    # bcc packs its classes (_pack_ = 1, padding made explicit), so alignment is not comparable: offsets are
    assert ctypes.sizeof(generated) == ctypes.sizeof(mirror)
    assert layout(generated) == layout(mirror)


@pytest.mark.parametrize("map_name,side,mirror", MIRRORS, ids=[f"{m}.{s}" for m, s, _ in MIRRORS])
def test_mirror_matches_map_type(clf, map_name, side, mirror):
    assert_same_layout(getattr(clf[map_name], side), mirror)


def test_every_struct_map_has_a_mirror(clf):
    """A new struct-typed map without a mirror (and a row in MIRRORS) fails here."""
    covered = {(m, s) for m, s, _ in MIRRORS}
    for name in clf.map_names():
        table = clf[name]
        for side in ("Key", "Leaf"):
            cls = getattr(table, side)
            if issubclass(cls, ctypes.Structure) and cls.__name__ != "xs_pkt":
                assert (name, side) in covered, f"{name}.{side} ({cls.__name__}) has no mirror in abi.py"


def test_meta_mirror_matches_c(private_netns):
    import bcc

    from xdpsec.io.bpf import INCLUDE

    probe = bcc.BPF(text=b'#include <linux/types.h>\n#include "xdpsec_abi.h"\n'
                         b"BPF_ARRAY(meta_probe, struct xs_meta, 1);\n", cflags=[f"-I{INCLUDE}"])
    try:
        assert_same_layout(probe[b"meta_probe"].Leaf, abi.XsMeta)
    finally:
        probe.cleanup()


def test_meta_fits_the_metadata_area():
    # bpf_xdp_adjust_meta takes at most 32 bytes, in multiples of 4 (net/core/filter.c, xdp_metalen_invalid)
    size = ctypes.sizeof(abi.XsMeta)
    assert size <= 32 and size % 4 == 0


def test_limits_read_from_the_header():
    assert abi.XS_MAX_POLICIES == 4096
    assert abi.XS_SPD_CACHE_SIZE == 65536
    assert abi.XS_META_MAGIC == int.from_bytes(b"xsec", "big")
