"""What `pip install .` and the systemd unit give a user: a wheel with the whole package, the console script
and the BPF sources the runtime compiles; a unit file systemd accepts, with the hardening it promises.

The wheel is built once per module from a copy of the sources (so the work tree gets no build/ or egg-info)
and installed with --no-deps into a fresh venv. That venv reaches the dependencies (cryptography, pyroute2,
bcc) through a .pth line pointing at the development venv's site-packages, listed after its own: the xdpsec
that is imported is the installed one, never the work tree (the development venv's editable-install hook is
not run, as .pth files of a directory added by a .pth are not processed).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "xdpsec.service"
SOURCES = ("pyproject.toml", "README.md", "xdpsec")


def run(*cmd, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (ROOT / name).is_dir() else {}))
    out = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", src / "dist", src)
    if "No matching distribution found for setuptools" in out.stderr:
        pytest.skip("no package index reachable to build the wheel in isolation")
    assert out.returncode == 0, out.stderr
    return next((src / "dist").glob("xdpsec-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    assert run(sys.executable, "-m", "venv", "--without-pip", env).returncode == 0
    python = env / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (purelib / "zz_dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    assert out.returncode == 0, out.stderr
    return env


def test_wheel_has_every_module_the_entry_point_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "xdpsec").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules and not modules - names, sorted(modules - names)
    assert "xdpsec/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "xdpsec = xdpsec.cli:main" in text




def test_wheel_carries_the_bpf_sources_the_runtime_compiles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for source in ("xdpsec.c", "include/xdpsec_abi.h", "include/parse.h", "include/spd.h", "include/stats.h"):
        assert any(n.endswith("bpf/" + source) and n.startswith("xdpsec/") for n in names), source


def test_installed_package_finds_its_abi_header(venv, tmp_path):
    out = run(venv / "bin" / "python", "-c", "import xdpsec.abi, xdpsec.io.bpf as b; print(xdpsec.abi.__file__); "
              "print(len(b.splice_source()))", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(venv))


def test_installed_console_script_runs_the_installed_package(venv, tmp_path):
    out = run(venv / "bin" / "xdpsec", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "reload" in out.stdout and "version" in out.stdout
    where = run(venv / "bin" / "python", "-c", "import xdpsec; print(xdpsec.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where  # the wheel's copy, not the work tree


# --- the systemd unit -------------------------------------------------------------------------------------

def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_and_reloads_the_gateway():
    svc = unit()["Service"]
    assert svc["Type"] == "simple"  # xdpsec does not send sd_notify READY=1
    assert svc["ExecStart"].split()[1:] == ["run", "--config", "/etc/xdpsec/xdpsec.toml"]
    assert svc["ExecStart"].split()[0].endswith("/xdpsec")
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP = xdpsec reload (coordinator.py)
    assert svc["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_hardening():
    svc = unit()["Service"]
    caps = set(svc["CapabilityBoundingSet"].split())
    assert caps == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
                    "CAP_NET_BIND_SERVICE", "CAP_SETPCAP"}
    assert "CAP_SYS_ADMIN" not in svc["AmbientCapabilities"]
    assert set(svc["AmbientCapabilities"].split()) <= caps
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                             "AF_XDP"}
    expected = {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                "LimitMEMLOCK": "infinity"}
    assert {k: svc.get(k) for k in expected} == expected
    assert set(svc["ReadWritePaths"].split()) == {"/var/lib/xdpsec", "/run/xdpsec"}
    # bcc's in-process LLVM needs W+X pages; the local path writes /proc/sys/net: both must stay allowed.
    assert "MemoryDenyWriteExecute" not in svc and "ProtectKernelTunables" not in svc


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify insists that ExecStart's binary exists: point it at this venv's interpreter for the check.
    text = UNIT.read_text()
    binary = unit()["Service"]["ExecStart"].split()[0]
    (tmp_path / "xdpsec.service").write_text(text.replace(binary, sys.executable))
    out = run("systemd-analyze", "verify", "--man=no", tmp_path / "xdpsec.service", timeout=60)
    # verify exits 0 even for unknown keys or values it ignores; those are its warnings on stderr.
    assert out.returncode == 0 and "xdpsec.service" not in out.stderr, out.stderr
