"""Fixtures for the interop tests: strongSwan's charon as the peer in the namespace lab.

Tests that start charon need root (namespaces, mounts), charon and swanctl (Debian's strongswan-charon and
strongswan-swanctl) and tcpdump: the `swan_lab` fixture skips with the reason otherwise, so the pure tests in
this directory (log parsing, config text) still run anywhere. Labs use the prefix "xst", like tests/netns.
"""

from __future__ import annotations

import os
import shutil

import pytest

from xdpsec.lab import Lab
from xdpsec.labswan import CHARON, SWANCTL

TEST_PREFIX = "xst"
TOOLS = ("ip", "nsenter", "unshare", "mount", "ping", "tcpdump", SWANCTL)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers",
                            "interop: tests against a third-party IKEv2/ESP implementation (strongSwan)")


@pytest.fixture
def requires_charon() -> None:
    if os.geteuid() != 0:
        pytest.skip("strongSwan lab tests need root (network and mount namespaces)")
    if not CHARON.exists():
        pytest.skip(f"strongSwan's charon is not installed ({CHARON}: apt-get install strongswan-charon)")
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@pytest.fixture
def swan_lab(requires_charon) -> Lab:
    """A fresh site-to-site lab (hostA - gwA = wire = gwB - hostB), torn down with every charon in it."""
    lab = Lab(prefix=TEST_PREFIX)
    try:
        yield lab.site_to_site()
    finally:
        lab.teardown()
