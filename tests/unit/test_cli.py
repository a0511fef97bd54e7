"""The `xdpsec` command against a fake gateway: a real ControlServer whose handlers return canned results of
the shapes the coordinator returns. Human output is compared whole where its layout is the point."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest

from xdpsec import __version__, fmt
from xdpsec.cli import main
from xdpsec.control import ControlError, ControlServer

SAS = [
    {"index": 1, "name": "site/net", "direction": "out", "protocol": "esp", "mode": "tunnel",
     "spi": "0x00001001", "local": "192.0.2.1", "remote": "192.0.2.2", "encap": None,
     "transform": "aes128gcm16", "worker": 0, "packets": 1234567, "bytes": 1580245760,
     "drops": {"seq_exhausted": 0}, "seq": 1234568},
    {"index": 2, "name": "site/net", "direction": "in", "protocol": "esp", "mode": "tunnel",
     "spi": "0x00002001", "local": "192.0.2.1", "remote": "192.0.2.2", "encap": None,
     "transform": "aes128gcm16", "worker": 1, "packets": 987, "bytes": 123456,
     "drops": {"replay": 3, "auth_failed": 12}, "replay_window": 64},
    {"index": 3, "name": "road/dc", "direction": "out", "protocol": "ah", "mode": "transport",
     "spi": "0xc0ffee01", "local": "2001:db8::1", "remote": "2001:db8::2", "encap": "4500->4500",
     "transform": "hmac_sha256_128", "worker": 1, "packets": 0, "bytes": 0, "drops": {}, "seq": 1},
]  # fmt: skip
POLICIES = [
    {"id": 2, "name": "site/net", "direction": "in", "action": "discard", "priority": 1000,
     "src": "203.0.113.0/24", "dst": "198.51.100.0/25", "proto": "any", "sports": "any", "dports": "any",
     "sa": None, "hits": 5},
    {"id": 1, "name": "site/net", "direction": "out", "action": "protect", "priority": 1000,
     "src": "198.51.100.0/25", "dst": "203.0.113.0/24", "proto": 6, "sports": "any", "dports": "1000-2000",
     "sa": 1, "hits": 1234567},
    {"id": 3, "name": "ike", "direction": "out", "action": "bypass", "priority": 10, "src": "0.0.0.0/0",
     "dst": "0.0.0.0/0", "proto": 17, "sports": "500", "dports": "500", "sa": None, "hits": 0},
]  # fmt: skip
STATS = {
    "workers": [
        {"id": 1, "pid": 4250, "alive": False, "restarts": 2, "rx": 10, "tx": 9, "handoff_in": 617,
         "handoff_out": 0, "drops": {"replay": 3, "tx_full": 1, "auth_failed": 0}, "loop": {}},
        {"id": 0, "pid": 4242, "alive": True, "restarts": 0, "rx": 1234567, "tx": 1234560, "handoff_in": 0,
         "handoff_out": 617, "drops": {"tx_full": 7},
         "loop": {"rounds": 912345, "busy_rounds": 40000, "frames": 1235184, "kicks": 39000,
                  "kick_frames": 1234553, "sleeps": 5123}},
    ],
    "xdp": {"stats": {"rx": 2469134, "pass": 12, "ike": 4, "protect": 1234567, "drop": 20},
            "drops": {"policy_discard": 20, "replay": 0}},
    "ike": {"malformed": 3, "cookie_sent": 1500, "unknown_spi": 0},
    "limits": {"sas_per_worker": 2, "pending_acquires": 0},
}  # fmt: skip
STATUS = {
    "instance": "gwA",
    "config": "/etc/xdpsec/gwA.toml",
    "uptime": 273845.7,
    "reloads": 1,
    "interfaces": [
        {"name": "lan0", "xdp_mode": "native", "queues": 2},
        {"name": "wan0", "xdp_mode": "generic", "queues": 1},
    ],
    "workers": [{"id": 0, "pid": 4242, "alive": True, "restarts": 0},
                {"id": 1, "pid": 4250, "alive": False, "restarts": 2}],
    "connections": [
        {"name": "site", "keying": "ike", "local": ["192.0.2.1"], "remote": ["192.0.2.2"], "state": "up",
         "children": [{"name": "net", "state": "installed", "mode": "tunnel", "out_spi": "0x00001001",
                       "in_spi": "0x00002001"}, {"name": "web", "state": "down"}]},
        {"name": "road", "keying": "manual", "local": ["2001:db8::1"], "remote": [], "state": "down",
         "children": [{"name": "dc", "state": "down"}]},
        {"name": "shunts", "keying": "manual", "local": [], "remote": [], "state": "shunt",
         "children": [{"name": "clear", "state": "pass"}]},
    ],
    "sas": 3,
    "policies": 3,
    "top_drops": [{"reason": "policy_discard", "count": 20}, {"reason": "tx_full", "count": 8}],
}  # fmt: skip
RELOAD = {
    "applied": True, "file": "/etc/xdpsec/gwA.toml",
    "manual": {"added": ["lab/three"], "removed": ["lab/two"], "changed": [], "unchanged": ["lab/net"]},
    "ike": {"added": [], "removed": [], "changed": ["site"], "unchanged": []},
    "policies_changed": True, "live": ["default_action"],
    "restart_needed": ["gateway.workers: 2 -> 4 needs a restart; still running with 2"], "warnings": [],
}  # fmt: skip
RESULTS = {"sas": SAS, "policies": POLICIES, "stats": STATS, "status": STATUS, "reload": RELOAD}


@pytest.fixture
def gateway():
    """A fake gateway; returns (socket path, results dict the handlers read, so a test can change them)."""
    d = Path(tempfile.mkdtemp(prefix="xst-cli-", dir="/tmp"))
    results = dict(RESULTS)

    def handler(cmd):
        def handle(args):
            value = results[cmd]
            if isinstance(value, Exception):
                raise value
            return value

        return handle

    server = ControlServer(d / "gw.sock", {cmd: handler(cmd) for cmd in RESULTS})
    server.start()
    try:
        yield server.path, results
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- human output ------------------------------------------------------------------------------------------


def test_sas_grouped_by_child_like_swanctl(gateway, capsys):
    path, _ = gateway
    code, out, err = run(capsys, "sas", "-s", str(path))
    assert (code, err) == (0, "")
    assert out == (
        "road/dc: ah transport hmac_sha256_128, 2001:db8::1 <-> 2001:db8::2, udp 4500->4500\n"
        "  #3  out  0xc0ffee01  worker 1          0 packets              0 bytes  seq 1\n"
        "site/net: esp tunnel aes128gcm16, 192.0.2.1 <-> 192.0.2.2\n"
        "  #2  in   0x00002001  worker 1        987 packets        123,456 bytes  window 64"
        "      drops: auth_failed 12, replay 3\n"
        "  #1  out  0x00001001  worker 0  1,234,567 packets  1,580,245,760 bytes  seq 1,234,568\n"
    )


def test_policies_in_evaluation_order(gateway, capsys):
    path, _ = gateway
    code, out, err = run(capsys, "policies", "-s", str(path))
    assert (code, err) == (0, "")
    assert out == (
        "ID  NAME      DIR  PRIO  ACTION   SRC              DST              PROTO  SPORT  DPORT      SA       HITS\n"
        " 3  ike       out    10  bypass   0.0.0.0/0        0.0.0.0/0        udp    500    500        -           0\n"
        " 1  site/net  out  1000  protect  198.51.100.0/25  203.0.113.0/24   tcp    any    1000-2000  #1  1,234,567\n"
        " 2  site/net  in   1000  discard  203.0.113.0/24   198.51.100.0/25  any    any    any        -           5\n"
    )


def test_stats_workers_counters_and_drops_by_reason(gateway, capsys):
    path, _ = gateway
    code, out, err = run(capsys, "stats", "-s", str(path))
    assert (code, err) == (0, "")
    workers, loop, counters, drops, ike, limits = out.rstrip("\n").split("\n\n")
    assert workers.splitlines() == [
        "WORKER   PID  STATE  RESTARTS         RX         TX  HANDOFF IN  HANDOFF OUT  DROPS",
        "     0  4242  up            0  1,234,567  1,234,560           0          617      7",
        "     1  4250  DEAD          2         10          9         617            0      4",
    ]
    # Mean rx batch 1,235,184 / 40,000 = 30.88 frames per busy round, tx batch 1,234,553 / 39,000 = 31.66 per
    # kick; the dead worker answered nothing.
    assert loop.splitlines() == [
        "WORKER   ROUNDS    BUSY  FRAMES/BUSY   KICKS  FRAMES/KICK  SLEEPS",
        "     0  912,345  40,000         30.9  39,000         31.7   5,123",
        "     1        -       -            -       -            -       -",
    ]
    assert counters.splitlines()[1:] == [
        "rx              2,469,134",
        "pass                   12",
        "ike                     4",
        "protect         1,234,567",
        "drop                   20",
    ]
    # Largest total first; reasons that dropped nothing anywhere are left out.
    assert drops.splitlines() == [
        "DROP REASON     XDP  W0  W1  TOTAL",
        "policy_discard   20   0   0     20",
        "tx_full           0   7   1      8",
        "replay            0   0   3      3",
    ]
    # The IKE core's counters and the bounds that were reached, zeroes left out.
    assert ike.splitlines() == ["IKE", "cookie_sent  1,500", "malformed        3"]
    assert limits.splitlines() == ["LIMITS REACHED", "sas_per_worker  2"]


def test_stats_from_a_gateway_without_loop_counters(gateway, capsys):
    """An older gateway's answer has no `loop`: no batch table, the rest as before."""
    path, results = gateway
    results["stats"] = {**STATS, "workers": [{k: v for k, v in w.items() if k != "loop"} for w in STATS["workers"]]}
    code, out, err = run(capsys, "stats", "-s", str(path))
    assert (code, err) == (0, "")
    assert "FRAMES/BUSY" not in out and out.startswith("WORKER   PID") and len(out.split("\n\n")) == 5


