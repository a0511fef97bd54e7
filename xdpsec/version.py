"""What `xdpsec version` reports: the versions of xdpsec and of everything under it that changes behaviour.

A bug report needs the kernel (XDP and AF_XDP features differ between releases), bcc (it compiles the
classifier), cryptography and the OpenSSL it is built on (the ciphers), and pyroute2 (netlink). Each lookup
is independent and never raises: a missing or broken dependency is reported as such, since `xdpsec version`
is what one runs when something is already wrong. bcc is imported only here and only when asked, because
importing it loads LLVM; Debian's python3-bpfcc has no ``__version__``, so dpkg is asked instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
from collections.abc import Callable

NOT_INSTALLED = "not installed"
DPKG_TIMEOUT = 5.0  # seconds; dpkg-query answers in milliseconds, a hung one must not hang `xdpsec version`


def _xdpsec() -> str:
    try:
        return importlib.metadata.version("xdpsec")
    except importlib.metadata.PackageNotFoundError:
        from xdpsec import __version__  # a source tree that was never installed

        return __version__


def _kernel() -> str:
    u = platform.uname()
    return f"{u.release} ({u.machine})"


def _module_version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return NOT_INSTALLED
    return str(getattr(mod, "__version__", "") or _distribution_version(module))


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dpkg_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                             timeout=DPKG_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _bcc() -> str:
    try:
        import bcc
    except ImportError:
        return NOT_INSTALLED
    version = getattr(bcc, "__version__", None)
    if version:
        return str(version)
    # Debian ships the Python module in python3-bpfcc, built from the same source as libbpfcc.
    return _dpkg_version("python3-bpfcc") or _dpkg_version("libbpfcc") or "unknown"


def _openssl() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
    except ImportError:
        return NOT_INSTALLED
    return backend.openssl_version_text()


_PROBES: dict[str, Callable[[], str]] = {
    "xdpsec": _xdpsec,
    "python": lambda: f"{platform.python_version()} ({platform.python_implementation()})",
    "kernel": _kernel,
    "bcc": _bcc,
    "cryptography": lambda: _module_version("cryptography"),
    "openssl": _openssl,
    "pyroute2": lambda: _module_version("pyroute2"),
}


def versions() -> dict[str, str]:
    """Component -> version, in a fixed order; a probe that fails says why instead of raising."""
    result = {}
    for name, probe in _PROBES.items():
        try:
            result[name] = probe()
        except Exception as e:  # noqa: BLE001 - a broken dependency is the answer, not an error
            result[name] = f"error: {type(e).__name__}: {e}"
    return result
