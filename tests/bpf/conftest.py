"""Fixtures for the classifier tests: one compiled classifier per test module, run in a private namespace.

Compiling costs 3-5 s, so each module loads the classifier once; `clf` gives every test a clean slate (no
policies, SAs, local addresses; default config) on top of it. The module runs inside a network namespace of its
own (entered by this thread with unshare, left with setns): BPF_PROG_TEST_RUN resolves the ingress ifindex in the
caller's namespace, and the AF_XDP socket the steered cases need is bound to that namespace's loopback, so no
test touches an interface of the host.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from collections import Counter
from dataclasses import dataclass

import pytest

from xdpsec.abi import XS_MAX_CHILDREN, Action, DropReason

pytestmark = pytest.mark.bpf

CLONE_NEWNET = 0x40000000
LO_IFINDEX = 1  # loopback is ifindex 1 in every namespace
LO_SLOT = 0
CHILDREN_IN_TESTS = 16  # child slots the tests use (cleared between tests)

_libc = ctypes.CDLL(None, use_errno=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("BPF_PROG_TEST_RUN and AF_XDP need root (CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW)")


@pytest.fixture(scope="module")
def private_netns():
    """Move this thread into a fresh network namespace for the module; back to the original afterwards."""
    _need_root()
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            pytest.skip(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        if _libc.setns(original, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
        os.close(original)


@pytest.fixture(scope="module")
def loaded(private_netns):
    """The classifier, compiled once, with loopback registered as slot 0 and an AF_XDP socket on its queue 0."""
    from xdpsec.io.bpf import Classifier
    from xdpsec.io.xsk import Umem, XskSocket

    clf = Classifier()
    umem = Umem(nframes=64)
    xsk = XskSocket(umem, LO_IFINDEX, 0, ring_size=64)
    try:
        yield clf, xsk.fd
    finally:
        clf.close()
        xsk.close()
        umem.close()


@pytest.fixture
def clf(loaded):
    """The module's classifier with empty tables and the default configuration."""
    loaded, xsk_fd = loaded
    loaded.set_config(default_action=Action.BYPASS, encap_port=4500)
    loaded.set_policies([], {})
    loaded.set_local_addrs([])
    loaded["xs_sa_in"].clear()
    for child_id in range(min(CHILDREN_IN_TESTS, XS_MAX_CHILDREN)):
        loaded.clear_child_sa(child_id)
    loaded.set_iface(LO_IFINDEX, LO_SLOT)
    loaded.set_xsk(LO_SLOT, 0, xsk_fd)
    return loaded


@dataclass(frozen=True)
class Outcome:
    """What one frame did: the test run's result, the drop reason it was counted under, and the stat deltas."""

    verdict: int
    meta: object
    data_out: bytes
    drop: DropReason | None
    stats: Counter


def classify(clf, frame: bytes, **kw) -> Outcome:
    """Run `frame` through the classifier and attribute the counter changes to it."""
    drops0, stats0 = Counter(clf.drops()), Counter(clf.stats())
    result = clf.test_run(frame, **kw)
    drops = Counter(clf.drops())
    drops.subtract(drops0)
    stats = Counter(clf.stats())
    stats.subtract(stats0)
    reasons = [name for name, n in drops.items() if n]
    assert len(reasons) <= 1, f"one frame counted under several drop reasons: {reasons}"
    drop = DropReason[reasons[0].upper()] if reasons else None
    return Outcome(result.verdict, result.meta, result.data_out, drop, +stats)


@pytest.fixture
def run(clf):
    """classify() bound to the test's classifier: `run(frame, ifindex=..., rx_queue=...) -> Outcome`."""
    return functools.partial(classify, clf)
