#!/usr/bin/env python3
"""Rekey under load as a measurement (issue 4 point 8): what a steady stream loses while SAs are rekeyed.

    .venv/bin/python scripts/rekey_load.py [--cases NAME ...] [--out FILE]

(as root). Each case builds a fresh site-to-site lab (hostA - gwA = wire = gwB - hostB, xdpsec/lab.py), brings
an IKEv2-keyed tunnel up (PSK, IKE aes128gcm16-prfsha256-x25519, ESP aes128gcm16, tunnel mode), and sends a
numbered UDP datagram stream each way (after a 3-packet ping that resolves the hosts' link-layer addresses, as
the tests do) at a fixed rate for a fixed time (the `Streams` helper of
tests/netns/test_rekey.py), while the child SA and the IKE SA are rekeyed by a fixed plan, one step a second
(1.5 s against strongSwan):

* `xdpsec-1w`, `xdpsec-2w`: xdpsec on both gateways with 1 or 2 workers; the plan of tests/netns/test_rekey.py,
  7 child and 4 IKE rekeys started by gwA or gwB, one started by both at once (a collision if the requests
  cross, RFC 7296 §2.8.1).
* `strongswan-initiates`, `xdpsec-initiates`: xdpsec on gwA, strongSwan 5.9 (charon, kernel-libipsec) on gwB;
  the plan of tests/interop/test_rekey.py, 4 child and 2 IKE rekeys, all started by charon (`swanctl --rekey`)
  or all by xdpsec (`xdpsec rekey`).

Each receiver counts every datagram number: lost (never arrived), duplicated (arrived more than once). A step's
time runs from the rekey request to gwA's `xdpsec status`/`ike-sas` showing the new SA (polled every 50 ms, so
it includes the poll interval and the control socket's round trip). Rekeys done count the distinct outbound
child SPIs and IKE SPIs gwA showed, minus the first. Writes docs/bench/rekey-<UTC timestamp>.json (or --out);
scripts/bench_report.py renders the newest one into docs/BENCHMARKS.md. A case that fails is recorded with its
reason and the run goes on; nothing is asserted here (the tests assert).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.interop import test_rekey as swan  # noqa: E402
from tests.netns import test_rekey as pair  # noqa: E402
from xdpsec.lab import Lab  # noqa: E402
from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair  # noqa: E402
from xdpsec.labswan import CHARON  # noqa: E402

CASES = ("xdpsec-1w", "xdpsec-2w", "strongswan-initiates", "xdpsec-initiates")
LAB_PREFIX = "xsb"  # the benchmarks' lab namespaces, apart from the tests' (xst...)


def _count(report: dict, rate: int, seconds: float) -> dict:
    """Streams.report() (ranges of datagram numbers) as counts per direction."""
    sent = int(rate * seconds)
    out = {}
    for direction, r in report.items():
        lost = sum(last - first + 1 for first, last in r["lost"])
        dup = sum(last - first + 1 for first, last in r["dup"])
        out[direction] = {"sent": sent, "received": sent - lost, "lost": lost, "duplicated": dup,
                          "lost_ranges": r["lost"], "dup_ranges": r["dup"]}
    return out


def _timed(step) -> float:
    t0 = time.monotonic()
    step()
    return round(time.monotonic() - t0, 3)


def _warm_up(lab: Lab) -> int:
    """A ping through the tunnel before the stream, as the tests do: the gateways resolve hostA's and hostB's
    link-layer addresses now. Without it the first run lost datagrams 4 to 22-46 of each stream that xdpsec
    delivers, before any rekey (neighbour resolution, not the rekey). Returns the replies received, of 3."""
    return lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=8).received


def _xdpsec_case(lab: Lab, workers: int, work: Path) -> dict:
    spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=workers)
    a, b = site_sides(lab, workers=workers)
    pa, pb = write_pair(work, a, b, spec)
    gws = Gateways(lab)
    try:
        gws.start("gwA", pa, a.instance, log_level="warning")
        gws.start("gwB", pb, b.instance, log_level="warning")
        gws.wait_ready()
        pair._wait(lambda: pair._child(gws, "gwA")["state"] == pair._child(gws, "gwB")["state"] == "installed",
                   "installed", 20.0)
        warm = _warm_up(lab)
        children, ikes = {pair._child(gws, "gwA")["out_spi"]}, set(pair._ike_spis(gws, "gwA"))
        steps = []
        with pair.Streams(lab, pair.SECONDS) as streams:
            time.sleep(pair.REKEY_EVERY)
            for who, what in pair.PLAN:
                step = {"by": who, "what": what}
                try:
                    step["seconds"] = _timed(lambda who=who, what=what: pair._step(gws, who, what))
                except AssertionError as exc:
                    step["error"] = str(exc)
                steps.append(step)
                children.add(pair._child(gws, "gwA")["out_spi"])
                ikes |= pair._ike_spis(gws, "gwA")
                time.sleep(pair.REKEY_EVERY)
            report = streams.report()
        return {"warm_up_pings": warm, "rate": pair.RATE, "seconds": pair.SECONDS, "steps": steps,
                "child_rekeys": len(children) - 1, "ike_rekeys": len(ikes) - 1,
                "streams": _count(report, pair.RATE, pair.SECONDS)}
    finally:
        codes = gws.stop()
        if any(codes.values()):
            print(f"rekey_load: gateways exited with {codes}", file=sys.stderr)


def _swan_case(lab: Lab, by_swan: bool, work: Path) -> dict:
    mixed = swan.Mixed(lab, work)
    try:
        warm = _warm_up(lab)
        children, ikes = {mixed.child()["out_spi"]}, set(mixed.ike_spis())
        steps = []
        with pair.Streams(lab, swan.SECONDS, rate=swan.RATE) as streams:
            time.sleep(swan.REKEY_EVERY)
            for what in swan.PLAN:
                step = {"by": "gwB (strongSwan)" if by_swan else "gwA (xdpsec)", "what": what}
                try:
                    step["seconds"] = _timed(lambda what=what: mixed.rekey(by_swan, what))
                except (AssertionError, swan.SwanError) as exc:
                    step["error"] = str(exc)
                steps.append(step)
                children.add(mixed.child()["out_spi"])
                ikes |= mixed.ike_spis()
                time.sleep(swan.REKEY_EVERY)
            report = streams.report()
        return {"warm_up_pings": warm, "rate": swan.RATE, "seconds": swan.SECONDS, "steps": steps,
                "child_rekeys": len(children) - 1, "ike_rekeys": len(ikes) - 1,
                "streams": _count(report, swan.RATE, swan.SECONDS)}
    finally:
        mixed.close()


def run_case(name: str) -> dict:
    """One case in a lab of its own, always torn down; its figures, or {"error": ...}."""
    t0 = time.monotonic()
    with Lab(prefix=LAB_PREFIX, tag="rk" + secrets.token_hex(2)) as lab, \
            tempfile.TemporaryDirectory(prefix="xdpsec-rekey-") as tmp:
        lab.site_to_site()
        try:
            if name.startswith("xdpsec-") and name.endswith("w"):
                result = _xdpsec_case(lab, int(name[len("xdpsec-"):-1]), Path(tmp))
            elif not CHARON.exists():
                result = {"error": f"strongSwan's charon is not installed ({CHARON})"}
            else:
                result = _swan_case(lab, name == "strongswan-initiates", Path(tmp))
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    result["case"] = name
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--out", type=Path, help="JSON file (default docs/bench/rekey-<timestamp>.json)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("run as root: network namespaces, XDP and AF_XDP need it")
    started = time.gmtime()
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", started), "loadavg_at_start": os.getloadavg(),
              "cores": os.cpu_count(), "method": " ".join(__doc__.split("\n\n")[2:5]).split(),
              "cases": []}
    for name in args.cases:
        print(f"rekey_load: {name} ...", file=sys.stderr, flush=True)
        result["cases"].append(run_case(name))
    result["loadavg_at_end"] = os.getloadavg()
    result["method"] = " ".join(result["method"])
    out = args.out or ROOT / "docs" / "bench" / f"rekey-{time.strftime('%Y%m%d-%H%M%S', started)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for case in result["cases"]:
        figures = {d: (s["lost"], s["duplicated"]) for d, s in case.get("streams", {}).items()}
        print(f"{case['case']}: lost, duplicated {figures} {case.get('error', '')}")
    print(f"written to {out}")
    return 1 if any("error" in c for c in result["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
