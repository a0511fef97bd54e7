"""The TOML configuration: every problem as FILE:LINE: key: message, and what good files turn into."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from xdpsec.abi import Action, PolicyDir
from xdpsec.config import ConfigError, Problem, _Locator, check_main, load, parse_ts
from xdpsec.sa import Direction, Encr, Mode, PortRange, Protocol, TrafficSelector, UdpEncap

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
GCM_KEY_A = "3f1f6c2be0a94c4c1b7e1f2d5a6b7c8d01020304"  # 16-byte AES key + 4-byte salt
GCM_KEY_B = "9a8b7c6d5e4f30211203f4e5d6c7b8a905060708"

GOOD = f"""\
instance = "t"

[gateway]
interfaces = ["lan0", "wan0"]
workers = 2

[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]

[connections.site.children.net]
mode = "tunnel"
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
esp_proposals = ["aes128gcm16"]

[connections.site.children.net.manual]
in_spi = 0x1001
out_spi = 0x2001
in_enc_key = "{GCM_KEY_A}"
out_enc_key = "{GCM_KEY_B}"
"""

SECOND_CHILD = f"""
[connections.site.children.other]
local_ts = ["203.0.113.0/24"]
remote_ts = ["198.51.100.128/25"]
esp_proposals = ["aes128gcm16"]
[connections.site.children.other.manual]
in_spi = 0x1001
out_spi = 0x2002
in_enc_key = "{GCM_KEY_A}"
out_enc_key = "{GCM_KEY_B}"
"""

CHILD = "connections.site.children.net"
MANUAL = f"{CHILD}.manual"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xdpsec.toml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


def line_of(text: str, needle: str) -> int:
    """The 1-based line where `needle` (possibly several lines) first starts, found without the locator."""
    return text[:text.index(needle)].count("\n") + 1


# (case, change: (old, new) or several, text that starts the reported line, key, message or a part of it)
BAD = [
    ("unknown key with a suggestion", ("esp_proposals =", "esp_proposal ="), "esp_proposal",
     f"{CHILD}.esp_proposal", "unknown key; did you mean 'esp_proposals'?"),
    ("unknown top-level key", ('instance = "t"', 'instance = "t"\ngatway = 1'), "gatway", "gatway",
     "unknown key; did you mean 'gateway'?"),
    ("wrong type", ("workers = 2", 'workers = "2"'), "workers", "gateway.workers",
     "expected an integer, got string '2'"),
    ("workers out of range", ("workers = 2", "workers = 65"), "workers", "gateway.workers", "65 is outside 1..64"),
    ("cpus not numbers", ("workers = 2", 'workers = 2\ncpus = ["0"]'), "cpus", "gateway.cpus",
     "expected an array of CPU numbers 0..4095, got ['0']"),
    ("cpus negative", ("workers = 2", "workers = 2\ncpus = [0, -1]"), "cpus", "gateway.cpus",
     "expected an array of CPU numbers 0..4095, got [0, -1]"),
    ("cpus twice", ("workers = 2", "workers = 2\ncpus = [1, 0, 1]"), "cpus", "gateway.cpus", "CPU 1 is listed twice"),
    ("cpus not an array", ("workers = 2", "workers = 2\ncpus = 1"), "cpus", "gateway.cpus",
     "expected an array, got integer 1"),
    ("bad CIDR", ('local_ts = ["198.51.100.0/25"]', 'local_ts = ["198.51.100.1/25"]'), "local_ts",
     f"{CHILD}.local_ts", "'198.51.100.1/25' has host bits set; did you mean 198.51.100.0/25?"),
    ("not an address", ('local_ts = ["198.51.100.0/25"]', 'local_ts = ["lan"]'), "local_ts",
     f"{CHILD}.local_ts", "not an address or prefix: 'lan'"),
    ("bad port", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25[tcp/http]"]'),
     "remote_ts", f"{CHILD}.remote_ts", "bad port 'http': a number or a range lo-hi within 0..65535"),
    ("bad ts syntax", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25[tcp/80"]'),
     "remote_ts", f"{CHILD}.remote_ts", "bad traffic selector '198.51.100.128/25[tcp/80'; write net[proto/port], "
                                        "e.g. 10.0.0.0/8[tcp/80]"),
    ("port without protocol", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/25[/80]"]'),
     "remote_ts", f"{CHILD}.remote_ts", "a port needs a protocol"),
    ("icmp on IPv6", ('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["2001:db8::/64[icmp/8]"]'),
     "remote_ts", f"{CHILD}.remote_ts", "protocol 1 does not go with IPv6; use icmpv6"),
    ("DES", ('["aes128gcm16"]', '["des-sha256"]'), "esp_proposals", f"{CHILD}.esp_proposals",
     "des: refused: DES is 'MUST NOT' for ESP (RFC 8221 §5); use aes128gcm16"),
    ("3DES", ('["aes128gcm16"]', '["3des-sha256"]'), "esp_proposals", f"{CHILD}.esp_proposals",
     "RFC 8221 §5"),
    ("MD5", ('["aes128gcm16"]', '["aes128-md5"]'), "esp_proposals", f"{CHILD}.esp_proposals",
     "md5: refused: HMAC-MD5-96 is 'MUST NOT' (RFC 8221 §6); use sha256"),
    ("SHA1", ('["aes128gcm16"]', '["aes128-sha1"]'), "esp_proposals", f"{CHILD}.esp_proposals",
     "RFC 8221 §6"),
    ("two proposals", ('["aes128gcm16"]', '["aes128gcm16", "aes256gcm16"]'), "esp_proposals",
     f"{CHILD}.esp_proposals", "manual keying uses exactly one proposal, got 2"),
    ("short AEAD key", (f'out_enc_key = "{GCM_KEY_B}"', f'out_enc_key = "{GCM_KEY_B[:-2]}"'), "out_enc_key",
     f"{MANUAL}.out_enc_key", "19 bytes, aes128gcm16 needs 20 (16-byte key + 4-byte salt, RFC 4106 §8.1)"),
    ("integrity key with AEAD", (f'out_enc_key = "{GCM_KEY_B}"', f'out_enc_key = "{GCM_KEY_B}"\n'
                                                                 f'out_integ_key = "{GCM_KEY_B}"'),
     "out_integ_key", f"{MANUAL}.out_integ_key", "not used by aes128gcm16 (the AEAD cipher carries its own ICV); "
                                                 "remove it"),
    ("not hex", (f'in_enc_key = "{GCM_KEY_A}"', 'in_enc_key = "xyz"'), "in_enc_key", f"{MANUAL}.in_enc_key",
     "not hex; write pairs of hex digits, optionally with ':' between bytes"),
    ("missing key", (f'out_enc_key = "{GCM_KEY_B}"\n', ""), "[connections.site.children.net.manual]",
     f"{MANUAL}.out_enc_key", "missing; aes128gcm16 needs 20 bytes (16-byte key + 4-byte salt, RFC 4106 §8.1)"),
    ("missing SPI", ("out_spi = 0x2001\n", ""), "[connections.site.children.net.manual]", f"{MANUAL}.out_spi",
     "missing (required)"),
    ("SPI reserved", ("in_spi = 0x1001", "in_spi = 0xff"), "in_spi", f"{MANUAL}.in_spi",
     "SPI 0xff is outside 0x100..0xffffffff (0 is not an SPI and 1..255 are reserved by IANA, RFC 4303 §2.1)"),
    ("SPI as string", ("in_spi = 0x1001", 'in_spi = "0xzz"'), "in_spi", f"{MANUAL}.in_spi",
     "'0xzz' is not a number; write 0x1001 or 4097"),
    ("duplicate SPI", (GOOD, GOOD + SECOND_CHILD), "in_spi = 0x1001\nout_spi = 0x2002",
     "connections.site.children.other.manual.in_spi", "SPI 0x1001 is already the in_spi of site/net"),
    ("AH with encap", (('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nencap = true'),
                       ('esp_proposals = ["aes128gcm16"]', 'ah_proposals = ["sha256"]')),
     "ah_proposals", f"{CHILD}.ah_proposals", "AH cannot be UDP-encapsulated"),
    ("ESP and AH", ('esp_proposals = ["aes128gcm16"]', 'esp_proposals = ["aes128gcm16"]\nah_proposals = ["sha256"]'),
     "ah_proposals", f"{CHILD}.ah_proposals", "set esp_proposals or ah_proposals, not both"),
    ("no manual table: IKE without authentication", (GOOD.split("\n[connections.site.children.net.manual]")[0],
                                                     None),
     "[connections.site]", "connections.site.local",
     "missing; IKE keys this connection (children without a [manual] table: net): add [connections.site.local] "
     "with auth = \"psk\" or \"pubkey\", or give every child a [manual] table for manual keying"),
    ("two local addresses", ('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.1", "192.0.2.3"]'),
     "local_addrs", "connections.site.local_addrs", "manual keying needs exactly one address, got 2"),
    ("outer families differ", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["2001:db8::2"]'), "remote_addrs",
     "connections.site.remote_addrs", "IPv6 address with an IPv4 local_addrs; the outer header has one family"),
    ("transport ts outside the hosts", ('mode = "tunnel"', 'mode = "transport"'), "local_ts",
     f"{CHILD}.local_ts", "198.51.100.0/25 is not the outer address 192.0.2.1"),
    ("bad mode", ('mode = "tunnel"', 'mode = "beet"'), "mode", f"{CHILD}.mode",
     "'beet' is not one of tunnel | transport | pass | drop"),
    ("empty interfaces", ('interfaces = ["lan0", "wan0"]', "interfaces = []"), "interfaces",
     "gateway.interfaces", "empty; name the interfaces XDP should attach to"),
    ("long interface name", ('interfaces = ["lan0", "wan0"]', 'interfaces = ["lan0", "averyveryverylong0"]'),
     "interfaces", "gateway.interfaces", "'averyveryverylong0' is not a valid interface name"),
    ("interface twice", ('interfaces = ["lan0", "wan0"]', 'interfaces = ["lan0", "lan0"]'), "interfaces",
     "gateway.interfaces", "'lan0' is listed twice"),
    ("no gateway", ('[gateway]\ninterfaces = ["lan0", "wan0"]\nworkers = 2\n', ""), 'instance = "t"', "gateway",
     "missing (required)"),
    ("encap ports without encap", ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nlocal_port = 1'),
     "local_port", "connections.site.local_port", "only used with encap = true (RFC 3948 UDP encapsulation)"),
    ("pass with keys", ('mode = "tunnel"', 'mode = "pass"'), "esp_proposals", f"{CHILD}.esp_proposals",
     'mode = "pass" is a shunt without SAs; remove esp_proposals'),
    ("replay window too big", ('mode = "tunnel"', 'mode = "tunnel"\nreplay_window = 70000'), "replay_window",
     f"{CHILD}.replay_window", "70000 is outside 0..65536"),
]


def _apply(change) -> str:
    changes = change if isinstance(change[0], tuple) else (change,)
    text = GOOD
    for old, new in changes:
        if new is None:  # replace the whole file
            text = old
            continue
        assert old in text
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize("change,where,key,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config(tmp_path, change, where, key, message):
    text = _apply(change)
    path = write(tmp_path, text)
    found = [str(p) for p in problems_of(path)]
    prefix = f"{path}:{line_of(text, where)}: {key}: "
    matching = [p for p in found if p.startswith(prefix)]
    assert matching, f"no problem starting with {prefix!r} in {found}"
    assert any(message in p[len(prefix):] for p in matching), found


def test_several_problems_are_all_reported_in_line_order(tmp_path):
    text = _apply((("workers = 2", "workers = 0"), ('mode = "tunnel"', 'mod = "tunnel"'),
                   ('["aes128gcm16"]', '["3des-md5"]'), ("in_spi = 0x1001", "in_spi = 1")))
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert [(p.line, p.key) for p in problems] == [
        (line_of(text, "workers"), "gateway.workers"),
        (line_of(text, "mod ="), f"{CHILD}.mod"),
        (line_of(text, "esp_proposals"), f"{CHILD}.esp_proposals"),
        (line_of(text, "in_spi"), f"{MANUAL}.in_spi"),
    ]


def test_syntax_error_carries_tomllibs_line(tmp_path):
    text = GOOD.replace("workers = 2", "workers = = 2")
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert str(problem).startswith(f"{path}:{line_of(text, 'workers')}: syntax: ")
    assert "(column " in problem.message


def test_unreadable_file(tmp_path):
    (problem,) = problems_of(tmp_path / "absent.toml")
    assert str(problem).startswith(f"{tmp_path / 'absent.toml'}:1: file: cannot read")


# --- the locator ------------------------------------------------------------------------------------------------

def test_locator_handles_how_people_write_toml():
    text = """\
