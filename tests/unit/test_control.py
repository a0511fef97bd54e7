"""The control socket, against a real ControlServer on a private temporary path.

Every server here listens in its own directory under /tmp (short, because a unix socket path is limited to
108 bytes), never in /run/xdpsec. Client errors are checked for their exact text where a user reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from xdpsec import control
from xdpsec.control import (
    MAX_REQUEST,
    ControlClient,
    ControlError,
    ControlServer,
    RemoteError,
    Unreachable,
    request,
    socket_path,
)


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(prefix="xst-ctl-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _refuse(args):
    raise ControlError(f"no SA with index {args.get('index')}")


def _crash(args):
    return 1 // 0


HANDLERS = {
    "echo": lambda args: {"you said": args},
    "refuse": _refuse,
    "crash": _crash,
    "unserializable": lambda args: {1, 2},
}


@pytest.fixture
def server(sockdir):
    srv = ControlServer(sockdir / "gw.sock", HANDLERS)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _raw(path: Path, data: bytes, *, answers: int = 1, rest: bool = False) -> tuple[list[dict], bytes | None]:
    """Send raw bytes; return the first `answers` decoded lines and, if `rest`, what followed them: b"" if the
    server closed the connection, b"<still open>" if it kept it open."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(path))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading (oversized line); what it answered is still readable
        with s.makefile("rb") as f:
            lines = [json.loads(f.readline()) for _ in range(answers)]
            if not rest:
                return lines, None
            s.settimeout(0.5)
            try:
                return lines, f.read()
            except TimeoutError:
                return lines, b"<still open>"
            except ConnectionResetError:  # closed with our bytes unread: closed all the same
                return lines, b""


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- protocol --------------------------------------------------------------------------------------------


def test_round_trip_and_several_requests_per_connection(server):
    assert request(server.path, "echo", {"index": 3}) == {"you said": {"index": 3}}
    with ControlClient(server.path) as client:
        assert client.request("echo") == {"you said": {}}
        assert client.request("echo", {"x": [1, 2]}) == {"you said": {"x": [1, 2]}}


def test_wire_format_is_one_json_object_per_line(server):
    lines, rest = _raw(
        server.path, b'{"cmd": "echo", "args": {"a": 1}}\n{"cmd": "refuse"}\n', answers=2, rest=True
    )
    assert lines == [
        {"ok": True, "result": {"you said": {"a": 1}}},
        {"ok": False, "error": "no SA with index None"},
    ]
    assert rest == b"<still open>"  # errors other than an oversized line keep the connection


def test_control_error_becomes_ok_false_with_its_message(server):
    with pytest.raises(RemoteError) as err:
        request(server.path, "refuse", {"index": 7})
    assert str(err.value) == "no SA with index 7"


def test_unexpected_exception_is_internal_error_and_server_survives(server, caplog):
    with ControlClient(server.path) as client:
        with pytest.raises(RemoteError, match=r"^internal error: ZeroDivisionError: integer division"):
            client.request("crash")
        assert client.request("echo") == {"you said": {}}  # same connection still served
    assert request(server.path, "echo") == {"you said": {}}  # and new ones
    assert "ZeroDivisionError" in caplog.text  # logged with its traceback for the operator


def test_unserializable_result_is_internal_error(server):
    with pytest.raises(RemoteError, match="^internal error: TypeError"):
        request(server.path, "unserializable")
    assert request(server.path, "echo") == {"you said": {}}


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"not json\n", "request is not valid JSON"),
        (b"\xff\xfe\n", "request is not valid JSON"),
        (b"\n", "request is not valid JSON"),
        (b"[" * 60000 + b"\n", "request is not valid JSON"),  # deeper than the parser recurses
        (b"[1]\n", "a request is one JSON object per line"),
        (b'{"cmd": 3}\n', "a request is one JSON object per line"),
        (b'{"cmd": "echo", "args": [1]}\n', "echo: args must be a JSON object"),
        (
            b'{"cmd": "nope"}\n',
            "unknown command 'nope'; this gateway knows crash, echo, refuse, unserializable",
        ),
    ],
)
def test_malformed_requests_answered_and_connection_kept(server, line, expected):
    lines, _ = _raw(server.path, line + b'{"cmd": "echo"}\n', answers=2)
    assert lines[0]["ok"] is False
    assert lines[0]["error"].startswith(expected)
    assert lines[1] == {"ok": True, "result": {"you said": {}}}