@pytest.mark.parametrize("n,d,text", [(0, 0, "-"), (5, 0, "-"), (0, 7, "0.0"), (64, 1, "64.0"), (1, 3, "0.3"),
                                      (2, 3, "0.7"), (1235184, 40000, "30.9"), (10**12, 1, "1000000000000.0")])
def test_ratio(n, d, text):
    assert fmt.ratio(n, d) == text


def test_status_is_one_screen(gateway, capsys):
    path, _ = gateway
    code, out, err = run(capsys, "status", "-s", str(path))
    assert (code, err) == (0, "")
    summary, interfaces, connections = out.rstrip("\n").split("\n\n")
    assert summary.splitlines() == [
        "instance   gwA",
        "config     /etc/xdpsec/gwA.toml",
        "uptime     3d 4h, 1 reload(s)",
        "workers    1 of 2 up (W1 dead), 2 restarts",
        "SAs        3",
        "policies   3",
        "top drops  policy_discard 20, tx_full 8",
    ]
    assert interfaces.splitlines() == ["INTERFACE  XDP      QUEUES", "lan0       native        2",
                                       "wan0       generic       1"]
    # One row per child, the connection's columns on its first child only; an absent peer is %any.
    assert connections.splitlines() == [
        "CONNECTION  KEYING  STATE  PEER       CHILD  CHILD STATE  OUT SPI     IN SPI",
        "site        ike     up     192.0.2.2  net    installed    0x00001001  0x00002001",
        "                                      web    down",
        "road        manual  down   %any       dc     down",
        "shunts      manual  shunt  %any       clear  pass",
    ]
    assert len(out.splitlines()) < 25  # fits a terminal


