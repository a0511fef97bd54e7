"""strongSwan (charon 5.9) as the independent IKEv2/ESP peer in the namespace lab (xdpsec/lab.py).

The interop tests and the benchmarks need a third-party implementation on the other end of a tunnel. Debian
bookworm's charon runs here with its userspace ESP (``kernel-libipsec``, a TUN device ``ipsec0``) because the
kernel has no ESP. Several daemons coexist on one machine, one per lab namespace:

* each gets a directory (in the lab's temporary directory) with its own ``strongswan.conf``, ``swanctl/``
  (swanctl.conf, x509/, x509ca/, private/), a vici socket and a ``run/`` directory;
* the pid file path is compiled in (``/var/run/charon.pid``), so charon runs in a mount namespace of its own
  (``unshare -m``, private propagation) in which ``run/`` is bind-mounted over ``/run``, entered through the
  node's network namespace with ``nsenter --net`` (the lab's `Lab.popen`, which tracks it for teardown);
* it is controlled with ``swanctl --uri unix://DIR/charon.vici`` and ``SWANCTL_DIR=DIR/swanctl``; the SAs are
  read with a small vici client (`_Vici`): ``swanctl --list-sas --raw`` prints values unquoted, so a value
  with a space in it (an identity such as ``C=CH, CN=x``) could not be told from the next key.

Keys: Debian's build has no ``save-keys`` plugin, but with the log levels ``ike=4, chd=4`` charon logs the IKE
keys (``Sk_ei secret => 20 bytes @ 0x...`` and a hex dump) and, for every CHILD_SA, its keys followed by the
line naming it and its SPIs; `SwanPeer.keys` parses them (the log's ``time_format`` must have no spaces) so
that a test can decrypt what it captured.

Measured with strongSwan 5.9.8 (Debian 5.9.8-5+deb12u6) on the 2-vCPU lab VM:

* ``load`` must list ``kdf`` (otherwise "KDF_PRF with PRF_HMAC_SHA2_256 not supported") and
  ``kernel-libipsec`` before ``kernel-netlink`` (the kernel has no ESP; kernel-netlink still installs the
  route to the remote traffic selector via ``ipsec0``, MTU 1400, in routing table 220);
* charon answers on vici 0.1 s after it is started; initiating IKE_SA and CHILD_SA (PSK or ECDSA P-256) takes
  about 45 ms; stopping it (SIGTERM) 70 ms. charon writes nothing to stdout/stderr, only its file log;
* libipsec supports tunnel mode only and always fakes NAT_DETECTION_SOURCE_IP, so IKE_SA_INIT uses UDP 500,
  everything after it UDP 4500, and ESP is always carried in UDP (RFC 3948), ``encap = yes`` or not;
* MOBIKE is on by default: the peers announce their other addresses ("got additional MOBIKE peer address:
  2001:db8:b::1") in IKE_AUTH;
* after a CHILD_SA rekeying (about 30 ms) the old CHILD_SA stays listed as DELETED for 5 s
  (``charon.delete_rekeyed_delay``), so look for the INSTALLED one;
* ``swanctl --load-all`` exits 0 when swanctl.conf has a syntax error: `SwanPeer.load` treats any stderr
  output as failure;
* no drop policy is installed: without the tunnel (before ``initiate``, after ``terminate``) the lab's
  gateways forward hostA <-> hostB in clear, so a ping proves nothing about IPsec without a capture.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = "swanctl"

#: Plugins charon loads, in this order. ``kdf`` is mandatory in 5.9.8 and ``kernel-libipsec`` must come before
#: ``kernel-netlink`` (which then only manages routes and addresses).
PLUGINS = (
    "random nonce kdf openssl aes aesni gcm sha1 sha2 hmac curve25519 gmp pem pkcs1 pkcs8 x509 pubkey "
    "revocation constraints kernel-libipsec kernel-netlink socket-default vici"
)

#: ``ike`` and ``chd`` at 4 make charon log the key material (`SwanPeer.keys`); everything else at 1.
DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "ike": 4, "chd": 4}

#: Where swanctl looks for what, relative to its directory: credentials are written only into these.
CERT_DIRS = ("x509", "x509ca")
KEY_DIRS = ("private", "ecdsa", "rsa", "pkcs8")
#: The other directories ``swanctl --load-all`` reads; created empty, so that it has nothing to complain about
#: on stderr and anything it says there is an error (`SwanPeer.load`).
OTHER_DIRS = ("x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "bliss", "pkcs12")


class SwanError(RuntimeError):
    """charon did not start, or a swanctl command or vici request failed; the message says which and why."""


# -- vici (strongSwan's control protocol, src/libcharon/plugins/vici/README.md) ------------------------------


class _Packet(IntEnum):
    CMD_REQUEST = 0
    CMD_RESPONSE = 1
    CMD_UNKNOWN = 2
    EVENT_REGISTER = 3
    EVENT_UNREGISTER = 4
    EVENT_CONFIRM = 5
    EVENT_UNKNOWN = 6
    EVENT = 7


class _Element(IntEnum):
    SECTION_START = 1
    SECTION_END = 2
    KEY_VALUE = 3
    LIST_START = 4
    LIST_ITEM = 5
    LIST_END = 6


def _decode_message(data: bytes) -> dict:
    """A vici message -> nested dicts; values are str (bytes if not UTF-8), lists are lists of them."""
    root: dict = {}
    stack = [root]
    current_list: list | None = None
    pos = 0

    def name() -> str:
        nonlocal pos
        n = data[pos]
        pos += 1 + n
        return data[pos - n:pos].decode()

    def value() -> str | bytes:
        nonlocal pos
        (n,) = struct.unpack_from("!H", data, pos)
        pos += 2 + n
        raw = data[pos - n:pos]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw

    while pos < len(data):
        kind = _Element(data[pos])
        pos += 1
        if kind == _Element.SECTION_START:
            section: dict = {}
            stack[-1][name()] = section
            stack.append(section)
        elif kind == _Element.SECTION_END:
            stack.pop()
        elif kind == _Element.KEY_VALUE:
            key = name()
            stack[-1][key] = value()
        elif kind == _Element.LIST_START:
            current_list = stack[-1].setdefault(name(), [])
        elif kind == _Element.LIST_ITEM:
            current_list.append(value())  # type: ignore[union-attr]
        else:
            current_list = None
    return root


class _Vici:
    """Just enough of a vici client for streamed listings: register the event, send the command, collect."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def close(self) -> None:
        self.sock.close()

    def _send(self, kind: _Packet, name: str) -> None:
        body = bytes([kind, len(name)]) + name.encode()
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SwanError("vici: charon closed the connection")
            buf += chunk
        return buf

    def _recv(self) -> tuple[_Packet, bytes]:
        (n,) = struct.unpack("!I", self._recv_exact(4))
        body = self._recv_exact(n)
        return _Packet(body[0]), body[1:]

    def streamed(self, command: str, event: str) -> list[dict]:
        self._send(_Packet.EVENT_REGISTER, event)
        kind, _ = self._recv()
        if kind != _Packet.EVENT_CONFIRM:
            raise SwanError(f"vici: cannot register for {event!r} events ({kind.name})")
        self._send(_Packet.CMD_REQUEST, command)
        items = []
        while True:
            kind, body = self._recv()
            if kind == _Packet.EVENT:
                n = body[0]
                items.append(_decode_message(body[1 + n:]))
            elif kind == _Packet.CMD_RESPONSE:
                reply = _decode_message(body)
                if reply.get("success") == "no":
                    raise SwanError(f"vici {command}: {reply.get('errmsg', 'failed')}")
                return items
            else:
                raise SwanError(f"vici {command}: unexpected {kind.name}")