# comment = not a key
top = 1
[a]
b.c = 2          # dotted key
"quoted.key" = 3
list = [
  "x = 1",
  [1, 2],
]
doc = \"\"\"
fake = 4
[fake]
\"\"\"
[ a . "d" ]
e = 5
[[arr]]
f = 6
[[arr]]
f = 7
"""
    loc = _Locator(text)
    assert loc.line(("top",)) == 2
    assert loc.line(("a",)) == 3
    assert loc.line(("a", "b")) == 4 and loc.line(("a", "b", "c")) == 4
    assert loc.line(("a", "quoted.key")) == 5
    assert loc.line(("a", "list")) == 6
    assert loc.line(("a", "fake")) == 3  # only inside a string: falls back to its table
    assert loc.line(("fake",)) == 1
    assert loc.line(("a", "d", "e")) == 15
    assert loc.line(("arr", "0", "f")) == 17 and loc.line(("arr", "1", "f")) == 19
    assert loc.line(("a", "missing")) == 3


# --- traffic selectors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ts", [
    ("198.51.100.0/24", TrafficSelector(ipaddress.ip_network("198.51.100.0/24"))),
    ("198.51.100.7", TrafficSelector(ipaddress.ip_network("198.51.100.7/32"))),
    ("2001:db8::1", TrafficSelector(ipaddress.ip_network("2001:db8::1/128"))),
    ("0.0.0.0/0[tcp/80]", TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), 6, PortRange(80, 80))),
    ("0.0.0.0/0[udp/1000-2000]", TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), 17, PortRange(1000, 2000))),
    ("0.0.0.0/0[icmp/8]", TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), 1, PortRange(8, 8))),
    ("::/0[ipv6-icmp/128]", TrafficSelector(ipaddress.ip_network("::/0"), 58, PortRange(128, 128))),
    ("0.0.0.0/0[47]", TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), 47)),
    ("0.0.0.0/0[tcp/%any]", TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), 6)),
])
def test_parse_ts(text, ts):
    assert parse_ts(text) == ts


@pytest.mark.parametrize("text,fragment", [
    ("0.0.0.0/0[icmp/256]", "bad ICMP type '256'"),
    ("0.0.0.0/0[tcp/2000-1000]", "bad port '2000-1000'"),
    ("0.0.0.0/0[gre/1]", "a port needs a protocol with ports"),
    ("0.0.0.0/0[foo]", "unknown protocol 'foo'"),
    ("10.0.0.1-10.0.0.9", "address ranges"),
    ("dynamic", "'dynamic' needs IKE"),
    ("[tcp/80]", "has no address"),
])
def test_parse_ts_refuses(text, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        parse_ts(text)


# --- good configurations and what they turn into -------------------------------------------------------------------

def net(text):
    return ipaddress.ip_network(text)


def test_site_to_site_pair_mirrors():
    a, b = load(EXAMPLES / "gwA.toml"), load(EXAMPLES / "gwB.toml")
    assert (a.instance, a.gateway.interfaces, a.gateway.workers) == ("gwA", ("lan0", "wan0"), 2)
    assert a.gateway.default_action == Action.BYPASS and a.warnings == ()
    [(name_a, out_a, in_a)] = a.manual_sas()
    [(name_b, out_b, in_b)] = b.manual_sas()
    assert name_a == name_b == "site/net"
    for sent, received in ((out_a, in_b), (out_b, in_a)):
        assert sent.direction == Direction.OUT and received.direction == Direction.IN
        assert (sent.spi, sent.enc_key, sent.transform) == (received.spi, received.enc_key, received.transform)
        assert (sent.local, sent.remote) == (received.remote, received.local)
        assert sent.local_ts == received.remote_ts and sent.remote_ts == received.local_ts
    assert out_a.transform.encr == Encr.AES_GCM_16 and len(out_a.enc_key) == 20
    assert (out_a.mode, out_a.protocol, out_a.encap) == (Mode.TUNNEL, Protocol.ESP, None)
    assert a.local_addresses() == {ipaddress.ip_address("192.0.2.1")}

    rows = [(p.id, p.direction, p.action, p.src, p.dst, p.child) for p in a.policies()]
    assert rows == [
        # the pass shunt between the gateways comes first (strongSwan's POLICY_PRIORITY_PASS)
        (1, PolicyDir.OUT, Action.BYPASS, net("192.0.2.1/32"), net("192.0.2.2/32"), None),
        (2, PolicyDir.IN, Action.BYPASS, net("192.0.2.2/32"), net("192.0.2.1/32"), None),
        (3, PolicyDir.OUT, Action.PROTECT, net("198.51.100.0/25"), net("198.51.100.128/25"), "site/net"),
        (4, PolicyDir.IN, Action.PROTECT, net("198.51.100.128/25"), net("198.51.100.0/25"), "site/net"),
    ]


def test_transport_pair_defaults_selectors_to_the_hosts():
    a = load(EXAMPLES / "hostA-transport.toml")
    [(_, out, inb)] = a.manual_sas()
    assert out.mode == Mode.TRANSPORT and out.transform.esn and out.transform.encr_key_bits == 256
    assert out.local_ts == (TrafficSelector(net("2001:db8::a/128")),)
    assert out.remote_ts == (TrafficSelector(net("2001:db8::b/128")),)
    assert (out.spi, inb.spi) == (0x00BEEF01, 0x00C0FFEE)
    assert len(out.integ_key) == 48 and out.integ_key == bytes([2]) * 48  # ':'-free hex, 48 bytes
    assert out.enc_key == bytes.fromhex("ff:ee:dd:cc:bb:aa:99:88:77:66:55:44:33:22:11:00".replace(":", "")) * 2
    b = load(EXAMPLES / "hostB-transport.toml")
    [(_, out_b, in_b)] = b.manual_sas()
    assert (out.spi, out.enc_key, out.integ_key) == (in_b.spi, in_b.enc_key, in_b.integ_key)
    assert [(p.direction, p.src, p.dst) for p in a.policies()] == [
        (PolicyDir.OUT, net("2001:db8::a/128"), net("2001:db8::b/128")),
        (PolicyDir.IN, net("2001:db8::b/128"), net("2001:db8::a/128")),
    ]


def test_ah_and_shunts():
    c = load(EXAMPLES / "ah-shunts.toml")
    assert c.gateway.default_action == Action.DISCARD
    [(_, out, inb)] = c.manual_sas()
    assert out.protocol == inb.protocol == Protocol.AH and out.transform.encr is None
    assert out.replay_window == 64
    got = [(p.name, p.direction, p.action, p.proto, p.sports, p.dports) for p in c.policies()]
    any_port = PortRange()
    assert got == [
        ("mgmt/lan", PolicyDir.OUT, Action.BYPASS, 0, any_port, any_port),
        ("mgmt/lan", PolicyDir.IN, Action.BYPASS, 0, any_port, any_port),
        # ICMP type 8 sits in the source-port slot in both directions; it narrows more than udp/161-162
        ("mgmt/monitoring", PolicyDir.OUT, Action.PROTECT, 1, PortRange(8, 8), any_port),
        ("mgmt/monitoring", PolicyDir.IN, Action.PROTECT, 1, PortRange(8, 8), any_port),
        ("mgmt/no-telnet", PolicyDir.OUT, Action.DISCARD, 6, any_port, PortRange(23, 23)),
        ("mgmt/no-telnet", PolicyDir.IN, Action.DISCARD, 6, PortRange(23, 23), any_port),
        ("mgmt/monitoring", PolicyDir.OUT, Action.PROTECT, 17, any_port, PortRange(161, 162)),
        ("mgmt/monitoring", PolicyDir.IN, Action.PROTECT, 17, PortRange(161, 162), any_port),
    ]


def test_encap_ports_and_explicit_priority(tmp_path):
    text = GOOD.replace('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.2"]\nencap = true\n'
                                                         'remote_port = 14500')
    text = text.replace('mode = "tunnel"', 'mode = "tunnel"\npriority = 7')
    c = load(write(tmp_path, text))
    [(_, out, inb)] = c.manual_sas()
    assert out.encap == UdpEncap(sport=4500, dport=14500)  # ports as in the packets we send
    assert inb.encap == UdpEncap(sport=14500, dport=4500)  # and as in those we receive
    assert {p.priority for p in c.policies()} == {7}


def test_shadowed_policy_is_a_warning(tmp_path, capsys):
    text = GOOD + """