@pytest.mark.parametrize(
    "cmd, empty, expected",
    [
        ("sas", [], "no SAs installed\n"),
        ("policies", [], "no policies installed\n"),
        (
            "stats",
            {"workers": [], "xdp": {"stats": {}, "drops": {}}},
            "no workers\n\nXDP CLASSIFIER\n\nno drops\n",
        ),
    ],
)
def test_empty_results_say_so(gateway, capsys, cmd, empty, expected):
    path, results = gateway
    results[cmd] = empty
    assert run(capsys, cmd, "-s", str(path)) == (0, expected, "")


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m"), (86399, "23h 59m"), (90061, "1d 1h")],
)
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


def test_columns_stay_aligned_with_wide_cells():
    lines = fmt.align([["A", "N"], ["much-wider-cell", "1"], ["x", "1,000,000"]], right=(1,))
    assert lines == ["A                        N", "much-wider-cell          1", "x                1,000,000"]
    assert len({len(line) for line in lines}) == 1


# -- --json ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", sorted(set(RESULTS) - {"reload"}))
def test_json_is_exactly_the_gateways_result(gateway, capsys, cmd):
    path, _ = gateway
    code, out, err = run(capsys, cmd, "-s", str(path), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == RESULTS[cmd]


# -- errors and exit codes ---------------------------------------------------------------------------------


def test_gateway_error_exits_1_with_its_message(gateway, capsys):
    path, results = gateway
    results["sas"] = ControlError("SAD not loaded yet")
    assert run(capsys, "sas", "-s", str(path)) == (1, "", "xdpsec: SAD not loaded yet\n")


def test_gateway_bug_exits_1_without_traceback(gateway, capsys):
    path, results = gateway
    results["status"] = RuntimeError("boom")
    code, out, err = run(capsys, "status", "-s", str(path))
    assert (code, out, err) == (1, "", "xdpsec: internal error: RuntimeError: boom\n")


def test_answer_of_another_shape_exits_1_and_suggests_json(gateway, capsys):
    path, results = gateway
    results["sas"] = [{"index": 1}]  # e.g. a gateway of another version
    code, out, err = run(capsys, "sas", "-s", str(path))
    assert (code, out) == (1, "")
    assert err.startswith("xdpsec: sas: cannot display the gateway's answer (KeyError: ")
    assert err.endswith("; try --json\n") and err.count("\n") == 1
    assert run(capsys, "sas", "-s", str(path), "--json") == (0, '[\n  {\n    "index": 1\n  }\n]\n', "")


def test_no_gateway_exits_3_with_one_line(capsys):
    name = f"xst-cli-absent-{os.getpid()}"
    code, out, err = run(capsys, "status", "-i", name)
    assert (code, out) == (3, "")
    assert err == (
        f"xdpsec: no gateway running for instance '{name}' (no /run/xdpsec/{name}.sock); "
        "start it with `xdpsec run -c FILE`\n"
    )
    assert "Traceback" not in err


def test_socket_option_overrides_instance(gateway, capsys):
    path, _ = gateway
    code, _out, err = run(capsys, "status", "-i", f"xst-cli-absent-{os.getpid()}", "-s", str(path))
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["run"], ["check"], ["sas", "-i", "../etc/passwd"], ["sas", "--bogus"]],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert "error:" in err and "Traceback" not in err


