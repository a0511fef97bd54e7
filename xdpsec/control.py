"""The control socket: how the `xdpsec` command talks to a running gateway.

The coordinator serves a unix stream socket at /run/xdpsec/<instance>.sock with mode 0600, so only root can
ask it anything. The protocol is JSON lines: a request is one object on one line,
``{"cmd": "sas", "args": {...}}``, and every request gets exactly one line back, ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one clear line"}``. A client may send several requests on one connection. Like
every other input, a request line is bounded (MAX_REQUEST); a longer one is answered with an error and the
connection is closed, since we cannot tell where the next request would start.

Each client is served on its own thread, up to `max_clients`; one more is told so and disconnected. Handlers
are called one at a time (under one lock), so the coordinator's handlers need no locking among themselves.
A handler refuses a request by raising ControlError; any other exception is a bug: it is logged with its
traceback, answered as "internal error: ...", and the server carries on.

The client side turns every way of not reaching a gateway into one line the user can act on (Unreachable)
and a gateway's ``ok: false`` into RemoteError, so the CLI can give them different exit codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/xdpsec")
#: Longest request line, newline included.
MAX_REQUEST = 64 * 1024
#: Longest answer the client reads: a few hundred thousand SAs, and still a bound.
MAX_RESPONSE = 64 * 1024 * 1024
#: A client silent for this long is disconnected, so a forgotten `nc` cannot hold a slot forever.
IDLE_TIMEOUT = 60.0
#: How long start() waits for an existing socket's owner to accept before calling the socket stale.
LIVENESS_TIMEOUT = 1.0

# No '/', and ".sock" is appended: the socket is always a file directly in RUN_DIR. The same rule as the
# `instance` key in xdpsec/config.py, so every name a configuration accepts has a socket.
_INSTANCE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


class ControlError(Exception):
    """A control request failed; str() is one line meant for the user."""


class RemoteError(ControlError):
    """The gateway answered, and the answer was an error (``ok: false``) or unreadable."""


class Unreachable(ControlError):
    """No gateway answered: no socket, a stale one, not allowed to use it, or no answer in time."""


def socket_path(instance: str) -> Path:
    """The control socket of gateway `instance`; ValueError for a name that is not a plain file name."""
    if not _INSTANCE_RE.match(instance):
        raise ValueError(f"bad instance name {instance!r}: use 1..64 letters, digits, '_', '.' or '-'")
    return RUN_DIR / f"{instance}.sock"


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "unknown error"


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _error(text: str) -> bytes:
    return _encode({"ok": False, "error": _one_line(text)})


class ControlServer:
    """Serves `handlers` (command name -> callable(args dict) -> JSON-able result) on a unix socket."""

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Callable[[dict], Any]],
        *,
        max_clients: int = 16,
        idle_timeout: float = IDLE_TIMEOUT,
    ):
        self.path = Path(path)
        self.max_clients = max_clients
        #: Clients turned away because `max_clients` were already connected.
        self.refused = 0
        self._handlers = dict(handlers)
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()  # guards _clients and refused
        self._handler_lock = threading.Lock()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the socket and serve it from a daemon thread. ControlError if that cannot be done."""
        if self._thread is not None:
            raise RuntimeError("control server already started")
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._refuse_live_or_foreign()
            self._listener = self._bind()
        except OSError as e:
            raise ControlError(f"cannot create the control socket {self.path}: {e.strerror or e}") from None
        self._inode = os.stat(self.path).st_ino
        self._wake = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name=f"control:{self.path.name}", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def stop(self) -> None:
        """Stop accepting, disconnect every client, and remove the socket if it is still ours."""
        if self._thread is None:
            return
        self._stopping.set()
        assert self._wake is not None and self._listener is not None
        self._wake[1].send(b"x")
        self._thread.join()
        with self._lock:
            clients = list(self._clients.items())
        for conn, _thread in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the client thread's blocking read
        for _conn, thread in clients:
            thread.join(timeout=5.0)
        self._listener.close()
        for end in self._wake:
            end.close()
        # A newer gateway may have taken the name over since (after deciding ours was stale): leave its socket.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._thread = self._listener = self._wake = None

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _refuse_live_or_foreign(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"{self.path} exists and is not a socket; remove it or use another instance name"
            )
        if _accepts(self.path):
            raise ControlError(
                f"a gateway is already running on {self.path}; stop it first or use another instance name"
            )
        # Nobody listens: a gateway died without cleaning up. _bind() renames over it.
        log.warning("replacing stale control socket %s", self.path)

    def _bind(self) -> socket.socket:
        # Bind under a private name, restrict it, then rename: the public name never points at a socket
        # with looser permissions, and the rename atomically replaces a stale socket.
        tmp = self.path.with_name(f".{os.getpid()}.{self.path.name}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(self.max_clients)
            os.rename(tmp, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return sock

    # -- serving ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None and self._wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _events in sel.select():
                    if key.fileobj is self._listener:
                        self._accept()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _addr = self._listener.accept()
        except OSError:  # the peer gave up between select() and accept()
            return
        with self._lock:
            full = len(self._clients) >= self.max_clients
            if full:
                self.refused += 1
            else:
                thread = threading.Thread(
                    target=self._client, args=(conn,), name="control-client", daemon=True
                )
                self._clients[conn] = thread
        if full:
            log.warning("control: refused a client, %d already connected", self.max_clients)
            with contextlib.suppress(OSError), conn:
                conn.settimeout(1.0)
                conn.sendall(_error(f"too many control clients ({self.max_clients} connected); try again"))
            return
        thread.start()

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self._idle_timeout)
            with conn.makefile("rb") as rfile:
                while line := rfile.readline(MAX_REQUEST):
                    if len(line) == MAX_REQUEST and not line.endswith(b"\n"):
                        conn.sendall(
                            _error(f"request longer than {MAX_REQUEST} bytes; closing the connection")
                        )
                        return
                    conn.sendall(self._answer(line))
        except OSError:  # idle timeout, peer gone, or stop()
            pass
        finally:
            with self._lock:
                self._clients.pop(conn, None)
            conn.close()

    def _answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than the parser goes
            return _error("request is not valid JSON")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error('a request is one JSON object per line: {"cmd": "sas", "args": {}}')
        cmd = request["cmd"]
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return _error(f"{cmd}: args must be a JSON object")
        handler = self._handlers.get(cmd)
        if handler is None:
            return _error(f"unknown command {cmd!r}; this gateway knows {', '.join(sorted(self._handlers))}")
        try:
            with self._handler_lock:
                result = handler(args)
            return _encode({"ok": True, "result": result})
        except ControlError as e:
            return _error(str(e))
        except Exception as e:
            log.exception("control command %r failed", cmd)
            return _error(f"internal error: {type(e).__name__}: {e}")


def _accepts(path: Path) -> bool:
    """Whether a process is listening on the unix socket `path` (False for a stale socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(LIVENESS_TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:  # backlog full: someone is there, just busy
            return True
        return True


# -- client ----------------------------------------------------------------------------------------------


def _whose(path: Path) -> str:
    if path.parent == RUN_DIR and path.suffix == ".sock":
        return f"for instance '{path.stem}'"
    return f"on {path}"


def _unreachable(path: Path, err: OSError, timeout: float) -> Unreachable:
    whose = _whose(path)
    start = "start it with `xdpsec run -c FILE`"
    if isinstance(err, FileNotFoundError):
        return Unreachable(f"no gateway running {whose} (no {path}); {start}")
    if isinstance(err, ConnectionRefusedError):
        return Unreachable(
            f"no gateway running {whose} ({path} is stale, left by a gateway that exited); {start}"
        )
    if isinstance(err, PermissionError):
        return Unreachable(
            f"permission denied on {path}: the control socket is root's only; run xdpsec as root"
        )
    if isinstance(err, TimeoutError):
        return Unreachable(f"the gateway {whose} did not answer within {timeout:g} s")
    return Unreachable(f"cannot reach the gateway {whose} ({path}): {err.strerror or err}")


class ControlClient:
    """One connection to a gateway; several requests may share it. Raises only ControlError subclasses."""

    def __init__(self, path: Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except OSError as e:
            self._sock.close()
            raise _unreachable(self.path, e, timeout) from None
        self._rfile = self._sock.makefile("rb")

    def request(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result; RemoteError for ``ok: false``, Unreachable if no answer."""
        line = _encode({"cmd": cmd, "args": dict(args or {})})
        try:
            self._sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up, perhaps after saying why (too many clients, request too long): read that
        except OSError as e:
            raise _unreachable(self.path, e, self.timeout) from None
        try:
            reply = self._rfile.readline(MAX_RESPONSE)
        except ConnectionResetError:  # closed with our request unread
            reply = b""
        except OSError as e:
            raise _unreachable(self.path, e, self.timeout) from None
        if not reply:
            raise Unreachable(f"the gateway {_whose(self.path)} closed the connection without answering")
        try:
            response = json.loads(reply) if reply.endswith(b"\n") else None
        except (ValueError, RecursionError):
            response = None
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise RemoteError(
                f"the gateway {_whose(self.path)} sent an answer that is not a control response"
            )
        if response["ok"]:
            return response.get("result")
        raise RemoteError(_one_line(response.get("error") or f"{cmd} failed (the gateway gave no reason)"))

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(path: Path, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """One request on a fresh connection: the result, or ControlError (RemoteError / Unreachable)."""
    with ControlClient(path, timeout) as client:
        return client.request(cmd, args)
