"""Every example in config/ loads without a problem, and the example pairs really negotiate with each other.

Git does not keep file modes, and xdpsec refuses private keys and secrets files that group or others may read,
so the examples are checked from a copy whose key files are mode 0600, as config/certs/README.md tells users to
do. The IKE pairs are run through two IkeManagers in memory: an example that loads but cannot authenticate to
its own partner would be a trap for whoever copies it.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from xdpsec.config import ConfigError, load
from xdpsec.ike.conf import CHILD_LIFETIME, AuthMethod, Lifetime
from xdpsec.ike.events import ChildUp, IkeUp
from xdpsec.ike.manager import IkeManager
from xdpsec.sa import Mode

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
NOW = 1_767_225_600.0  # 2026-01-01, inside the example certificates' validity


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("config") / "config"
    shutil.copytree(EXAMPLES, copy)
    for key in (copy / "certs").glob("*.key"):
        key.chmod(0o600)
    for toml in copy.glob("*.toml"):
        toml.chmod(0o600)  # inline [secrets] in a readable file are only a warning; keep the output clean
    return copy


NAMES = sorted(p.name for p in EXAMPLES.glob("*.toml"))


def test_the_examples_cover_what_the_reference_promises():
    wanted = {"gwA.toml", "hostA-transport.toml", "ike-psk-gwA.toml", "ike-transport-hostA.toml",
              "ike-responder.toml", "ike-nat-gwA.toml", "ike-cert-gwA.toml", "ah-shunts.toml"}
    assert wanted <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_without_problems_or_warnings(examples, name):
    config = load(examples / name)
    assert config.connections
    assert config.warnings == (), [str(w) for w in config.warnings]


def test_a_checkout_without_chmod_is_refused_for_the_key_with_the_fix(tmp_path):
    """What a user sees on a fresh checkout (mode 0644 keys): the problem names the file and the chmod."""
    shutil.copytree(EXAMPLES, tmp_path / "config")
    key = tmp_path / "config" / "certs" / "gwA.key"
    key.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "config" / "ike-cert-gwA.toml")
    [problem] = e.value.problems
    assert problem.key == "connections.site.local.private_key"
    assert problem.message.endswith(f"must not be readable by group or others; chmod 600 {key}")


def test_operational_tables_of_the_certificate_example(examples):
    config = load(examples / "ike-cert-gwA.toml")
    assert (config.log.format, config.log.level, config.log.levels) == ("json", "info", {"ike": "debug"})
    assert config.metrics_listen == ("127.0.0.1", 9469) and config.key_export is None
    [conn] = config.ike_connections()
    assert conn.lifetime == Lifetime(rekey_time=14400.0, life_time=15840.0, rand_time=1440.0)
    [net] = conn.children
    assert net.lifetime == Lifetime(rekey_time=3600.0, life_time=3960.0, rand_time=360.0,
                                    rekey_bytes=100_000_000_000, life_bytes=110_000_000_000)


def test_responder_accepts_any_peer(examples):
    config = load(examples / "ike-responder.toml")
    [conn] = config.ike_connections()
    assert conn.remote_addrs == () and conn.remote.identity is None and conn.remote.method == AuthMethod.PUBKEY
    assert (config.limits.half_open_ike_sas, config.limits.ike_sas_per_peer) == (512, 4)
    assert conn.children[0].lifetime == CHILD_LIFETIME


def _negotiate(a_conns, b_conns) -> list:
    """A initiates its first connection; datagrams go back and forth until both are quiet. A's events."""
    a, b = IkeManager(a_conns), IkeManager(b_conns)
    a.strict = b.strict = True
    a.initiate(a_conns[0].name, None, NOW)
    for _ in range(20):
        out_a, out_b = a.datagrams_to_send(), b.datagrams_to_send()
        if not out_a and not out_b:
            break
        for data, src, dst in out_a:
            b.receive_datagram(data, dst, src, NOW)
        for data, src, dst in out_b:
            a.receive_datagram(data, dst, src, NOW)
    events = []
    while (ev := a.next_event()) is not None:
        events.append(ev)
    return events


@pytest.mark.parametrize("a_name,b_name,mode", [
    ("ike-psk-gwA.toml", "ike-psk-gwB.toml", Mode.TUNNEL),
    ("ike-cert-gwA.toml", "ike-cert-gwB.toml", Mode.TUNNEL),
    ("ike-transport-hostA.toml", "ike-transport-hostB.toml", Mode.TRANSPORT),
])
def test_example_pair_negotiates(examples, a_name, b_name, mode):
    a, b = load(examples / a_name), load(examples / b_name)
    events = _negotiate(a.ike_connections(), b.ike_connections())
    assert [type(e) for e in events] == [IkeUp, ChildUp], events
    up = events[1]
    assert up.out.mode == mode
    [child] = a.ike_connections()[0].children
    assert up.out.local_ts == child.local_ts and up.out.remote_ts == child.remote_ts


def test_nat_example_is_one_side_behind_a_nat(examples):
    config = load(examples / "ike-nat-gwA.toml")
    [conn] = config.ike_connections()
    assert conn.local_addrs == (ipaddress.ip_address("192.0.2.10"),) and not conn.encap
    assert conn.children[0].start_action.value == "start" and conn.children[0].dpd_action.value == "restart"