# -- key material from the log -------------------------------------------------------------------------------

# charon's chunk dumps (DBG4 "%B"): a header line, then lines of up to 16 bytes in hex and an ASCII column:
#   "05:18:33 06[IKE] Sk_ei secret => 20 bytes @ 0x7f90f8007ec0"
#   "05:18:33 06[IKE]    0: D2 3F 66 DB 84 2C FA 75 13 EA 08 AB 0F E2 C0 A1  .?f..,.u........"
# The number before "[IKE]" is charon's thread: the keys of one exchange and the line saying which SA they
# belong to are logged by the same thread, while other threads may log in between.
_LINE = re.compile(r"^\S+ (\d+)\[(\w+)\] (.*)$")
_DUMP_HEADER = re.compile(r"^(.+?) => (\d+) bytes @ (?:0x)?[0-9a-fA-F]+$")
_DUMP_ROW = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} ){1,16})")
# child_create.c: the initiator of a CHILD_SA (in IKE_AUTH or CREATE_CHILD_SA) logs "establishing" first;
# "inbound CHILD_SA" is a rekeying responder whose outbound SA follows when the old SA is deleted.
_ESTABLISHING = re.compile(r"^establishing CHILD_SA (\S+)\{(\d+)\}")
_ESTABLISHED = re.compile(
    r"^(?:inbound )?CHILD_SA (\S+)\{(\d+)\} established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o")
