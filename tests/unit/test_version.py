"""`xdpsec.version.versions()`: the right numbers from the right places, and never an exception."""

from __future__ import annotations

import os
import sys
import tomllib
import types
from pathlib import Path

import cryptography
import pytest

from xdpsec import version
from xdpsec.version import NOT_INSTALLED, versions

ROOT = Path(__file__).resolve().parents[2]


def test_components_in_order_and_matching_their_sources():
    v = versions()
    assert list(v) == ["xdpsec", "python", "kernel", "bcc", "cryptography", "openssl", "pyroute2"]
    assert v["xdpsec"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert v["kernel"].startswith(os.uname().release + " (")
    assert v["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert v["cryptography"] == cryptography.__version__
    assert v["openssl"].startswith(("OpenSSL", "LibreSSL", "BoringSSL"))
    assert all(isinstance(x, str) and x for x in v.values())


def test_bcc_absent_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes `import bcc` raise ImportError
    assert versions()["bcc"] == NOT_INSTALLED


def test_bcc_without_version_attribute_asks_dpkg(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", types.ModuleType("bcc"))
    asked = []
    monkeypatch.setattr(version, "_dpkg_version", lambda pkg: asked.append(pkg) or "0.26.0+ds-1")
    assert versions()["bcc"] == "0.26.0+ds-1" and asked == ["python3-bpfcc"]
    monkeypatch.setattr(version, "_dpkg_version", lambda pkg: None)  # no dpkg, or the package is unknown
    assert versions()["bcc"] == "unknown"


def test_dpkg_query_of_an_unknown_package_is_none():
    assert version._dpkg_version("xdpsec-no-such-package") is None


def test_a_failing_probe_becomes_its_error(monkeypatch):
    def broken():
        raise OSError("uname exploded")

    monkeypatch.setattr(version.platform, "uname", broken)
    v = versions()
    assert v["kernel"] == "error: OSError: uname exploded"
    assert v["cryptography"] == cryptography.__version__  # the others are still answered


@pytest.mark.parametrize("module", ["pyroute2", "cryptography"])
def test_missing_python_dependency(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    assert versions()[module] == NOT_INSTALLED
