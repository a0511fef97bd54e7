"""The reload plan (xdpsec/reload.py): which children, connections, policies and settings a changed
configuration touches. Each case edits a valid configuration file and checks the plan against the running one;
the namespace test (tests/netns/test_reload.py) shows the gateway carrying such a plan out without loss."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec import config
from xdpsec.labconf import PairSpec, Side, render_ike
from xdpsec.reload import Diff, diff, plan

KEY_A, KEY_B, KEY_C = (secrets.token_hex(20) for _ in range(3))
BASE = f"""\
instance = "gw"

[gateway]
interfaces = ["lan0", "wan0"]
workers = 2
state_dir = "/tmp/xst-reload-state"

[connections.lab]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]

[connections.lab.children.net]
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
mode = "tunnel"
esp_proposals = ["aes128gcm16"]

[connections.lab.children.net.manual]
in_spi = 0x1001
out_spi = 0x2001
in_enc_key = "{KEY_A}"
out_enc_key = "{KEY_B}"
"""
TWO = f"""
[connections.lab.children.two]
local_ts = ["198.51.100.0/25[udp]"]
remote_ts = ["198.51.100.128/25[udp/7002]"]
mode = "tunnel"
esp_proposals = ["aes128gcm16"]

[connections.lab.children.two.manual]
in_spi = 0x1002
out_spi = 0x2002
in_enc_key = "{KEY_C}"
out_enc_key = "{KEY_A}"
"""


def load(tmp_path, text: str, name: str) -> config.Config:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return config.load(path)


NONE = Diff()
NET = Diff(unchanged=("lab/net",))

CASES = [
    # (what, edit of BASE, manual diff, policies changed, live settings, restart-needed keys)
    ("nothing", lambda t: t, NET, False, (), ()),
    ("new key", lambda t: t.replace(f'out_enc_key = "{KEY_B}"', f'out_enc_key = "{KEY_C}"'),
     Diff(changed=("lab/net",)), False, (), ()),
    ("new SPI", lambda t: t.replace("in_spi = 0x1001", "in_spi = 0x1003"), Diff(changed=("lab/net",)), False, (),
     ()),
    ("child added", lambda t: t + TWO, Diff(added=("lab/two",), unchanged=("lab/net",)), True, (), ()),
    ("child renamed", lambda t: t.replace("children.net", "children.web"),
     Diff(added=("lab/web",), removed=("lab/net",)), True, (), ()),
    ("selectors", lambda t: t.replace('remote_ts = ["198.51.100.128/25"]', 'remote_ts = ["198.51.100.128/26"]'),
     Diff(changed=("lab/net",)), True, (), ()),
    ("peer moved", lambda t: t.replace('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.3"]'),
     Diff(changed=("lab/net",)), False, (), ()),
    ("our address", lambda t: t.replace('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.4"]'),
     Diff(changed=("lab/net",)), False, ("local_addrs",), ()),
    ("default action", lambda t: t.replace("workers = 2", 'workers = 2\ndefault_action = "discard"'), NET, False,
     ("default_action",), ()),
    ("workers", lambda t: t.replace("workers = 2", "workers = 4"), NET, False, (), ("gateway.workers",)),
    ("interfaces", lambda t: t.replace('["lan0", "wan0"]', '["lan0", "wan1"]'), NET, False, (),
     ("gateway.interfaces",)),
    ("xdp mode", lambda t: t.replace("workers = 2", 'workers = 2\nxdp_mode = "generic"'), NET, False, (),
     ("gateway.xdp_mode",)),
    ("state dir", lambda t: t.replace("xst-reload-state", "xst-reload-other"), NET, False, (),
     ("gateway.state_dir",)),
    ("instance", lambda t: t.replace('instance = "gw"', 'instance = "gw2"'), NET, False, (), ("instance",)),
]


@pytest.mark.parametrize("what, edit, manual, policies, live, restart", CASES, ids=[c[0] for c in CASES])
def test_plan(tmp_path, what, edit, manual, policies, live, restart):
    old, new = load(tmp_path, BASE, "old"), load(tmp_path, edit(BASE), "new")
    p = plan(old, new)
    assert p.manual == manual
    assert p.policies_changed is policies
    assert p.live == live
    assert [m.split(":")[0] for m in p.restart] == list(restart)
    assert p.ike == NONE


def test_restart_only_settings_keep_their_running_values(tmp_path):
    old = load(tmp_path, BASE, "old")
    new = load(tmp_path, BASE.replace("workers = 2", "workers = 4").replace('instance = "gw"', 'instance = "x"')
               + TWO, "new")
    p = plan(old, new)
    assert p.restart[0] == "gateway.workers: 2 -> 4 needs a restart; still running with 2"
    assert p.effective.gateway.workers == 2 and p.effective.instance == "gw"
    # ...while what can be applied is: the new child is in the effective configuration.
    assert [name for name, _o, _i in p.effective.manual_sas()] == ["lab/net", "lab/two"]


def _ike_text(proposal: str) -> str:
    side = Side("gw", ["lan0", "wan0"], "192.0.2.1", "192.0.2.2", ["198.51.100.0/25"], ["198.51.100.128/25"])
    return render_ike(side, PairSpec(keying="ike", ike_proposal=proposal), psk="not-a-secret-but-long-enough",
                      initiator=True, state_dir="/tmp/xst-reload-state")


@pytest.mark.parametrize("proposal, ike", [("aes128gcm16-prfsha256-x25519", Diff(unchanged=("lab",))),
                                           ("aes256gcm16-prfsha384-x25519", Diff(changed=("lab",)))])
def test_ike_connections_by_name(tmp_path, proposal, ike):
    old = load(tmp_path, _ike_text("aes128gcm16-prfsha256-x25519"), "old")
    p = plan(old, load(tmp_path, _ike_text(proposal), "new"))
    assert p.ike == ike and p.manual == NONE and not p.policies_changed


def test_ike_connection_added_next_to_manual_ones(tmp_path):
    ike = _ike_text("aes128gcm16-prfsha256-x25519").replace("connections.lab", "connections.vpn")
    ike = ike.split("[connections.vpn]", 1)[1].replace('"198.51.100.', '"203.0.113.')
    p = plan(load(tmp_path, BASE, "old"), load(tmp_path, BASE + "\n[connections.vpn]" + ike, "new"))
    assert p.ike == Diff(added=("vpn",)) and p.manual == NET and p.policies_changed


names = st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 2), max_size=6)


@given(names, names)
def test_diff_partitions_both_sides(old, new):
    d = diff(old, new)
    assert sorted(d.added + d.changed + d.unchanged) == sorted(new)
    assert sorted(d.removed + d.changed + d.unchanged) == sorted(old)
    assert all(old[n] != new[n] for n in d.changed) and all(old[n] == new[n] for n in d.unchanged)