_IKE_KEYS = ("Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr")  # RFC 7296 §2.14, in that order
_CHILD_KEYS = {"encryption initiator key": "encr_i", "encryption responder key": "encr_r",
               "integrity initiator key": "integ_i", "integrity responder key": "integ_r"}


def _records(log: str):
    """(thread, text, dumped bytes or None) for every log line, hex dump rows folded into their header."""
    rows = [m.groups() for m in map(_LINE.match, log.splitlines()) if m]
    i = 0
    while i < len(rows):
        thread, _group, text = rows[i]
        i += 1
        head = _DUMP_HEADER.match(text)
        if not head:
            yield thread, text, None
            continue
        size, data = int(head[2]), b""
        # A dump is one log call, which the file logger writes out whole: its rows are contiguous.
        while len(data) < size and i < len(rows) and (row := _DUMP_ROW.match(rows[i][2])):
            data += bytes.fromhex(row[1])
            i += 1
        yield thread, head[1], data[:size]


def parse_keys(log: str) -> list[dict]:
    """The IKE and CHILD_SA keys in a charon log (see `SwanPeer.keys`), oldest first."""
    out: list[dict] = []
    initiated: set[int] = set()
    pending: dict[str, dict[str, bytes]] = {}  # thread -> child keys derived, SA not yet named
    ike: dict[str, bytes] = {}
    for thread, text, data in _records(log):
        if data is not None:
            label = text.removesuffix(" secret")
            if label in _IKE_KEYS:
                ike[label.replace("Sk_", "SK_")] = data
                if label == _IKE_KEYS[-1]:  # SK_ai/SK_ar are not derived for AEADs (RFC 5282 §7)
                    out.append({"kind": "ike", **{k.replace("Sk_", "SK_"): b"" for k in _IKE_KEYS}, **ike})
                    ike = {}
            elif text in _CHILD_KEYS:
                pending.setdefault(thread, {})[_CHILD_KEYS[text]] = data
        elif m := _ESTABLISHING.match(text):
            initiated.add(int(m[2]))
        elif (m := _ESTABLISHED.match(text)) and thread in pending:
            keys = pending.pop(thread)
            initiator = int(m[2]) in initiated
            # RFC 7296 §2.17: the initiator's keys protect what the initiator sends.
            mine, theirs = ("i", "r") if initiator else ("r", "i")
            out.append({
                "kind": "child", "name": m[1], "id": int(m[2]), "initiator": initiator,
                "spi_in": int(m[3], 16), "spi_out": int(m[4], 16),
                "encr_in": keys.get(f"encr_{theirs}", b""), "encr_out": keys.get(f"encr_{mine}", b""),
                "integ_in": keys.get(f"integ_{theirs}", b""), "integ_out": keys.get(f"integ_{mine}", b""),
            })
    return out


# -- the peer ------------------------------------------------------------------------------------------------