def test_request_at_the_limit_is_served_one_byte_more_is_refused_and_closed(server):
    body = b'{"cmd": "echo"}'
    exact = body + b" " * (MAX_REQUEST - len(body) - 1) + b"\n"
    assert len(exact) == MAX_REQUEST
    lines, _ = _raw(server.path, exact)
    assert lines == [{"ok": True, "result": {"you said": {}}}]

    over = body + b" " * (MAX_REQUEST - len(body)) + b"\n"
    lines, rest = _raw(server.path, over + b'{"cmd": "echo"}\n', rest=True)
    assert lines[0] == {
        "ok": False,
        "error": f"request longer than {MAX_REQUEST} bytes; closing the connection",
    }
    assert rest == b""  # closed: the request after it is not read
    assert request(server.path, "echo") == {"you said": {}}


def test_max_clients_enforced_and_slots_freed(sockdir):
    with ControlServer(sockdir / "gw.sock", HANDLERS, max_clients=2) as srv:
        first, second = ControlClient(srv.path), ControlClient(srv.path)
        try:
            # A round trip on each proves both are accepted and hold their slots.
            assert first.request("echo") == second.request("echo") == {"you said": {}}
            with pytest.raises(RemoteError, match=r"^too many control clients \(2 connected\); try again$"):
                request(srv.path, "echo")
            assert srv.refused == 1
        finally:
            first.close()
        # The server notices the close and frees the slot.
        _wait_for(lambda: len(srv._clients) == 1)
        assert request(srv.path, "echo") == {"you said": {}}
        second.close()
        assert srv.refused == 1


def test_idle_client_is_disconnected(sockdir):
    with ControlServer(sockdir / "gw.sock", HANDLERS, idle_timeout=0.2) as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(str(srv.path))
            assert s.recv(1) == b""  # closed by the server after 0.2 s of silence
        _wait_for(lambda: not srv._clients)


# -- the socket file ---------------------------------------------------------------------------------------


def test_socket_is_root_only_and_directory_created_0755(sockdir):
    path = sockdir / "run" / "xdpsec" / "gw.sock"
    with ControlServer(path, HANDLERS) as srv:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
        assert request(srv.path, "echo") == {"you said": {}}
        assert sorted(p.name for p in path.parent.iterdir()) == ["gw.sock"]  # no temporary name left
    assert not path.exists()  # stop() removes it


def test_stale_socket_is_replaced(sockdir):
    path = sockdir / "gw.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # what a killed gateway leaves behind: the file, nobody listening
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with ControlServer(path, HANDLERS) as srv:
        assert request(srv.path, "echo") == {"you said": {}}


def test_live_gateway_is_not_replaced(server):
    other = ControlServer(server.path, {"echo": lambda args: "impostor"})
    with pytest.raises(ControlError, match=r"a gateway is already running on .*gw\.sock; stop it first"):
        other.start()
    assert request(server.path, "echo") == {"you said": {}}


def test_file_that_is_not_a_socket_is_left_alone(sockdir):
    path = sockdir / "gw.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(path, HANDLERS).start()
    assert path.read_text() == "precious"


def test_stop_leaves_a_newer_gateways_socket(sockdir):
    path = sockdir / "gw.sock"
    old = ControlServer(path, {"who": lambda args: "old"})
    old.start()
    path.unlink()  # e.g. an operator removed it; a new gateway then starts on the same name
    with ControlServer(path, {"who": lambda args: "new"}):
        old.stop()
        assert request(path, "who") == "new"


def test_server_can_be_stopped_with_clients_connected(sockdir):
    srv = ControlServer(sockdir / "gw.sock", HANDLERS)
    srv.start()
    client = ControlClient(srv.path)
    assert client.request("echo") == {"you said": {}}
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    stopper.join(timeout=5.0)
    assert not stopper.is_alive()
    with pytest.raises(Unreachable, match="closed the connection without answering"):
        client.request("echo")
    client.close()


