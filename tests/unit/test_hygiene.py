"""Security hygiene of the source itself, checked by reading it (AST) and by one live socket.

* Integrity values (ICVs, AUTH payloads, MACs, tags) are compared in constant time: no `==`/`!=` in xdpsec/ has
  one as an operand, and the two verification primitives use `hmac.compare_digest` (AEAD tags are checked
  inside `cryptography`, which raises InvalidTag). A timing difference in an early-exit comparison would let
  an attacker forge an ICV byte by byte.
* No logging call passes key material (names with key, psk, secret, sk_... in its arguments).
* The control-socket command handlers never read key fields, so `xdpsec sas` and friends cannot expose keys.
* The control socket is created 0600 whatever the umask, and a non-root user cannot connect to it.

Each AST checker is first shown to find a planted bad example, so a checker that matches nothing cannot pass
unnoticed.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xdpsec.control import ControlServer

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "xdpsec").rglob("*.py"))

# --- constant-time comparisons --------------------------------------------------------------------------------

#: An operand whose last name is one of these holds an integrity value.
INTEGRITY_NAME = re.compile(r"(^|_)(icv|mac|tag|digest|auth_data|signature|hmac)$", re.I)
#: Comparisons (file, source) that match the pattern but involve no secret, with the reason.
COMPARE_ALLOWED = {
    ("xdpsec/crypto/auth.py", "data == cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest"):
        "a certificate's Subject Key Identifier against a KEY_ID identity: public",
    ("xdpsec/ike/sa.py", "cached.request_digest == digest"):
        "hash of a received request to spot a retransmission (RFC 7296 §2.1): public",
}


def _last_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_plain_value(node: ast.AST) -> bool:
    """A constant, an enum member (Upper.CASE) or len(...): comparing with it reveals nothing secret."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
        return True
    return isinstance(node, ast.Attribute) and node.attr.isupper()


def integrity_comparisons(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, operand name, source) of every ==/!= that compares an integrity value with a non-constant."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(_is_plain_value(o) for o in operands):
            continue
        for operand in operands:
            name = _last_name(operand)
            if name and INTEGRITY_NAME.search(name):
                found.append((node.lineno, name, ast.unparse(node)))
    return found


def test_the_comparison_checker_finds_a_planted_early_exit_compare():
    bad = ast.parse("def check(received_icv, data):\n    return received_icv == compute(data)\n")
    good = ast.parse("def check(icv, data):\n    return hmac.compare_digest(icv, compute(data)) and len(icv) == 16\n")
    assert [name for _l, name, _s in integrity_comparisons(bad)] == ["received_icv"]
    assert integrity_comparisons(good) == []


def test_no_integrity_value_is_compared_with_eq():
    offenders = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for line, _name, src in integrity_comparisons(ast.parse(path.read_text())):
            if (rel, src) not in COMPARE_ALLOWED:
                offenders.append(f"{rel}:{line}: {src}")
    assert not offenders, "compare integrity values with hmac.compare_digest:\n" + "\n".join(offenders)