def test_help_documents_exit_codes(capsys):
    code, out, _err = run(capsys, "--help")
    assert code == 0
    for line in ("0  ok", "1  the gateway answered with an error", "2  usage or configuration error",
                 "3  no gateway reachable"):  # fmt: skip
        assert line in out


def test_version_of_this_xdpsec(capsys):
    code, out, _ = run(capsys, "version", "--json")
    assert code == 0 and json.loads(out)["xdpsec"] == __version__


def test_version_prints_every_component(capsys, monkeypatch):
    fake = types.ModuleType("xdpsec.version")
    fake.versions = lambda: {"xdpsec": "1.2.3", "kernel": "6.18.0", "cryptography": "50.0"}
    monkeypatch.setitem(sys.modules, "xdpsec.version", fake)
    code, out, _ = run(capsys, "version")
    assert (code, out) == (0, "xdpsec        1.2.3\nkernel        6.18.0\ncryptography  50.0\n")
    code, out, _ = run(capsys, "version", "--json")
    assert json.loads(out) == fake.versions()


# -- run and check delegate --------------------------------------------------------------------------------


@pytest.fixture
def own_logging():
    """`run` sets up logging on the root logger (to the captured stderr): put everything back afterwards."""
    root = logging.getLogger()
    handlers, levels = root.handlers[:], {name: logging.getLogger(name).level for name in ("", "xdpsec")}
    yield
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_run_of_a_malformed_config_is_exit_2_without_traceback(capsys, tmp_path, own_logging):
    bad = tmp_path / "gw.toml"
    bad.write_text('instance = "gw"\n[gateway]\ninterfaces = ["eth0"]\nworkers = "two"\n')
    code, out, err = run(capsys, "run", "-c", str(bad))
    assert (code, out) == (2, "")
    assert err.startswith(f"{bad}:4: gateway.workers: ") and "Traceback" not in err


