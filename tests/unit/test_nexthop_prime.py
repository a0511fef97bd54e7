"""Which next hops a new child's install resolves ahead of its first packet (Gateway._prime_next_hops).

The outer destination always (the peer); of the local selectors, those naming one host (the decrypted packets'
destination is then known); never a subnet's addresses, since nobody knows which host comes first and
soliciting a whole prefix would be an ARP/ND sweep. tests/netns/test_nexthop_prime.py shows the effect.
"""

from __future__ import annotations

import ipaddress

import pytest

from xdpsec import config as configmod
from xdpsec.coordinator import Gateway
from xdpsec.sa import Direction, Encr, Mode, Protocol, SAParams, Transform


class Recorder:
    """Stands in for the Gateway: records what would be queued for the resolver."""

    def __init__(self) -> None:
        self.wanted: list[str] = []

    def _want_route(self, dst: bytes) -> None:
        self.wanted.append(str(ipaddress.ip_address(dst)))


def out_sa(peer: str, local_ts: list[str], mode: Mode = Mode.TUNNEL) -> SAParams:
    return SAParams(spi=0x1234, protocol=Protocol.ESP, direction=Direction.OUT, mode=mode,
                    transform=Transform(Encr.AES_GCM_16, 128), local=ipaddress.ip_address("192.0.2.1"),
                    remote=ipaddress.ip_address(peer), enc_key=bytes(20),
                    local_ts=tuple(map(configmod.parse_ts, local_ts)),
                    remote_ts=(configmod.parse_ts("0.0.0.0/0"),))


@pytest.mark.parametrize(("peer", "local_ts", "mode", "wanted"), [
    ("192.0.2.2", ["198.51.100.0/25"], Mode.TUNNEL, ["192.0.2.2"]),
    ("192.0.2.2", ["198.51.100.7/32"], Mode.TUNNEL, ["192.0.2.2", "198.51.100.7"]),
    ("192.0.2.2", ["198.51.100.7/32[udp/53]", "2001:db8:a::7/128", "2001:db8:b::/64"], Mode.TUNNEL,
     ["192.0.2.2", "198.51.100.7", "2001:db8:a::7"]),
    ("192.0.2.2", ["198.51.100.6/31"], Mode.TUNNEL, ["192.0.2.2"]),
    ("192.0.2.2", ["192.0.2.1/32"], Mode.TRANSPORT, ["192.0.2.2", "192.0.2.1"]),  # our own address: the local path
])
def test_primed_next_hops(peer, local_ts, mode, wanted):
    gw = Recorder()
    Gateway._prime_next_hops(gw, out_sa(peer, local_ts, mode))
    assert gw.wanted == wanted