[connections.site.children.blackhole]
mode = "drop"
local_ts = ["198.51.100.0/26"]
remote_ts = ["198.51.100.128/25"]
priority = 500000
"""
    path = write(tmp_path, text)
    c = load(path)
    w = c.warnings[0]
    assert len(c.warnings) == 2  # OUT and IN
    assert str(w).startswith(f"{path}:{line_of(text, '[connections.site.children.blackhole]')}: "
                             f"connections.site.children.blackhole: policy OUT 198.51.100.0/26 -> ")
    assert "never matches: site/net (PROTECT) covers it and comes first" in w.message
    assert check_main(["-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: ") == 2  # OUT and IN


def test_replay_window_zero_warns(tmp_path):
    c = load(write(tmp_path, GOOD.replace('mode = "tunnel"', 'mode = "tunnel"\nreplay_window = 0')))
    assert [w.key for w in c.warnings] == [f"{CHILD}.replay_window"]


# --- xdpsec check ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,summary", [
    ("gwA.toml", "1 connections, 2 children, 4 policies"),
    ("hostA-transport.toml", "1 connections, 1 children, 2 policies"),
    ("ah-shunts.toml", "1 connections, 3 children, 8 policies"),
])
def test_check_ok(capsys, name, summary):
    assert check_main(["-c", str(EXAMPLES / name)]) == 0
    assert capsys.readouterr().out == f"{EXAMPLES / name}: ok ({summary})\n"


def test_check_bad_exits_2_with_one_line_per_problem(tmp_path, capsys):
    text = _apply((("workers = 2", "workers = 0"), ("in_spi = 0x1001", "in_spi = 1")))
    path = write(tmp_path, text)
    assert check_main(["-c", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:{line_of(text, 'workers')}", "gateway.workers"],
        [f"{path}:{line_of(text, 'in_spi')}", f"{MANUAL}.in_spi"],
    ]


def test_check_json(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("workers = 2", "workers = 0"))
    assert check_main(["-c", str(path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problems"][0]["key"] == "gateway.workers"
    assert check_main(["-c", str(EXAMPLES / "gwA.toml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["connections"], out["children"], out["policies"]) == (True, 1, 2, 4)


@pytest.mark.parametrize(("line", "expected"), [
    ("", [0, 1, 0]),              # absent: worker i on CPU i % CPUs (2 here)
    ("cpus = [3]", [3, 3, 3]),    # every worker on CPU 3
    ("cpus = [1, 0]", [1, 0, 1]),  # worker i on cpus[i % len]
    ("cpus = []", [None] * 3),    # not pinned
])
def test_worker_cpus(tmp_path, line, expected):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(GOOD.replace("workers = 2", f"workers = 2\n{line}"))
    gateway = load(cfg).gateway
    assert [gateway.worker_cpu(wid, 2) for wid in range(3)] == expected
