"""Two xdpsec gateways in the namespace lab negotiate a hybrid post-quantum IKE SA (x25519 + ML-KEM-768 over
IKE_INTERMEDIATE, RFC 9370/9242) from the configuration's proposal string, and the child SA carries traffic.

    hostA -- gwA ==== IKE_SA_INIT, IKE_INTERMEDIATE (ML-KEM), IKE_AUTH; then ESP ==== gwB -- hostB
"""

from __future__ import annotations

import pytest

from tests.netns.test_ike_e2e import wait_for_sas
from xdpsec.crypto.kem import Kem
from xdpsec.labconf import MARKER, PairSpec, wire_report

pytestmark = pytest.mark.netns

PQ = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"


def test_hybrid_ike_tunnel_passes_traffic(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1,
                                       ike_proposal=PQ))
    assert len(wait_for_sas(gws, ga, 2)) == 2, gws.log(ga)
    assert len(wait_for_sas(gws, gb, 2)) == 2, gws.log(gb)
    for gw in (ga, gb):
        (ike,) = gws.query(gw, "ike-sas")
        assert ike["state"] == "established", ike
        assert ike["algorithms"]["addke"] == [Kem.ML_KEM_768], ike  # `xdpsec ike-sas` shows the extra exchange
    dst = lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0")
    assert lab.ping("hostA", dst, count=5, timeout=8).received >= 4
    lab.run("hostA", "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), dst, check=False)
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["esp"] >= 8 and seen["marker"] == 0, seen
