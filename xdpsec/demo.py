"""The quick start's main job: a lab with xdpsec gateways passing protected traffic, and proof of it.

    scripts/lab       (= scripts/setup.sh, then `python -m xdpsec.demo`)

Builds the namespace lab (xdpsec/lab.py), starts two tunnel-mode gateways (gwA, gwB: AES-GCM-128, IPv4 and
IPv6 inside) and a transport-mode host pair (hostC, hostD: AES-256-GCM), sends pings and a 20 MB TCP transfer
through them while capturing between the gateways, then prints the SAs and counters as `xdpsec sas` and
`xdpsec stats` show them and checks the capture: every IP packet between the gateways is ESP, and the
plaintext marker sent by hostA never appears on that wire. Exit 0 when everything held.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from xdpsec.lab import Lab, cleanup_stale
from xdpsec.labconf import MARKER, Gateways, PairSpec, host_sides, site_sides, wire_report, write_pair


def _say(ok: bool, what: str) -> bool:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    return ok


def run(queues: int = 2, size: int = 20 * 2**20) -> int:
    cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="xdpsec-demo-"))
    results = []
    with Lab(queues=queues) as lab:
        lab.site_to_site()
        lab.host_to_host()
        gws = Gateways(lab)
        side_a, side_b = site_sides(lab, workers=queues)
        pa, pb = write_pair(work / "site", side_a, side_b, PairSpec(mode="tunnel", proposal="aes128gcm16",
                                                                    workers=queues))
        side_c, side_d = host_sides(lab)
        pc, pd = write_pair(work / "host", side_c, side_d, PairSpec(mode="transport", proposal="aes256gcm16",
                                                                    workers=1))
        for node, path, side in (("gwA", pa, side_a), ("gwB", pb, side_b), ("hostC", pc, side_c),
                                 ("hostD", pd, side_d)):
            gws.start(node, path, side.instance)
        print(f"lab {lab.run_name}: hostA - gwA = gwB - hostB (tunnel), hostC = hostD (transport); "
              "compiling XDP and starting gateways ...")
        try:
            gws.wait_ready()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        wan_a, wan_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
        cap = lab.capture("wire", "br0")  # a passive observer on the wire between the gateways
        print("\ntraffic through the tunnel (hostA -> hostB):")
        ping4 = lab.ping("hostA", lab.addr["hostB"]["v4"], count=5)
        results.append(_say(ping4.received >= 4, f"ping IPv4: {ping4.received}/{ping4.sent} replies"))
        ping6 = lab.ping("hostA", lab.addr["hostB"]["v6"], count=5)
        results.append(_say(ping6.received >= 4, f"ping IPv6: {ping6.received}/{ping6.sent} replies"))
        lab.run("hostA", "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(),
                lab.addr["hostB"]["v4"], check=False)
        xfer = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"]["v4"], size=size)
        results.append(_say(xfer.ok, f"TCP {xfer.bytes_sent / 2**20:.0f} MB, SHA-256 "
                                     f"{'matches' if xfer.ok else 'DIFFERS'} "
                                     f"({xfer.bytes_sent * 8 / xfer.seconds / 1e6:.0f} Mbit/s)"))
        pcap = cap.stop()
        seen = wire_report(pcap, wan_a, wan_b)
        results.append(_say(seen["esp"] > 0 and seen["other"] == 0 and seen["marker"] == 0,
                            f"wire between gateways: {seen['esp']} ESP packets, {seen['other']} other IP packets, "
                            f"{seen['marker']} with the plaintext marker"))
        print("\ntransport mode (hostC -> hostD):")
        ping_t = lab.ping("hostC", lab.addr["hostD"]["v4"], count=5)
        results.append(_say(ping_t.received >= 4, f"ping IPv4: {ping_t.received}/{ping_t.sent} replies"))
        for node in ("gwA", "gwB", "hostC"):
            for cmd in ("sas", "stats"):
                print(f"\n$ xdpsec {cmd} -i {gws.instances[node]}     # on {node}")
                sys.stdout.flush()
                subprocess.run([sys.executable, "-m", "xdpsec", cmd, "-i", gws.instances[node]], check=False)
        codes = gws.stop()
        results.append(_say(all(c == 0 for c in codes.values()), f"gateways stopped cleanly: {codes}"))
    ok = all(results)
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'}; configs and logs in {work}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdpsec.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--queues", type=int, default=2, help="rx/tx queues per veth = workers per gateway")
    ap.add_argument("--size", type=int, default=20 * 2**20, help="bytes of the TCP transfer")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("xdpsec demo: run as root (namespaces, XDP and AF_XDP need it)", file=sys.stderr)
        return 2
    return run(args.queues, args.size)


if __name__ == "__main__":
    sys.exit(main())
