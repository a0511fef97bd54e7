"""`xdpsec check` on broken files: every problem at once, each at its exact line, with a hint of what is right.

Each broken file below marks the lines that must be reported with a TOML comment, so the expectation sits next to
the mistake and line numbers are never counted by hand:

    workres = 2        #! gateway.workres: did you mean 'workers'?      an error: key, then a part of the message
    priority = 9       #? connections.x.children.y: never matches        a warning

The test asserts that the problems are exactly the marked ones (no more, no fewer, same lines), which is what
"every problem at once" means, and that each message contains its hint.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_config_ike import HEAD, PSK_CONN
from xdpsec.config import ConfigError, Problem, check_main, load, parse_listen

MARK_RE = re.compile(r"#([!?]) (\S+): ((?:(?!#[!?] ).)*)")  # several on one line: one per problem

# The same gateway and PSK connection as tests/unit/test_config_ike.py, with its secret.
IKE = PSK_CONN + """[secrets]
ike = [{ id = ["gwA.example.org", "gwB.example.org"], secret = "0sYSBwcmUtc2hhcmVkIGtleSBvZiAzMiBieXRlcyEhISE=" }]
"""

C = "connections.site"
NET = "connections.site.children.net"

CASES = {
    "typos everywhere, each with the closest name": HEAD.replace("workers = 1", "workres = 1  #! gateway.workres: "
                                                                 "unknown key; did you mean 'workers'?") + """
