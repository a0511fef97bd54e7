"""Issue 5 point 6, end to end: with ``[debug] key_export`` set, tshark decrypts a capture of the lab.

    hostA ── gwA ══ wire (br0: tcpdump here) ══ gwB ── hostB
              └ key_export: esp_sa, ikev2_decryption_table

The capture is taken on the `wire` bridge, not on a gateway: frames the workers send with XDP_TX or from
AF_XDP never pass a gateway's own capture point. The initiator traps (start_action = "trap"), so IKE runs
only once the capture is armed and the pcap holds IKE_SA_INIT, IKE_AUTH and the ESP traffic. tshark is given
the exported records with ``-o uat:...`` (the same records Wireshark reads from its profile directory) and
must show the inner ICMP packets carrying labconf.MARKER and the identities inside IKE_AUTH's Encrypted
payload; without the records it must show neither (the control).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from xdpsec.keyexport import ESP_FILE, IKEV2_FILE
from xdpsec.labconf import MARKER, PairSpec

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt install tshark)")]

CAPTURE_LIMIT = 2000  # packets: bounds the pcap whatever happens
MARKER_PINGS = 5


def wait_for(predicate, timeout: float = 20.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(step)
    return result


def uat_options(directory: Path) -> list[str]:
    """``-o uat:TABLE:RECORD`` for every record (not comment) of the two exported tables."""
    opts = []
    for table in (ESP_FILE, IKEV2_FILE):
        for line in (directory / table).read_text().splitlines():
            if line and not line.startswith("#"):
                opts += ["-o", f"uat:{table}:{line}"]
    return opts


def tshark(pcap: Path, options: list[str], fields: list[str], display_filter: str) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE", *options,
           "-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_tshark_decrypts_ike_and_esp_of_a_lab_capture(pair, tmp_path):
    keys = {"gwA": tmp_path / "keys-gwA", "gwB": tmp_path / "keys-gwB"}
    extra = tuple(f'[debug]\nkey_export = "{keys[n]}"' for n in ("gwA", "gwB"))
    spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1, initiator_action="trap")
    lab, gws, (ga, gb) = pair(spec, extra=extra)
    dst = lab.addr["hostB"]["v4"]

    cap = lab.capture("wire", "br0", count=CAPTURE_LIMIT)
    try:
        # The first packets only trigger the acquire (dropped in XDP); IKE then brings the child up.
        lab.run("hostA", "ping", "-c", "3", "-i", "0.3", "-W", "1", dst, check=False)
        assert wait_for(lambda: len(gws.query(ga, "sas")) == 2 and len(gws.query(gb, "sas")) == 2), gws.log(ga)
        ping = lab.run("hostA", "ping", "-c", str(MARKER_PINGS), "-i", "0.2", "-W", "2", "-p", MARKER.hex(), dst,
                       check=False)
        assert f"{MARKER_PINGS} received" in ping.stdout, ping.stdout
    finally:
        pcap = cap.stop()

    for node, directory in keys.items():
        for table in (ESP_FILE, IKEV2_FILE):
            assert (directory / table).stat().st_mode & 0o077 == 0, (node, table)
    options = uat_options(keys["gwA"])
    assert sum(o.startswith("uat:esp_sa:") for o in options) == 2, options  # both SAs of the child
    assert sum(o.startswith("uat:ikev2_decryption_table:") for o in options) == 1, options

    # ESP: every echo request and reply with the marker shows up decrypted, as ICMP inside ESP.
    marker = MARKER.hex()
    rows = tshark(pcap, options, ["esp.spi", "icmp.type", "data.data"], "esp && icmp")
    with_marker = [r for r in rows if marker in r[2]]
    assert len(with_marker) >= 2 * MARKER_PINGS, rows
    assert {r[1] for r in with_marker} == {"8", "0"}, with_marker  # requests one way, replies the other
    blind = tshark(pcap, [], ["esp.spi"], "esp && icmp")
    assert blind == [], blind

    # IKE: the IKE_AUTH request and response are decrypted; their ID payloads are only inside SK.
    auth = tshark(pcap, options, ["isakmp.exchangetype", "isakmp.id.type"], "isakmp.exchangetype == 35")
    assert len(auth) >= 2 and all(r[1] for r in auth), auth
    blind_auth = tshark(pcap, [], ["isakmp.exchangetype", "isakmp.id.type"], "isakmp.exchangetype == 35")
    assert blind_auth and not any(r[1] for r in blind_auth), blind_auth