@dataclass
class SwanPeer:
    """One charon in one lab namespace."""

    node: str
    dir: Path
    vici: str  # unix socket path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    @property
    def log_path(self) -> Path:
        return self.dir / "charon.log"

    def swanctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``swanctl ARGS --uri unix://...`` against this daemon, with this daemon's swanctl directory."""
        env = {**os.environ, "SWANCTL_DIR": str(self.dir / "swanctl")}
        out = subprocess.run([SWANCTL, *args, "--uri", self.uri], capture_output=True, text=True,
                             timeout=timeout, env=env, check=False)
        if check and out.returncode:
            raise SwanError(f"{self.node}: swanctl {' '.join(args)}: exit {out.returncode}:\n"
                            f"{out.stdout.strip()}\n{out.stderr.strip()}")
        return out

    def load(self) -> None:
        """(Re)load swanctl.conf: connections, secrets and credentials; SwanError on any complaint.

        swanctl 5.9.8 exits 0 when swanctl.conf has a syntax error (it prints "invalid config file" and loads
        nothing), so its stderr, empty when all went well, decides.
        """
        out = self.swanctl("--load-all", "--noprompt")
        if out.stderr.strip():
            raise SwanError(f"{self.node}: swanctl --load-all:\n{out.stderr.strip()}")

    def initiate(self, child: str, timeout: float = 30) -> None:
        """Bring up ``child`` (and its IKE_SA); returns when it is installed, SwanError if it failed."""
        self.swanctl("--initiate", "--child", child, "--timeout", str(round(timeout)), timeout=timeout + 5)

    def terminate(self, ike: str, timeout: float = 30) -> None:
        """Delete the IKE_SA ``ike`` (and with it its CHILD_SAs) with an INFORMATIONAL exchange."""
        self.swanctl("--terminate", "--ike", ike, "--timeout", str(round(timeout)), timeout=timeout + 5)

    def rekey(self, child: str) -> None:
        """Start rekeying the CHILD_SAs named ``child`` (CREATE_CHILD_SA); returns at once, see `wait_sas`."""
        self.swanctl("--rekey", "--child", child)

    def wait_sas(self, predicate: Callable[[dict[str, dict]], bool], timeout: float = 10) -> dict[str, dict]:
        """Poll `list_sas` until ``predicate`` holds and return the SAs; SwanError (with the log) if never."""
        deadline = time.monotonic() + timeout
        while not predicate(sas := self.list_sas()):
            if time.monotonic() > deadline:
                raise SwanError(f"{self.node}: SAs not as expected after {timeout}s: {sas}\n{_tail(self)}")
            time.sleep(0.05)
        return sas

    def list_sas(self, timeout: float = 10) -> dict[str, dict]:
        """IKE_SA name -> its vici ``list-sa`` entry (state, algorithms, ``child-sas`` {name-id: {...}})."""
        client = _Vici(self.vici, timeout)
        try:
            merged: dict[str, dict] = {}
            for item in client.streamed("list-sas", "list-sa"):
                merged.update(item)
            return merged
        finally:
            client.close()

    def log(self) -> str:
        """charon's file log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def keys(self) -> list[dict]:
        """Key material charon logged (needs ``ike`` and ``chd`` at level 4), oldest first.

        IKE_SAs: ``{"kind": "ike", "SK_d": b, "SK_ai": b, "SK_ar": b, "SK_ei": b, ..., "SK_pr": b}`` (SK_ai
        and SK_ar empty for AEADs). CHILD_SAs, from this daemon's point of view: ``{"kind": "child",
        "name": str, "id": int, "initiator": bool, "spi_in": int, "spi_out": int, "encr_in": b, "encr_out": b,
        "integ_in": b, "integ_out": b}``; for AES-GCM the encryption key is followed by its 4-byte salt
        (RFC 4106 §8.1).
        """
        return parse_keys(self.log())

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM charon and wait (it first sends its peers a Delete); returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# -- configuration -------------------------------------------------------------------------------------------


def strongswan_conf(directory: Path, log_levels: Mapping[str, int]) -> str:
    """The daemon's strongswan.conf: explicit plugin list, file log, vici socket in ``directory``."""
    levels = "\n".join(f"            {subsystem} = {level}" for subsystem, level in log_levels.items())
    return f"""charon {{
    load_modular = no
    load = {PLUGINS}
    filelog {{
        charon {{
            path = {directory / "charon.log"}
            time_format = %H:%M:%S
            append = no
            flush_line = yes
{levels}
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{directory / "charon.vici"}
        }}
    }}
}}
"""