# -- client errors -----------------------------------------------------------------------------------------


def test_missing_socket_names_instance_and_how_to_start(sockdir):
    with pytest.raises(Unreachable) as err:
        request(socket_path(f"xst-ctl-absent-{os.getpid()}"), "sas")
    assert str(err.value) == (
        f"no gateway running for instance 'xst-ctl-absent-{os.getpid()}' "
        f"(no /run/xdpsec/xst-ctl-absent-{os.getpid()}.sock); start it with `xdpsec run -c FILE`"
    )
    with pytest.raises(Unreachable) as err:
        request(sockdir / "gw.sock", "sas")
    assert str(err.value) == (
        f"no gateway running on {sockdir}/gw.sock (no {sockdir}/gw.sock); start it with `xdpsec run -c FILE`"
    )


def test_stale_socket_is_reported_as_stale(sockdir):
    path = sockdir / "gw.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(Unreachable) as err:
        request(path, "sas")
    assert str(err.value) == (
        f"no gateway running on {path} ({path} is stale, left by a gateway that exited); "
        "start it with `xdpsec run -c FILE`"
    )


def test_silent_gateway_times_out(sockdir):
    path = sockdir / "gw.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # the kernel completes the connection; nobody ever reads or answers
        started = time.monotonic()
        with pytest.raises(Unreachable) as err:
            request(path, "sas", timeout=0.2)
        assert time.monotonic() - started < 2.0
    assert str(err.value) == f"the gateway on {path} did not answer within 0.2 s"


def test_gateway_closing_without_answer(sockdir):
    path = sockdir / "gw.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rude:
        rude.bind(str(path))
        rude.listen(1)

        def hang_up():
            conn, _ = rude.accept()
            conn.recv(100)
            conn.close()

        t = threading.Thread(target=hang_up)
        t.start()
        with pytest.raises(Unreachable, match="closed the connection without answering"):
            request(path, "sas")
        t.join()


@pytest.mark.parametrize("reply", [b"garbage\n", b'{"result": 1}\n', b'{"ok": true, "result": 1}'])
def test_malformed_answer_is_remote_error(sockdir, reply):
    path = sockdir / "gw.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as odd:
        odd.bind(str(path))
        odd.listen(1)

        def answer():
            conn, _ = odd.accept()
            with conn:
                conn.recv(100)
                conn.sendall(reply)

        t = threading.Thread(target=answer)
        t.start()
        with pytest.raises(RemoteError, match="sent an answer that is not a control response"):
            request(path, "sas")
        t.join()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_for_non_root(sockdir):
    path = sockdir / "gw.sock"
    os.chmod(sockdir, 0o755)  # the directory is open; only the socket's own 0600 keeps others out
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(1)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and try
            try:
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                try:
                    request(path, "sas")
                    message = "connected"
                except ControlError as e:
                    message = f"{type(e).__name__}: {e}"
                os.write(wfd, message.encode())
            finally:
                os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            message = r.read().decode()
        os.waitpid(pid, 0)
    assert message == (
        f"Unreachable: permission denied on {path}: the control socket is root's only; run xdpsec as root"
    )


def test_every_client_error_is_one_line():
    errors = [
        control._unreachable(Path("/run/xdpsec/a.sock"), exc, 5.0)
        for exc in (
            FileNotFoundError(2, "No such file or directory"),
            ConnectionRefusedError(111, "Connection refused"),
            PermissionError(13, "Permission denied"),
            TimeoutError("timed out"),
            OSError(36, "File name too long"),
        )
    ]
    assert len({str(e) for e in errors}) == 5
    for e in errors:
        assert "\n" not in str(e)
    assert (
        str(errors[-1])
        == "cannot reach the gateway for instance 'a' (/run/xdpsec/a.sock): File name too long"
    )


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "/abs", "x" * 65, "sp ace", "a\nb", "gw\x00"])
def test_instance_names_cannot_leave_the_run_directory(name):
    with pytest.raises(ValueError, match="bad instance name"):
        socket_path(name)


def test_socket_path():
    assert socket_path("gwA") == Path("/run/xdpsec/gwA.sock")
