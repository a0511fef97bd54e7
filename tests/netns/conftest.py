"""Shared fixtures for the namespace tests: root check and labs that are always torn down.

Every test under tests/netns/ needs root (network namespaces, veths, tcpdump): the autouse `requires_root`
skips them otherwise. `lab` is a fresh site-to-site plus host-to-host lab per test (building one takes about
0.3 s); `make_lab(**kw)` builds labs with other parameters (queues, mtu, topologies). Test labs use the prefix
"xst" so they never collide with a lab a human brought up with ``python -m xdpsec.lab up``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from xdpsec.lab import Lab
from xdpsec.labconf import Gateways, PairSpec, host_sides, site_sides, write_pair

TEST_PREFIX = "xst"
TOOLS = ("ip", "nsenter", "sysctl", "ping", "tcpdump")


@pytest.fixture(autouse=True)
def requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root")
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@pytest.fixture
def make_lab():
    """Factory: ``make_lab(queues=3, mtu=1400, topology="site")``; every lab it made is torn down after."""
    labs: list[Lab] = []

    def make(*, topology: str = "both", **kw) -> Lab:
        lab = Lab(prefix=TEST_PREFIX, **kw)
        labs.append(lab)
        if topology in ("site", "both"):
            lab.site_to_site()
        if topology in ("host", "both"):
            lab.host_to_host()
        return lab

    yield make
    for lab in labs:
        lab.teardown()


@pytest.fixture
def lab(make_lab) -> Lab:
    """Both topologies, default queues (2) and MTU (1500)."""
    return make_lab()


@pytest.fixture
def pair(make_lab, tmp_path):
    """pair(spec, topology="site"|"host", extra=(toml_a, toml_b)) -> (lab, gateways, node_a, node_b)."""
    started: list[Gateways] = []

    def up(spec: PairSpec, *, topology: str = "site", extra: tuple[str, str] = ("", ""), family: str = "v4",
           log_level: str = "info"):
        lab = make_lab(topology=topology)
        if topology == "site":
            a, b = site_sides(lab, workers=spec.workers)
            nodes = ("gwA", "gwB")
        else:
            a, b = host_sides(lab, family=family)
            nodes = ("hostC", "hostD")
        a.extra, b.extra = extra
        pa, pb = write_pair(tmp_path, a, b, spec)
        gws = Gateways(lab)
        started.append(gws)
        gws.start(nodes[0], pa, a.instance, log_level=log_level)
        gws.start(nodes[1], pb, b.instance, log_level=log_level)
        gws.configs = {nodes[0]: pa, nodes[1]: pb}
        gws.wait_ready()
        return lab, gws, nodes

    yield up
    for gws in started:
        codes = gws.stop()
        # A gateway must stop cleanly on SIGTERM: nothing left behind is checked in test_lifecycle.
        assert all(c == 0 for c in codes.values()), (codes, {n: gws.log(n) for n in codes})