def _block(name: str, items: Mapping[str, object], indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}{name} {{"]
    for key, value in items.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += _block(key, value, indent + 4)
        else:
            if isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            lines.append(f"{pad}    {key} = {value}")
    lines.append(f"{pad}}}")
    return lines


def swanctl_conn(
    name: str,
    *,
    local_addrs: str | list[str],
    remote_addrs: str | list[str],
    local_id: str,
    remote_id: str,
    local_ts: str | list[str],
    remote_ts: str | list[str],
    auth: str = "psk",
    psk: bytes | None = None,
    proposals: str = "default",
    esp_proposals: str = "default",
    mode: str = "tunnel",
    start_action: str = "none",
    dpd_delay: int | None = None,
    certs: str | list[str] | None = None,
    cacerts: str | list[str] | None = None,
    child: str = "net",
    rekey_time: str | None = None,
    life_time: str | None = None,
    encap: bool = False,
) -> str:
    """swanctl.conf text for one connection ``name`` with one child ``child``.

    ``auth`` is ``psk`` (then ``psk`` is the shared secret and a ``secrets`` block for the two identities is
    included) or ``pubkey`` (then ``certs`` names our certificate files in x509/, ``cacerts`` the files in
    x509ca/ the peer's certificate must chain to, and charon finds the private key in private/ by matching the
    certificate's public key). Several of these texts concatenated form one
    swanctl.conf: strongSwan merges sections of the same name.
    """
    if auth == "psk" and psk is None:
        raise ValueError("auth = psk needs psk")
    child_conf = {
        "local_ts": local_ts,
        "remote_ts": remote_ts,
        "mode": mode,
        "esp_proposals": esp_proposals,
        "start_action": start_action,
        "rekey_time": rekey_time,
        "life_time": life_time,
        "dpd_action": "clear" if dpd_delay else None,
    }
    conn = {
        "version": 2,
        "local_addrs": local_addrs,
        "remote_addrs": remote_addrs,
        "proposals": proposals,
        "encap": "yes" if encap else None,
        "dpd_delay": f"{dpd_delay}s" if dpd_delay else None,
        "local": {"auth": auth, "id": f'"{local_id}"', "certs": certs},
        "remote": {"auth": auth, "id": f'"{remote_id}"', "cacerts": cacerts},
        "children": {child: child_conf},
    }
    lines = ["connections {", *_block(name, conn, 4), "}"]
    if auth == "psk":
        secret = {"id-local": f'"{local_id}"', "id-remote": f'"{remote_id}"', "secret": "0x" + psk.hex()}
        lines += ["secrets {", *_block(f"ike-{name}", secret, 4), "}"]
    return "\n".join(lines) + "\n"


# -- starting ------------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _credential_path(swanctl_dir: Path, relpath: str, allowed: tuple[str, ...]) -> Path:
    parts = Path(relpath).parts
    if len(parts) != 2 or parts[0] not in allowed:
        raise ValueError(f"{relpath!r}: expected <dir>/<file> with <dir> one of {', '.join(allowed)}")
    return swanctl_dir / relpath


def start_charon(
    lab,
    node: str,
    swanctl_conf: str,
    *,
    secrets: Mapping[str, bytes] | None = None,
    certs: Mapping[str, bytes] | None = None,
    log_level: Mapping[str, int] = DEFAULT_LOG_LEVELS,
    load: bool = True,
    timeout: float = 15,
) -> SwanPeer:
    """Start charon in ``node``'s namespace, wait until its vici socket answers, load the config if ``load``.

    ``certs`` maps ``x509/NAME`` or ``x509ca/NAME`` to PEM bytes, ``secrets`` maps ``private/NAME`` (or
    ecdsa/, rsa/, pkcs8/) to PEM private keys, written 0600. The process is tracked by ``lab``: its teardown
    kills it even if `SwanPeer.stop` is never called.
    """
    directory = lab._tmpdir() / f"swan-{node}"
    swanctl_dir = directory / "swanctl"
    for sub in (*CERT_DIRS, *KEY_DIRS, *OTHER_DIRS):
        (swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
    (directory / "run").mkdir(exist_ok=True)
    _write(directory / "strongswan.conf", strongswan_conf(directory, log_level))
    _write(swanctl_dir / "swanctl.conf", swanctl_conf, 0o600)
    for relpath, pem in (certs or {}).items():
        _write(_credential_path(swanctl_dir, relpath, CERT_DIRS), pem)
    for relpath, pem in (secrets or {}).items():
        _write(_credential_path(swanctl_dir, relpath, KEY_DIRS), pem, 0o600)

    # unshare -m: a mount namespace of its own (util-linux makes propagation private), so the bind mount of
    # run/ over /run (for the compiled-in /var/run/charon.pid) is seen by this charon only.
    script = f'mount --bind "{directory / "run"}" /run && exec "{CHARON}"'
    out = open(directory / "charon.out", "wb")  # noqa: SIM115 - charon's stdout/stderr for its lifetime
    try:
        proc = lab.popen(node, "unshare", "-m", "--propagation", "private", "sh", "-c", script,
                         env={**os.environ, "STRONGSWAN_CONF": str(directory / "strongswan.conf")},
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
    peer = SwanPeer(node, directory, str(directory / "charon.vici"), proc)
    try:
        _wait_ready(peer, timeout)
        if load:
            peer.load()
    except BaseException:
        peer.stop()
        raise
    return peer


def _wait_ready(peer: SwanPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if peer.proc is not None and peer.proc.poll() is not None:
            raise SwanError(f"{peer.node}: charon exited with {peer.proc.returncode}:\n{_tail(peer)}")
        with contextlib.suppress(OSError):
            client = _Vici(peer.vici, 2.0)
            client.close()
            if peer.swanctl("--stats", check=False, timeout=5).returncode == 0:
                return
        if time.monotonic() > deadline:
            raise SwanError(f"{peer.node}: charon's vici socket did not answer in {timeout}s:\n{_tail(peer)}")
        time.sleep(0.05)


def _tail(peer: SwanPeer, lines: int = 30) -> str:
    text = (peer.dir / "charon.out").read_text(errors="replace") + peer.log()
    return "\n".join(text.splitlines()[-lines:])