def _calls_in(path: Path, function: str) -> set[str]:
    """Names of the functions called inside `function` (a def or a method) of the module at `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return {_last_name(c.func) or "" for c in ast.walk(node) if isinstance(c, ast.Call)}
    raise AssertionError(f"{path}: no function {function}")


@pytest.mark.parametrize(("module", "function"), [
    ("xdpsec/crypto/integ.py", "verify"),       # every HMAC ICV: ESP (non-AEAD), AH, IKE SK payload
    ("xdpsec/crypto/auth.py", "psk_verify"),   # the AUTH payload of a PSK peer (RFC 7296 §2.15)
])
def test_verifiers_compare_in_constant_time(module, function):
    assert "compare_digest" in _calls_in(ROOT / module, function)


# --- no keys in logs ------------------------------------------------------------------------------------------

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
SECRET_NAME = re.compile(r"psk|secret|skeyseed|private|(^|_)sk(_|$)|(^|_)(enc|integ|shared)_key|(^|_)keys?$", re.I)
#: Log arguments that match the pattern but are not secrets, with the reason.
LOG_ALLOWED = {
    ("xdpsec/worker.py", "key"): "the class name of an unexpected exception",
}


def _names(node: ast.AST):
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr


def secret_log_arguments(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every secret-looking name in the arguments of a logger call (format string included)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS and "log" in ast.unparse(node.func.value).lower()):
            continue
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            found += [(node.lineno, n) for n in _names(arg) if SECRET_NAME.search(n)]
    return found


def test_the_log_checker_finds_a_planted_key():
    bad = ast.parse("log.debug('keys %s', sa.enc_key.hex())\nlogger.info(f'{psk}')\n")
    assert [n for _l, n in secret_log_arguments(bad)] == ["enc_key", "psk"]
    assert secret_log_arguments(ast.parse("log.info('SA 0x%08x up', sa.spi)")) == []


def test_no_log_call_passes_key_material():
    offenders = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        offenders += [f"{rel}:{line}: {name}" for line, name in secret_log_arguments(ast.parse(path.read_text()))
                      if (rel, name) not in LOG_ALLOWED]
    assert not offenders, "key material passed to a logger:\n" + "\n".join(offenders)


# --- the control socket ---------------------------------------------------------------------------------------

KEY_FIELDS = {"enc_key", "integ_key", "psk", "keys", "private_key", "sk_d", "sk_ei", "sk_er", "sk_ai", "sk_ar"}


def test_control_handlers_never_read_key_fields():
    """Every `_cmd_*` handler of the coordinator (what the control socket serves) stays away from key fields."""
    tree = ast.parse((ROOT / "xdpsec" / "coordinator.py").read_text())
    handlers = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("_cmd_")]
    assert len(handlers) >= 5, "the control handlers moved: update this test"
    read = {(h.name, a) for h in handlers for a in _names(h) if a.lower() in KEY_FIELDS}
    assert not read


@pytest.fixture
def public_dir():
    """A directory everyone may enter (tmp_path's parents are private, which would hide the socket anyway)."""
    path = Path(tempfile.mkdtemp(prefix="xdpsec-hygiene-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def test_control_socket_is_0600_whatever_the_umask(public_dir):
    old = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        server = ControlServer(public_dir / "t.sock", {"ping": lambda _a: "pong"})
        server.start()
    finally:
        os.umask(old)
    try:
        st = os.stat(public_dir / "t.sock")
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    finally:
        server.stop()


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_local_user_cannot_open_the_control_socket(public_dir):
    server = ControlServer(public_dir / "t.sock", {"ping": lambda _a: "pong"})
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as s:  # root can: the socket works
            s.connect(str(public_dir / "t.sock"))
        out = subprocess.run([sys.executable, "-c", _CONNECT, str(public_dir / "t.sock")], capture_output=True,
                             text=True, timeout=30, user=65534, group=65534, extra_groups=[], cwd="/")
        assert out.stdout.strip() == "refused", out
    finally:
        server.stop()


# --- capabilities -----------------------------------------------------------------------------------------------

_DROP = """
import subprocess, sys
from xdpsec.io import caps
print(hex(caps.drop_to(set(sys.argv[1:]))))
# execve as uid 0 would normally grant the bounding set again: it must not.
print(subprocess.run(["grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"], capture_output=True, text=True).stdout)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, which holds every capability to start with")
@pytest.mark.parametrize("needed", [set(), {"net_admin", "CAP_BPF"}])
def test_drop_to_keeps_exactly_what_is_needed_even_across_execve(needed):
    from xdpsec.io import caps
    out = subprocess.run([sys.executable, "-c", _DROP, *sorted(needed)], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    want = caps.mask(needed)
    assert int(out[0], 16) == want
    assert out[1:] == ["CapEff:", f"{want:016x}", "CapBnd:", f"{want:016x}"]


_DROP_TWICE = """
from xdpsec.io import caps
caps.drop_to({"net_admin", "net_raw"})   # as a coordinator would: CAP_SETPCAP is gone after this
print(hex(caps.drop_to(set())))          # as a worker forked from it: must still drop, not fail with EPERM
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, which holds every capability to start with")
def test_a_second_drop_without_setpcap_still_lowers_the_sets():
    out = subprocess.run([sys.executable, "-c", _DROP_TWICE], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.split()) == (0, ["0x0"]), out.stderr

def test_capability_names_are_checked():
    from xdpsec.io import caps
    assert caps.mask({"net_admin", "CAP_NET_RAW"}) == (1 << 12) | (1 << 13)
    with pytest.raises(ValueError):
        caps.mask({"net_admn"})
