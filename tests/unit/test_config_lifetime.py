"""IKE and child SA lifetimes: swanctl.conf's keys and defaults -> xdpsec.ike.conf.Lifetime, and the invariants the
IKE core relies on (a rekey is due at rekey_time - uniform(0, rand_time), before life_time)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.config import ConfigError, format_duration, load
from xdpsec.ike.conf import CHILD_LIFETIME, IKE_LIFETIME, Lifetime

CONFIG = """\
instance = "t"
[gateway]
interfaces = ["wan0"]
workers = 1
[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
{conn}
[connections.site.local]
auth = "psk"
id = "gwA.example.org"
[connections.site.remote]
auth = "psk"
id = "gwB.example.org"
[connections.site.children.net]
local_ts = ["198.51.100.0/25"]
remote_ts = ["198.51.100.128/25"]
{child}
[secrets]
ike = [{{ id = ["gwA.example.org", "gwB.example.org"], secret = "0sYSBwcmUtc2hhcmVkIGtleSBvZiAzMiBieXRlcyEhISE=" }}]
"""


def lifetimes(tmp_path, conn: str = "", child: str = "") -> tuple[Lifetime, Lifetime]:
    path = tmp_path / "xdpsec.toml"
    path.write_text(CONFIG.format(conn=conn, child=child))
    path.chmod(0o600)
    [ike] = load(path).ike_connections()
    return ike.lifetime, ike.children[0].lifetime


# swanctl.conf(5): children's life_time = rekey_time + 10 %, rekey_time = life_time - 10 % when only life_time is
# given, rand_time = life_time - rekey_time; the same for bytes and packets with rekey_* off (0) by default.
CHILD = [
    ("", CHILD_LIFETIME),
    ('rekey_time = "2h"', Lifetime(7200.0, 7920.0, 720.0)),
    ('life_time = "66m"', Lifetime(3564.0, 3960.0, 396.0)),
    ('rekey_time = "1h"\nlife_time = "2h"', Lifetime(3600.0, 7200.0, 1800.0)),  # rand: at most half of rekey
    ('rekey_time = "1h"\nrand_time = "5m"', Lifetime(3600.0, 3960.0, 300.0)),
    ("rekey_time = 0", Lifetime(0.0, 0.0, 0.0)),  # no rekeying and no hard limit, as in strongSwan
    ('rekey_time = 0\nlife_time = "8h"', Lifetime(0.0, 28800.0, 0.0)),  # a hard limit only
    ('rekey_time = "1h"\nlife_time = 0', Lifetime(3600.0, 0.0, 0.0)),  # a soft limit only
    ("rekey_bytes = 1000", Lifetime(3600.0, 3960.0, 360.0, rekey_bytes=1000, life_bytes=1100)),
    ("life_packets = 1000", Lifetime(3600.0, 3960.0, 360.0, rekey_packets=900, life_packets=1000)),
    ("rekey_packets = 5\nlife_packets = 0", Lifetime(3600.0, 3960.0, 360.0, rekey_packets=5, life_packets=0)),
]

# The IKE SA: over_time = 10 % of rekey_time, life_time = rekey_time + over_time, rand_time = over_time.
IKE = [
    ("", IKE_LIFETIME),
    ('rekey_time = "1h"', Lifetime(3600.0, 3960.0, 360.0)),
    ('rekey_time = "1h"\nover_time = "30m"', Lifetime(3600.0, 5400.0, 1800.0)),
    ('rekey_time = "1h"\nover_time = "30m"\nrand_time = "1m"', Lifetime(3600.0, 5400.0, 60.0)),
    ('rekey_time = "1h"\nover_time = "2h"', Lifetime(3600.0, 10800.0, 1800.0)),  # rand: at most half of rekey
    ("rekey_time = 0", Lifetime(0.0, 0.0, 0.0)),
]


@pytest.mark.parametrize("keys,lifetime", CHILD, ids=[k or "defaults" for k, _ in CHILD])
def test_child_lifetime_keys_and_defaults(tmp_path, keys, lifetime):
    assert lifetimes(tmp_path, child=keys)[1] == lifetime


@pytest.mark.parametrize("keys,lifetime", IKE, ids=[k or "defaults" for k, _ in IKE])
def test_ike_lifetime_keys_and_defaults(tmp_path, keys, lifetime):
    assert lifetimes(tmp_path, conn=keys)[0] == lifetime


def test_the_defaults_are_the_ike_cores():
    """Without any key the loader must give exactly what xdpsec.ike.conf documents as strongSwan's defaults."""
    assert (CHILD[0][1], IKE[0][1]) == (Lifetime(3600.0, 3960.0, 360.0), Lifetime(14400.0, 15840.0, 1440.0))


@pytest.mark.parametrize("seconds,text", [(3600, "1h"), (3960, "66m"), (86400, "1d"), (45, "45s"), (7.5, "7.5s"),
                                          (0, "0s"), (90, "90s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


durations = st.one_of(st.none(), st.integers(0, 100_000))


@settings(max_examples=150, deadline=None)
@given(rekey=durations, life=durations, rand=durations)
def test_accepted_child_lifetimes_keep_the_cores_invariants(tmp_path_factory, rekey, life, rand):
    """Whatever the three keys say, the loader either refuses them or yields a schedule where the SA is rekeyed
    strictly before it dies and the random part can never make the rekey due at once."""
    keys = "\n".join(f"{k} = {v}" for k, v in (("rekey_time", rekey), ("life_time", life), ("rand_time", rand))
                     if v is not None)
    try:
        _, lt = lifetimes(tmp_path_factory.mktemp("lt"), child=keys)
    except ConfigError as e:
        assert all(p.key.rsplit(".", 1)[1] in ("life_time", "rand_time") for p in e.problems), e.problems
        return
    if lt.rekey_time and lt.life_time:
        assert lt.life_time > lt.rekey_time
        assert lt.rand_time <= lt.life_time - lt.rekey_time
    if lt.rekey_time:
        assert lt.rand_time < lt.rekey_time
    for key, value in (("rekey_time", rekey), ("life_time", life), ("rand_time", rand)):
        if value is not None:
            assert getattr(lt, key) == value  # what the user wrote is never silently changed