def test_run_hands_its_arguments_to_the_coordinator(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("xdpsec.coordinator")
    fake.run_main = lambda args: seen.append(args) or 0
    monkeypatch.setitem(sys.modules, "xdpsec.coordinator", fake)
    assert run(capsys, "run", "-c", "gw.toml", "--log-level", "debug") == (0, "", "")
    assert (seen[0].config, seen[0].log_level) == (Path("gw.toml"), "debug")


def test_run_without_bcc_is_one_line(capsys, monkeypatch):
    for mod in ("xdpsec.coordinator", "xdpsec.io.bpf"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setitem(sys.modules, "bcc", None)  # import fails as on a machine without python3-bpfcc
    code, out, err = run(capsys, "run", "-c", "gw.toml")
    assert (code, out) == (2, "")
    assert err.startswith("xdpsec: run: bcc is not installed") and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, passed", [(["-c", "gw.toml"], ["-c", "gw.toml"]), (["--json", "-c", "x"], ["-c", "x", "--json"])]
)
def test_check_hands_its_arguments_to_config(capsys, monkeypatch, argv, passed):
    seen = []
    fake = types.ModuleType("xdpsec.config")
    fake.check_main = lambda a: seen.append(a) or 2
    monkeypatch.setitem(sys.modules, "xdpsec.config", fake)
    assert run(capsys, "check", *argv)[0] == 2  # check_main's exit code is the command's
    assert seen == [passed]


# -- IKE commands ------------------------------------------------------------------------------------------


@pytest.fixture
def ike_gateway():
    """A fake gateway that records the arguments of initiate/terminate and knows one connection."""
    d = Path(tempfile.mkdtemp(prefix="xst-cli-", dir="/tmp"))
    seen: list[tuple[str, dict]] = []

    def action(cmd):
        def handle(args):
            seen.append((cmd, args))
            if args.get("conn") != "site":
                raise ControlError(f"unknown connection {args.get('conn')!r} (configured: site)")
            return {"ok": cmd}
        return handle

    ike = [{"conn": "site", "state": "established", "peer": "192.0.2.2:4500", "children": ["net"]}]
    server = ControlServer(d / "gw.sock", {"initiate": action("initiate"), "terminate": action("terminate"),
                                           "rekey": action("rekey"), "ike-sas": lambda _a: ike})
    server.start()
    try:
        yield server.path, seen
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_initiate_and_terminate_pass_connection_and_child(capsys, ike_gateway):
    path, seen = ike_gateway
    code, out, _ = run(capsys, "initiate", "-s", str(path), "site", "net")
    assert code == 0 and "initiate site/net: requested" in out
    code, _, _ = run(capsys, "terminate", "-s", str(path), "site")
    assert code == 0
    assert seen == [("initiate", {"conn": "site", "child": "net"}), ("terminate", {"conn": "site"})]


def test_initiate_unknown_connection_is_one_line_exit_1(capsys, ike_gateway):
    path, _ = ike_gateway
    code, out, err = run(capsys, "initiate", "-s", str(path), "nope")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "unknown connection 'nope'" in err


def test_ike_sas_table_and_json(capsys, ike_gateway):
    path, _ = ike_gateway
    code, out, _ = run(capsys, "ike-sas", "-s", str(path))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["CONN", "STATE", "PEER", "CHILDREN"]
    assert row.split() == ["site", "established", "192.0.2.2:4500", "net"]
    code, out, _ = run(capsys, "ike-sas", "-s", str(path), "--json")
    assert json.loads(out)[0]["state"] == "established"


@pytest.mark.parametrize(
    "argv, request_args, said",
    [
        (["site"], {"conn": "site"}, "rekey site: requested"),
        (["site", "--child", "net"], {"conn": "site", "child": "net"}, "rekey site/net: requested"),
        (["site", "--ike"], {"conn": "site", "ike": True}, "rekey site (IKE SA): requested"),
    ],
)
def test_rekey_passes_child_or_ike(capsys, ike_gateway, argv, request_args, said):
    path, seen = ike_gateway
    code, out, err = run(capsys, "rekey", "-s", str(path), *argv)
    assert (code, err) == (0, "") and out.startswith(said)
    assert seen == [("rekey", request_args)]


def test_rekey_child_and_ike_together_is_a_usage_error(capsys, ike_gateway):
    path, seen = ike_gateway
    code, _out, err = run(capsys, "rekey", "-s", str(path), "site", "--child", "net", "--ike")
    assert code == 2 and "not allowed with argument" in err and seen == []


@pytest.mark.parametrize("cmd", [["initiate", "nope"], ["terminate", "nope"], ["rekey", "nope"],
                                 ["rekey", "nope", "--ike"]])
def test_unknown_connection_is_one_line_exit_1(capsys, ike_gateway, cmd):
    path, _ = ike_gateway
    code, out, err = run(capsys, cmd[0], "-s", str(path), *cmd[1:])
    assert (code, out) == (1, "")
    assert err == "xdpsec: unknown connection 'nope' (configured: site)\n"


# -- every gateway command when there is no gateway, or no permission -------------------------------------

GATEWAY_COMMANDS = [["status"], ["sas"], ["ike-sas"], ["policies"], ["stats"], ["initiate", "site"],
                    ["terminate", "site"], ["rekey", "site"], ["reload"], ["top", "--count", "1"]]


@pytest.mark.parametrize("cmd", GATEWAY_COMMANDS, ids=lambda c: c[0])
def test_every_command_without_a_gateway_is_one_line_exit_3(capsys, cmd):
    name = f"xst-cli-absent-{os.getpid()}"
    code, out, err = run(capsys, cmd[0], "-i", name, *cmd[1:])
    assert (code, out) == (3, "")
    assert err.startswith(f"xdpsec: no gateway running for instance '{name}'") and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.parametrize("cmd", GATEWAY_COMMANDS, ids=lambda c: c[0])
def test_every_command_without_permission_is_one_line_exit_3(gateway, cmd):
    path, _ = gateway
    os.chmod(path.parent, 0o755)  # the directory is open; the socket's own 0600 keeps others out
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, run the command with stderr into the pipe
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.dup2(wfd, 2)
            sys.stderr = os.fdopen(2, "w")
            code = main([cmd[0], "-s", str(path), *cmd[1:]])
            sys.stderr.flush()
        finally:
            os._exit(locals().get("code", 99))
    os.close(wfd)
    with os.fdopen(rfd) as r:
        err = r.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert err == (f"xdpsec: permission denied on {path}: the control socket is root's only; "
                   "run xdpsec as root\n")


# -- reload ------------------------------------------------------------------------------------------------


def test_reload_reports_what_changed_and_warns_about_restarts(gateway, capsys):
    path, _ = gateway
    code, out, err = run(capsys, "reload", "-s", str(path))
    assert code == 0
    assert out == (
        "reloaded /etc/xdpsec/gwA.toml\n"
        "manual children  added lab/three; removed lab/two; 1 unchanged\n"
        "IKE connections  changed site\n"
        "policies         replaced\n"
        "applied live     default_action\n"
    )
    assert err == "xdpsec: warning: gateway.workers: 2 -> 4 needs a restart; still running with 2\n"
    code, out, _ = run(capsys, "reload", "-s", str(path), "--json")
    assert code == 0 and json.loads(out) == RELOAD


def test_reload_of_a_malformed_config_lists_the_errors_and_exits_2(gateway, capsys):
    path, results = gateway
    results["reload"] = {"applied": False, "file": "/etc/xdpsec/gwA.toml", "warnings": [],
                         "errors": ["/etc/xdpsec/gwA.toml:3: gateway.workers: expected an integer, got a string",
                                    "/etc/xdpsec/gwA.toml:9: connections.x.esp_proposals: unknown algorithm"]}
    code, out, err = run(capsys, "reload", "-s", str(path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [*results["reload"]["errors"], "xdpsec: reload: /etc/xdpsec/gwA.toml has 2 "
                                "error(s); the gateway keeps running the previous configuration"]
    code, out, _ = run(capsys, "reload", "-s", str(path), "--json")
    assert code == 2 and json.loads(out)["errors"] == results["reload"]["errors"]


# -- top ---------------------------------------------------------------------------------------------------


@pytest.fixture
def counting_gateway():
    """A fake gateway whose counters grow by a fixed amount per query: 1000 packets of 100 bytes on SA #1,
    3 replay drops on SA #2, worker 0 rx/tx 1000, and worker 1 restarted (new pid, counters from zero)."""
    d = Path(tempfile.mkdtemp(prefix="xst-cli-", dir="/tmp"))
    polls = {"sas": 0, "stats": 0}

    def sas(_args):
        n = polls["sas"] = polls["sas"] + 1
        return [{**SAS[0], "packets": 1000 * n, "bytes": 100_000 * n, "drops": {}},
                {**SAS[1], "packets": 5, "bytes": 500, "drops": {"replay": 3 * n}}]

    def stats(_args):
        n = polls["stats"] = polls["stats"] + 1
        return {"workers": [{**STATS["workers"][1], "id": 0, "alive": True, "rx": 1000 * n, "tx": 1000 * n,
                             "drops": {}},
                            {**STATS["workers"][0], "id": 1, "pid": 4000 + n, "rx": 7, "drops": {}}],
                "xdp": {"stats": {"rx": 2000 * n}, "drops": {"policy_discard": 2 * n}}}

    server = ControlServer(d / "gw.sock", {"sas": sas, "stats": stats})
    server.start()
    try:
        yield server.path
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_top_json_one_object_per_refresh_with_rates(counting_gateway, capsys):
    code, out, err = run(capsys, "top", "-s", str(counting_gateway), "--interval", "0.05", "--count", "3",
                         "--json")
    assert (code, err) == (0, "")
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 3
    for frame in frames:
        seconds = frame["interval"]
        assert 0.05 <= seconds < 5  # at least the interval; a loaded machine may take longer
        busiest, other = frame["sas"]  # busiest first
        assert busiest["index"] == 1 and busiest["pps"] == pytest.approx(1000 / seconds, rel=0.01)
        assert busiest["bps"] == pytest.approx(8 * 100_000 / seconds, rel=0.01)
        assert other["pps"] == 0 and other["drops"]["replay"] == pytest.approx(3 / seconds, rel=0.01)
        w0, w1 = frame["workers"]
        assert w0["rx_pps"] == pytest.approx(1000 / seconds, rel=0.01)
        assert w1["rx_pps"] == pytest.approx(7 / seconds, rel=0.01)  # restarted: counted from zero
        assert frame["xdp"]["drops"]["policy_discard"] == pytest.approx(2 / seconds, rel=0.01)


def test_top_redraws_in_place_on_a_terminal(counting_gateway, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run(capsys, "top", "-s", str(counting_gateway), "--interval", "0.05", "--count", "2")
    assert code == 0
    frames = out.split("\x1b[H")[1:]  # each frame starts at the top left...
    assert len(frames) == 2 and all(f.endswith("\x1b[J") for f in frames)  # ...and erases what was below
    lines = frames[-1].split("\x1b[K\n")
    assert lines[0].startswith(f"xdpsec top: {counting_gateway}, every 0.05 s")
    sa_header, busiest = lines[2].split(), lines[3].split()
    assert sa_header == ["SA", "NAME", "DIR", "SPI", "WORKER", "PACKETS", "BITS", "DROPS"]
    assert busiest[:5] == ["#1", "site/net", "out", "0x00001001", "0"] and busiest[6] == "kpps"


def test_top_without_a_terminal_prints_frames_one_after_another(counting_gateway, capsys):
    code, out, _ = run(capsys, "top", "-s", str(counting_gateway), "--interval", "0.05", "--count", "2")
    assert code == 0 and "\x1b" not in out and out.count("xdpsec top:") == 2


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--interval", "x"], ["--count", "0"]])
def test_top_bad_options_exit_2(capsys, argv):
    code, _out, err = run(capsys, "top", *argv)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize(
    "value, text", [(0, "0 pps"), (950, "950 pps"), (1234, "1.23 kpps"), (12_345_678, "12.3 Mpps"), (2.5e9, "2.5 Gpps")]
)
def test_rates_with_si_prefixes(value, text):
    assert fmt.rate(value, "pps") == text