[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
dpd_dealy = "30s"                 #! connections.site.dpd_dealy: unknown key; did you mean 'dpd_delay'?
[connections.site.local]
auth = "psk"
id = "gwA.example.org"
[connections.site.remote]
auth = "psk"
id = "gwB.example.org"
[connections.site.children.net]
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
start_acton = "start"             #! connections.site.children.net.start_acton: did you mean 'start_action'?
rekey_tme = "1h"                  #! connections.site.children.net.rekey_tme: did you mean 'rekey_time'?
[log]
levl = "debug"                    #! log.levl: unknown key; did you mean 'level'?
levels = { wrker = "debug" }      #! log.levels.wrker: unknown key; did you mean 'worker'?
[limits]
half_open_ike_sa = 10             #! limits.half_open_ike_sa: did you mean 'half_open_ike_sas'?
[secrets]
ike = [{ id = ["gwA.example.org", "gwB.example.org"], secret = "0sYSBwcmUtc2hhcmVkIGtleSBvZiAzMiBieXRlcyEhISE=" }]
""",
    "proposals: refused with the RFC, typos with the closest name and every valid one": HEAD + IKE.replace(
        'remote_addrs = ["192.0.2.2"]',
        'remote_addrs = ["192.0.2.2"]\n'
        'proposals = ["aes256gcm16-prfsha384-curve2559"]  #! connections.site.proposals: '
        "did you mean 'curve25519'? valid names are encryption: aes128,").replace(
        'remote_ts = ["198.51.100.128/25"]',
        'remote_ts = ["198.51.100.128/25"]\n'
        'esp_proposals = ["aes128-sha1"]  #! connections.site.children.net.esp_proposals: '
        "sha1: refused: HMAC-SHA1-96 is 'MUST-' in RFC 8221 §6") + """
[connections.other]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.3"]
[connections.other.children.net]
local_ts = ["203.0.113.0/25"]
remote_ts = ["203.0.113.128/25"]
esp_proposals = ["aes128gcm"]     #! connections.other.children.net.esp_proposals: did you mean 'aes128gcm16'? \
valid names are encryption:
[connections.other.children.net.manual]
in_spi = 0x1001
out_spi = 0x2001
[connections.old]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.4"]
[connections.old.children.net]
local_ts = ["203.0.113.0/25"]
remote_ts = ["203.0.113.0/26"]
esp_proposals = ["3des-md5"]      #! connections.old.children.net.esp_proposals: 3des: refused: 3DES
[connections.old.children.net.manual]
in_spi = 0x1002
out_spi = 0x2002
""",
    "lifetimes that cannot work": HEAD + IKE.replace(
        'remote_addrs = ["192.0.2.2"]',
        'remote_addrs = ["192.0.2.2"]\n'
        'rekey_time = "1h"\n'
        'over_time = 0                    #! connections.site.over_time: 0 leaves no time to rekey: the IKE SA '
        'would be deleted when its rekeying starts; e.g. over_time = "6m"').replace(
        'remote_ts = ["198.51.100.128/25"]',
        'remote_ts = ["198.51.100.128/25"]\n'
        'rekey_time = "1h"\n'
        'life_time = "50m"                #! connections.site.children.net.life_time: 50m is not more than '
        'rekey_time (1h): the SA would die before it is rekeyed; make it larger, e.g. 66m\n'
        'rekey_bytes = -1                 #! connections.site.children.net.rekey_bytes: -1 is outside 0..') + """
[connections.site.children.web]
local_ts = ["198.51.100.0/25[tcp/80]"]
remote_ts = ["198.51.100.128/25"]
rekey_time = "10m"
rand_time = "10m"                 #! connections.site.children.web.rand_time: 10m is not less than rekey_time \
(10m): the rekey could be due at once; e.g. rand_time = "1m"
[connections.site.children.mail]
local_ts = ["198.51.100.0/25[tcp/25]"]
remote_ts = ["198.51.100.128/25"]
rekey_time = "2h"
life_time = "3h"
rand_time = "61m"                 #! connections.site.children.mail.rand_time: 61m is more than life_time - \
rekey_time (1h); at most that, e.g. rand_time = "1h" (the default)
[connections.site.children.dns]
local_ts = ["198.51.100.0/25[udp/53]"]
remote_ts = ["198.51.100.128/25"]
life_time = "1 hour"              #! connections.site.children.dns.life_time: '1 hour' is not a duration
""",
    "operational tables": HEAD + """
[log]
format = "xml"                    #! log.format: 'xml' is not one of plain | json
level = "warn"                    #! log.level: 'warn' is not one of debug | info | warning | error; did you \
mean 'warning'?
levels = { ike = "verbose" }      #! log.levels.ike: 'verbose' is not one of debug | info | warning | error
[metrics]
listen = "localhost:9469"         #! metrics.listen: 'localhost' is not an IP address; write address:port, e.g. \
"127.0.0.1:9469" or "[::1]:9469"
[debug]
key_export = "keys"               #! debug.key_export: 'keys' must be an absolute path, e.g. "/run/xdpsec/keys"
[limits]
control_clients = 0               #! limits.control_clients: 0 is outside 1..1024
sas_per_worker = 5000             #! limits.sas_per_worker: 5000 is outside 1..4096
""" + IKE,
    "IKE-only keys in a manually keyed connection": HEAD + """
[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
rekey_time = "1h"                 #! connections.site.rekey_time: only for IKE connections
[connections.site.children.net]
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
esp_proposals = ["aes128gcm16"]
life_time = "1h"                  #! connections.site.children.net.life_time: only for children keyed by IKE
[connections.site.children.net.manual]
in_spi = 0x1001
out_spi = 0x2001
in_enc_key = "3f1f6c2be0a94c4c1b7e1f2d5a6b7c8d01020304"
out_enc_key = "9a8b7c6d5e4f30211203f4e5d6c7b8a905060708"
""",
    "shadowed policies and other warnings, with no error": HEAD + IKE + """
[connections.site.children.blackhole]  #? connections.site.children.blackhole: policy OUT 198.51.100.0/26 -> \
198.51.100.128/25 never matches: site/net (PROTECT) covers it and comes first \
#? connections.site.children.blackhole: policy IN 198.51.100.128/25 -> 198.51.100.0/26 never matches
mode = "drop"
local_ts = ["198.51.100.0/26"]
remote_ts = ["198.51.100.128/25"]
priority = 500000
[metrics]
listen = "0.0.0.0:9469"           #? metrics.listen: serves SA names, addresses and counters to anyone who reaches
[debug]
key_export = "/run/xdpsec/keys"   #? debug.key_export: writes every ESP and IKE key to /run/xdpsec/keys
""",
}


def _marks(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    errors, warnings = [], []
    rows = text.split("\n")
    i = 0
    while i < len(rows):
        lineno, line = i + 1, rows[i]
        while line.endswith("\\") and i + 1 < len(rows):  # the marker's message continues on the next line
            i += 1
            line = line[:-1] + rows[i]
        for m in MARK_RE.finditer(line):
            (errors if m[1] == "!" else warnings).append((lineno, m[2], m[3].strip()))
        i += 1
    return errors, warnings


def _strip_continuations(text: str) -> str:
    """The file as TOML sees it: a continued marker's second line becomes a comment too."""
    rows, out, cont = text.split("\n"), [], False
    for row in rows:
        out.append("# " + row if cont else row)
        cont = row.endswith("\\") and "#" in row
    return "\n".join(out)


def _found(problems: list[Problem] | tuple[Problem, ...], path: Path) -> list[tuple[int, str, str]]:
    assert all(p.file == str(path) for p in problems)
    return sorted((p.line, p.key, p.message) for p in problems)


@pytest.mark.parametrize("name", list(CASES))
def test_every_problem_at_its_line_with_its_hint(tmp_path, name):
    text = CASES[name]
    errors, warnings = _marks(text)
    path = tmp_path / "xdpsec.toml"
    path.write_text(_strip_continuations(text))
    path.chmod(0o600)
    if errors:
        with pytest.raises(ConfigError) as e:
            load(path)
        got_errors, got_warnings = _found(e.value.problems, path), _found(e.value.warnings, path)
    else:
        config = load(path)
        got_errors, got_warnings = [], _found(config.warnings, path)
    for want, got in ((errors, got_errors), (warnings, got_warnings)):
        assert [(line, key) for line, key, _ in sorted(want)] == [(line, key) for line, key, _ in got], got
        for (_, _, hint), (_, _, message) in zip(sorted(want), got, strict=True):
            assert hint in message, (hint, message)


def test_check_prints_them_all_in_line_order_and_exits_2(tmp_path, capsys):
    text = CASES["lifetimes that cannot work"]
    path = tmp_path / "xdpsec.toml"
    path.write_text(_strip_continuations(text))
    path.chmod(0o600)
    assert check_main(["-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    errors, _ = _marks(text)
    assert [line.split(": ", 2)[:2] for line in err] == [[f"{path}:{n}", key] for n, key, _ in sorted(errors)]


@pytest.mark.parametrize("mode,refused", [(0o600, False), (0o400, False), (0o640, True), (0o604, True),
                                          (0o644, True), (0o660, True)])
def test_secrets_file_must_be_private_to_its_owner(tmp_path, mode, refused):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(IKE.split("\n[secrets]\n")[1].join(["[secrets]\n", ""]))
    secrets.chmod(mode)
    path = tmp_path / "xdpsec.toml"
    path.write_text('secrets_file = "secrets.toml"\n' + HEAD + IKE.split("\n[secrets]\n")[0])
    if not refused:
        [conn] = load(path).ike_connections()
        assert len(conn.local.psk) == 32
        return
    with pytest.raises(ConfigError) as e:
        load(path)
    # The PSK it would have held is then missing too, which is reported as well.
    assert [(p.line, p.key) for p in e.value.problems] == [(1, "secrets_file"), (11, f"{C}.local.auth")]
    assert str(e.value.problems[0]) == f"{path}:1: secrets_file: {secrets} is mode {mode:04o}: it holds secrets " \
                                       f"and must not be readable by group or others; chmod 600 {secrets}"


@pytest.mark.parametrize("text,result", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9469", ("::1", 9469)),
    ("[2001:db8::1]:1", ("2001:db8::1", 1)),
])
def test_parse_listen(text, result):
    assert parse_listen(text) == result


@pytest.mark.parametrize("text,fragment", [
    ("9469", "is not host:port"),
    (":9469", "'' is not an IP address"),
    ("::1:9469", "is not host:port"),
    ("[127.0.0.1]:9469", "an IPv6 address goes in brackets, an IPv4 address without"),
    ("127.0.0.1:0", "port 0 is outside 1..65535"),
    ("127.0.0.1:65536", "port 65536 is outside 1..65535"),
    ("[::1]9469", "is not host:port"),
])
def test_parse_listen_refuses_with_the_syntax(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)) as e:
        parse_listen(text)
    assert '"127.0.0.1:9469" or "[::1]:9469"' in str(e.value) or "port" in fragment
