"""The benchmark's report: medians over rounds, the ratios the project targets (issue 6), docs/BENCHMARKS.md
and its PNG plots.

Input is the raw result that scripts/bench.py writes to docs/bench/<date>.json, so a report can be rebuilt
from a stored run (``python scripts/bench_report.py docs/bench/<date>.json``) without measuring again.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from pathlib import Path


def _kpps(m: dict, key: str) -> float:
    """A search's rate; one in which no probe passed has none (listed under failures instead of as a 0)."""
    if not m[key]["pps"]:
        raise ValueError("no probe passed")
    return m[key]["pps"] / 1e3


#: (key, row label, unit, reader of one run's metrics)
ROWS = (
    ("tcp_1", "TCP, 1 stream", "Mbit/s", lambda m: m["tcp_1"]["mbit_s"]),
    ("tcp_4", "TCP, 4 streams", "Mbit/s", lambda m: m["tcp_4"]["mbit_s"]),
    ("udp_64", "UDP 64 B, < 0.1 % loss", "kpps", lambda m: _kpps(m, "udp_64")),
    ("udp_512", "UDP 512 B, < 0.1 % loss", "kpps", lambda m: _kpps(m, "udp_512")),
    ("udp_1400", "UDP 1400 B, < 0.1 % loss", "kpps", lambda m: _kpps(m, "udp_1400")),
    ("udp_imix", "UDP IMIX, < 0.1 % loss", "kpps", lambda m: _kpps(m, "udp_imix")),
    ("ping_median", "ping RTT, median", "ms", lambda m: m["ping"]["median_ms"]),
    ("ping_p99", "ping RTT, p99", "ms", lambda m: m["ping"]["p99_ms"]),
    ("cpu_64", "CPU per packet, both gateways, 64 B", "µs", lambda m: m["udp_64"]["cpu_us_per_packet"]["total"]),
    ("cpu_512", "CPU per packet, both gateways, 512 B", "µs", lambda m: m["udp_512"]["cpu_us_per_packet"]["total"]),
    ("cpu_1400", "CPU per packet, both gateways, 1400 B", "µs", lambda m: m["udp_1400"]["cpu_us_per_packet"]["total"]),
    ("cpu_imix", "CPU per packet, both gateways, IMIX", "µs", lambda m: m["udp_imix"]["cpu_us_per_packet"]["total"]),
    ("idle_cpu", "gateway CPU with no traffic", "% of a core",
     lambda m: sum(m["idle_cpu_percent"].values())),
)
AES_SIZES = ("64", "512", "1400")
PLOTS = ("tcp", "udp", "latency", "cpu")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(result: dict) -> dict:
    """{"cases": {case: {key: {"median", "n", "values"}}}, "aes_gcm": {size: {kind: median calls/s}}}."""
    cases = {}
    for case in result["cases"]:
        mine = [r for r in result["runs"] if r["case"] == case["name"] and r["error"] is None]
        rows = {}
        for key, _label, _unit, read in ROWS:
            values = []
            for r in mine:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    values.append(read(r["metrics"]))
            rows[key] = {"median": _median(values), "n": len(values), "values": values}
        cases[case["name"]] = rows
    aes = {size: {kind: _median([round_[size][kind] for round_ in result["aes_gcm"]])
                  for kind in ("encrypt", "encrypt_into")}
           for size in AES_SIZES if result["aes_gcm"]}
    summary = {"cases": cases, "aes_gcm": aes}
    summary["ratios"] = ratios(result, summary)
    return summary


# --- the targets ----------------------------------------------------------------------------------------------


def _get(summary: dict, case: str, key: str) -> float | None:
    return summary["cases"].get(case, {}).get(key, {}).get("median")


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def ratios(result: dict, summary: dict) -> list[dict]:
    """The issue's four targets, each a ratio of medians from this run: value, target, met."""
    n = max((c["workers"] for c in result["cases"]), default=1)
    many = f"xdpsec-{n}w-1sa"
    one = "xdpsec-1w-1sa"
    aes64 = summary["aes_gcm"].get("64", {}).get("encrypt_into")
    plain, swan = _get(summary, "plain", "ping_median"), _get(summary, "strongswan", "ping_median")
    added_x = _get(summary, one, "ping_median") - plain if plain and _get(summary, one, "ping_median") else None
    added_s = swan - plain if plain and swan else None
    rows = []
    for key, label in (("tcp_1", "TCP 1 stream"), ("tcp_4", "TCP 4 streams")):
        # xdpsec at its best in this run: 1 worker or all of them, whichever carried more
        best = max((one, many), key=lambda case: _get(summary, case, key) or 0.0)
        rows.append({"name": f"{label}, xdpsec / strongSwan", "target": 5.0, "higher_is_better": True,
                     "how": f"{label}, the better of `{one}` and `{many}` (`{best}`) / `strongswan`",
                     "value": _ratio(_get(summary, best, key), _get(summary, "strongswan", key))})
    rows += [
        {"name": "one worker's 64-byte ESP rate / bare AES-GCM", "target": 0.5, "higher_is_better": True,
         "how": f"UDP 64 B kpps of `{one}` / `encrypt_into` 64 B calls/s",
         "value": _ratio(_get(summary, one, "udp_64"), aes64 / 1e3 if aes64 else None)},
        {"name": "added latency, xdpsec / strongSwan", "target": 0.25, "higher_is_better": False,
         "how": f"(median RTT of `{one}` − plain) / (median RTT of `strongswan` − plain)",
         "value": _ratio(added_x, added_s)},
    ]
    for key, label in (("udp_64", "UDP 64 B"), ("udp_imix", "UDP IMIX")):
        rows.append({"name": f"{n} workers / 1 worker, 100 SAs, {label}", "target": 0.85 * n,
                     "higher_is_better": True, "how": f"{label} of `xdpsec-{n}w-100sa` / `xdpsec-1w-100sa`",
                     "value": _ratio(_get(summary, f"xdpsec-{n}w-100sa", key),
                                     _get(summary, "xdpsec-1w-100sa", key))})
    for row in rows:
        v = row["value"]
        row["met"] = None if v is None else (v >= row["target"] if row["higher_is_better"] else v <= row["target"])
    return rows


# --- plots ----------------------------------------------------------------------------------------------------


def plots(result: dict, out_dir: Path) -> dict[str, Path]:
    """Grouped bar charts of the medians, one PNG per figure; {} if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed: no plots (.venv/bin/pip install matplotlib)", file=sys.stderr)
        return {}
    cases = result["cases"]
    summary = result["summary"]["cases"]
    figures = {
        "tcp": ("TCP throughput (iperf3)", "Mbit/s", [("tcp_1", "1 stream"), ("tcp_4", "4 streams")], True),
        "udp": ("UDP packet rate at < 0.1 % loss", "kpps",
                [("udp_64", "64 B"), ("udp_512", "512 B"), ("udp_1400", "1400 B"), ("udp_imix", "IMIX")], True),
        "latency": ("ping RTT hostA → hostB", "ms", [("ping_median", "median"), ("ping_p99", "p99")], True),
        "cpu": ("gateway CPU time per packet (gwA + gwB)", "µs",
                [("cpu_64", "64 B"), ("cpu_512", "512 B"), ("cpu_1400", "1400 B"), ("cpu_imix", "IMIX")], True),
    }
    paths = {}
    for name, (title, unit, series, log) in figures.items():
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            values = [summary[c["name"]][key]["median"] or 0 for c in cases]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(cases))]
            bars = ax.bar(xs, values, width, label=label)
            ax.bar_label(bars, labels=[_num(v) if v else "" for v in values], fontsize=6, rotation=90,
                         padding=2)
        ax.set_xticks(range(len(cases)), [c["label"].replace(", ", ",\n", 1) for c in cases], fontsize=7)
        ax.set_ylabel(unit)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
            ax.margins(y=0.25)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


# --- the document ---------------------------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    digits = 3 if abs(x) < 1 else 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0
    return f"{x:.{digits}f}"


def _generator_limited(result: dict, case: str, key: str) -> bool:
    return any(r["metrics"].get(key, {}).get("generator_limited") for r in result["runs"] if r["case"] == case)


def results_table(result: dict) -> str:
    cases = result["cases"]
    summary = result["summary"]["cases"]
    lines = ["| metric | unit | " + " | ".join(c["label"] for c in cases) + " |",
             "|---|---|" + "---|" * len(cases)]
    for key, label, unit, _read in ROWS:
        cells = []
        for c in cases:
            cell = _num(summary[c["name"]][key]["median"])
            if key.startswith("udp_") and summary[c["name"]][key]["median"] is not None and _generator_limited(
                    result, c["name"], key):
                cell += " ‡"
            cells.append(cell)
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aes_table(result: dict) -> str:
    aes = result["summary"]["aes_gcm"]
    lines = ["| payload | `encrypt` (k calls/s) | `encrypt_into` (k calls/s) | µs per `encrypt_into` |",
             "|---|---|---|---|"]
    for size, rates in aes.items():
        into = rates["encrypt_into"]
        lines.append(f"| {size} B | {_num(rates['encrypt'] / 1e3)} | {_num(into / 1e3)} | {_num(1e6 / into)} |")
    return "\n".join(lines)


def ratios_table(result: dict) -> str:
    lines = ["| target | measured as | value | target | |", "|---|---|---|---|---|"]
    for r in result["summary"]["ratios"]:
        verdict = "no data" if r["met"] is None else "**met**" if r["met"] else "not met"
        sign = "≥" if r["higher_is_better"] else "≤"
        lines.append(f"| {r['name']} | {r['how']} | {_num(r['value'])} | {sign} {_num(r['target'])} | {verdict} |")
    return "\n".join(lines)


def failures(result: dict) -> str:
    labels = {c["name"]: c["label"] for c in result["cases"]}
    out = []
    for r in result["runs"]:
        if r["error"]:
            out.append(f"* **{labels[r['case']]}**, round {r['round']}: failed: {r['error']}")
            continue
        for name, m in r["metrics"].items():
            if isinstance(m, dict) and "error" in m:
                out.append(f"* {labels[r['case']]}, round {r['round']}, `{name}`: failed: {m['error']}")
            elif isinstance(m, dict) and m.get("pps") == 0:
                losses = ", ".join(f"{p['loss_percent']:.1f} %" for p in m["probes"])
                out.append(f"* {labels[r['case']]}, round {r['round']}, `{name}`: no probe had < 0.1 % loss "
                           f"(losses {losses}; {m['overload_pps'] / 1e3:.1f} kpps delivered under overload)")
    return "\n".join(out) if out else "None: every case and metric was measured."


def _case_list(result: dict) -> str:
    return ", ".join(f"`{c['name']}`" for c in result["cases"])


def _busy(info: dict) -> str:
    """A warning when other work shared the machine: the 1-minute load average above its vCPUs at the start
    (at the end it mostly shows the benchmark's own last case, so it proves nothing about other work)."""
    loads = [float(x) for x in info.get("loadavg_at_start", [])[:1]]
    if not loads or max(loads) <= info["cores"]:
        return ""
    return (f" **This run shared the machine with other work** (1-minute load average {max(loads):.1f} at the start, on"
            f" {info['cores']} vCPUs): every figure, the AES-GCM ceiling included, is lower and noisier than on"
            " an idle machine.")


#: What the profiles say stands in the way of each target (docs/PERFORMANCE.md has the method and the tables).
#: The figures are the profiles', not this run's: rewrite this when a profile changes.
STANDING = """\
**What stands in the way**, from profiles of the same lab under load
([PERFORMANCE.md, "Under load in the lab"](PERFORMANCE.md#under-load-in-the-lab-where-a-workers-cpu-goes),
`scripts/profile_lab.py`; perf and py-spy):

* **TCP ≥ 5× strongSwan.** A loaded worker spends 27–33 µs of CPU per TCP packet per gateway: the interpreter
  49–68 %, the AEAD call 9–12 %, the kernel 17–37 %, and that kernel time is almost all the transmit kick
  (`sendto`), which in AF_XDP copy mode builds and copies an skb and runs the *next hop's* receive (the other
  gateway's XDP and UMEM copy, or the host's stack) before it returns. In this lab each worker also waits
  runnable about as long as it runs: two vCPUs carry the sender, the receiver and both gateways. Without any
  interpreter time, 10–15 µs of kernel and AEAD work per packet would remain (~65–100 kpps per worker, the
  bottom of the target), and only on a machine with a core per worker.
* **64-byte rate ≥ 50 % of bare AES-GCM.** The budget is ~1.5–2 µs per packet per gateway. Inside a loaded
  worker the AEAD call alone takes 1.6–1.8 µs and the copy-mode kernel work charged to the worker 3.4–7.8 µs:
  out of reach for any user-space data path over veth, which has no AF_XDP zero-copy.
* **Added latency ≤ ¼ of strongSwan's.** An idle ping's packet meets cold code at each of its four gateway
  passes (~100–200 µs each against ~10 µs warm, PERFORMANCE.md "Latency"), and under load a pinned worker
  waits for its CPU.
* **N workers ≥ 0.85 N.** Two workers per gateway put four workers, the sender and the receiver on two vCPUs;
  the ratio moves from run to run (2.27 and 1.89 in the one-round run of 2026-11-29 09:57, 1.18 and 0.85 in
  the three-round run of 11:19) and says
  whether a second worker helps here at all, not how xdpsec scales with a core per worker.

The per-packet loop stays in Python with `cryptography` (no C helper: PERFORMANCE.md, "What stands in the way
of each target", says why); what would move these figures is a NIC with AF_XDP zero-copy and a core per
worker, which this lab does not have."""


def _spd_cost_table(cost: dict) -> list[str]:
    """The classifier's cost per packet by SPD size: records from before the flow cache hold one average per
    size, later ones the walk and the cached decision (scripts/scale.py spd_cost)."""
    by_size = cost["ns_per_packet_by_policies"]
    head = ["| policies | " + " | ".join(by_size) + " |", "|---|" + "---|" * len(by_size)]
    if not all(isinstance(v, dict) for v in by_size.values()):
        return ["SPD walk in XDP, worst case (a packet no policy matches, so every row is visited), "
                f"BPF_PROG_TEST_RUN average over {cost['repeat']} runs:", "", *head,
                "| ns per packet | " + " | ".join(str(v) for v in by_size.values()) + " |"]
    rows = [(f"walk, flow not cached (median of {cost['walks']} single runs)", "walk"),
            (f"cached flow (median of {cost['walks']} single runs)", "cached"),
            (f"cached flow (kernel average over {cost['repeat']} runs)", "cached_avg")]
    return ["The classifier's cost per packet in ns, worst case (a packet no policy matches, so a walk visits every "
            "row), BPF_PROG_TEST_RUN; a single run includes ~300 ns of measurement overhead. A flow's first "
            "packet walks the SPD and files the decision in the flow cache (`xdpsec/bpf/include/spd.h`); the "
            "next ones take it from there:", "", *head,
            *("| " + label + " | " + " | ".join(str(round(v[key])) for v in by_size.values()) + " |"
              for label, key in rows)]


def render(result: dict, raw: Path, out: Path, plot_paths: dict[str, Path]) -> str:
    info, s = result["machine"], result["settings"]
    quick = result["quick"]
    raw_link = os.path.relpath(raw.resolve(), out.resolve().parent)
    figures = "\n\n".join(f"![{name}]({os.path.relpath(p.resolve(), out.resolve().parent)})"
                          for name, p in plot_paths.items())
    many = ", ".join(f"`{m}`" for m in s["many_sa_metrics"])
    n = max(c["workers"] for c in result["cases"])
    started = result["started"][:16].replace("T", " ")
    return f"""# Benchmarks

Run it (as root, from the repository; about 15 minutes on an idle machine, or 2 with `--quick`; more on a busy one):

    .venv/bin/python scripts/bench.py            # 3 rounds of every case: this document
    .venv/bin/python scripts/bench.py --quick    # 1 round, short probes: a smoke run

It rewrites this file, the plots in `docs/bench/*.png` and a raw JSON record `docs/bench/<date>.json`
(`python scripts/bench_report.py docs/bench/<date>.json` rebuilds the document from one). `--cases` picks cases,
`--repeats` the number of rounds. matplotlib draws the plots (`.venv/bin/pip install matplotlib`).

**This run**: `scripts/bench.py{' --quick' if quick else ''}` on {started} (UTC), {result['seconds']:.0f} s,
{s['repeats']} {'round' if s['repeats'] == 1 else 'rounds'}. Raw results: [`{raw_link}`]({raw_link}).

**Read these numbers as orders of magnitude.** One shared virtual machine with {info['cores']} vCPUs runs the
traffic generator, the receiver, both gateways and whatever else the machine does at the time: compare cases
of the same run, not numbers from different runs.{_busy(info)}
Where the time goes inside xdpsec, with profiles: [PERFORMANCE.md](PERFORMANCE.md).

## Where we stand against the targets (issue 6)

{ratios_table(result)}

{STANDING}

## Machine

| | |
|---|---|
| kernel | {info['kernel']} |
| OS | {info['os']} |
| CPU | {info['cpu']}, {info['cores']} vCPUs |
| memory | {info['memory_gib']} GiB |
| load average at start, end | {' '.join(info['loadavg_at_start'])}; {' '.join(info.get('loadavg_at_end', []))} |
| Python | {info['python']} |
| cryptography | {info['cryptography']} |
| xdpsec | {info['xdpsec']} |
| strongSwan | {info['strongswan']} |
| tools | {info['iperf3']}; {info['ping']} |

## Results (medians over rounds)

{results_table(result)}

‡ generator-limited in at least one round: the path carried everything the iperf3 senders could offer, so its
limit is higher than shown.

{figures}

### The ceiling: bare AES-GCM-128 in `cryptography`, same run

One call per packet with an 8-byte AAD, on one core of the same VM, while no case runs (median over rounds):

{aes_table(result)}

## Method

* **Topology**: the site-to-site lab of `xdpsec/lab.py`: hostA — gwA — wire — gwB — hostB, every link a veth
  pair between network namespaces (MTU 1500), `wire` a plain bridge. Traffic goes hostA (198.51.100.10) →
  hostB (198.51.100.130), IPv4. Every case builds a fresh lab and tears it down afterwards. Cases:
  {_case_list(result)} (`scripts/bench_cases.py`).
  * *plain forwarding*: gwA and gwB are kernel routers, no IPsec.
  * *xdpsec, N workers, S SAs*: `python -m xdpsec run` on gwA and gwB, ESP tunnel mode, AES-GCM-128 with a
    16-byte ICV (`aes128gcm16`, RFC 4106), manually keyed SAs with fresh random keys, N workers and N queues
    per veth. With 100 SAs, 99 children each protect one hostA UDP source port (40000–40098) and the
    child `net` the rest of the two networks; the UDP loads then send from 100 source ports 40000–40099
    (iperf3 `-P 100 --cport 40000`), one flow per SA. Only UDP is spread over the SAs (a child with UDP and
    TCP selectors makes four policies; the data path held at most 256 when the cases were written), so they measure
    {many} only.
  * *strongSwan (libipsec)*: charon 5.9 on gwA and gwB (`xdpsec/labswan.py`), userspace ESP (`kernel-libipsec`,
    a TUN device) since the kernel has no ESP; IKEv2 `aes128gcm16-prfsha256-x25519` with a PSK, ESP
    `aes128gcm16`, tunnel mode, always ESP-in-UDP 4500 (libipsec fakes a NAT, RFC 3948). Its `ipsec0` has MTU
    1400, so 1400-byte datagrams are fragmented before they are encrypted.
  * Before measuring, each tunnel case checks that pings cross and that the gateways' outbound SA counters saw
    them (traffic bypassing the gateways would fail the case).
* **Rounds**: {s['repeats']}; each round measures the AES-GCM ceiling, then every case in turn (interleaved so
  that the VM's slow drifts hit all cases alike). Tables and plots show medians over rounds.
* **TCP**: `iperf3 -t {s['tcp_seconds']:g} -w 4M -P 1` and `-P 4`, receiver-side throughput.
* **UDP**: iperf3 clients with `-u -l SIZE -b RATE -t {s['udp_seconds']:g} -w 4M`; IMIX is three clients at
  once, 7:4:1 packets of 64, 512 and 1400 bytes (the classic 594 and 1518-byte frames would not fit the tunnel
  and measure fragmentation). The rate is the highest *received* packet rate among probes with less than
  0.1 % loss (iperf3's receiver-side sequence gaps), found in {s['udp_probes']} probes per size: first as fast as
  the clients can send (`-b 0`; if that passes the cell is marked ‡), then 0.8 × the rate R carried under that
  overload, then bisection between the best passing and the lowest failing rate (at most 2 R), stepping down by
  0.6 × until a probe passes (`scripts/bench_traffic.py`, `udp_search`). A cell of 0 means no probe passed. An iperf3 UDP sender tops out around 100–140 kpps of small
  datagrams on one of these vCPUs, and shares the two vCPUs with everything else.
* **Latency**: `ping -c {s['ping_count']} -i {s['ping_interval']}` hostA → hostB on an idle path; median and p99
  (nearest rank). *Added latency* is a tunnel's median minus plain forwarding's.
* **CPU per packet**: user + system CPU time of every process of both gateways (xdpsec's coordinator and
  workers, or charon with its threads: the process session started for each, `/proc/<pid>/stat` fields 14–17)
  over the UDP probe that gave the reported rate, divided by the datagrams hostB received. It leaves out kernel
  work in softirq context (XDP, AF_XDP copies, libipsec's TUN device) and includes idle polling, shown by the
  *no traffic* row (both gateways over 0.5 s after start-up). Plain forwarding has no gateway processes.
* **AES-GCM ceiling**: `AESGCM.encrypt` and `encrypt_into` (into a preallocated buffer) for 64, 512 and 1400
  bytes, {s['aes_seconds']:g} s each, in the benchmark's own process between cases.
* **Ratios** are of medians within this run. The worker-scaling target (N workers ≥ 0.85 N × one worker with
  several SAs) cannot be judged on this {info['cores']}-vCPU machine: with N = {n}, the iperf3 sender and
  receiver, the kernel's forwarding and both gateways' workers (2 × {n} processes) all share {info['cores']}
  vCPUs, so a second worker per gateway competes with the load generator and the other gateway for the same
  cores instead of adding one. The ratio is reported as measured; it shows whether a second worker helps at
  all here, not how xdpsec scales on a machine with a core per worker.
* Nothing here is asserted: the script measures and reports; a case or metric that fails is listed below.

{scale_section(raw.parent, out)}

{rekey_section(raw.parent, out)}
## Failures

{failures(result)}
"""


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def scale_section(bench_dir: Path, out: Path) -> str:
    """The newest scripts/scale.py record (docs/bench/scale-*.json) as a section, or a line saying there is none."""
    runs = sorted(bench_dir.glob("scale-*.json"))
    if not runs:
        return "## Scale\n\nNo `scripts/scale.py` record in docs/bench/ yet.\n"
    raw = runs[-1]
    r = json.loads(raw.read_text())
    link = os.path.relpath(raw.resolve(), out.resolve().parent)
    n = r["tunnels"]
    lines = [f"## Scale: {n} tunnels (issue 4 point 7, issue 7 point 4)", "",
             f"`scripts/scale.py --tunnels {n}` on {r.get('when', '?')}; raw: [`{link}`]({link}).", ""]
    if "error" in r:
        lines += [f"**The run stopped**: `{r['error'].splitlines()[0]}`", ""]
    if "note" in r:
        lines += [f"*Note on this record*: {r['note']}", ""]
    rows = [("coordinator up (compile, workers), gwA", r.get("gw_start_s"), "s"),
            (f"all {n} tunnels up after that", None if "setup_s" not in r else r["setup_s"] - r["gw_start_s"], "s"),
            ("setup rate", r.get("tunnels_per_s"), "tunnels/s"),
            (f"rekey of all {n} children", r.get("rekey_s"), "s"),
            (f"delete of all {n} IKE SAs", r.get("terminate_s"), "s"),
            ("tunnels that lost their datagram, before / after rekey",
             None if "lost_after_rekey" not in r else f"{len(r['lost_before_rekey'])} / {len(r['lost_after_rekey'])}",
             "")]
    lines += ["| | value | unit |", "|---|---|---|"]
    lines += [f"| {label} | {_num(v) if isinstance(v, float) else ('—' if v is None else v)} | {unit} |"
              for label, v, unit in rows]
    lines += ["", "| gateway, phase | coordinator RSS (MiB) | coordinator CPU (s, cumulative) | worker RSS (MiB) |",
              "|---|---|---|---|"]
    for phase, label in (("usage_idle", "idle, no tunnel"), ("usage_up", "all up"),
                         ("usage_rekeyed", "rekeyed"), ("usage_down", "all deleted")):
        for node, u in sorted(r.get(phase, {}).items()):
            workers = ", ".join(_mib(w["rss_kib"]) for w in u["workers"])
            lines.append(f"| {node}, {label} | {_mib(u['coordinator']['rss_kib'])} | "
                         f"{u['coordinator']['cpu_s']:.1f} | {workers} |")
    cost = r.get("spd_cost")
    if cost:
        lines += ["", *_spd_cost_table(cost)]
    lines += ["", "**Method.** " + " ".join(" ".join(p.split()) for p in r.get("method", []))]
    return "\n".join(lines) + "\n"


def _cell(step: dict) -> str:
    return f"{step['seconds']:.2f}" if "seconds" in step else "failed"


def rekey_section(bench_dir: Path, out: Path) -> str:
    """The newest scripts/rekey_load.py record (docs/bench/rekey-*.json) as a section: what a numbered stream each
    way lost and got twice while child and IKE SAs were rekeyed, and how long each rekey took."""
    runs = sorted(bench_dir.glob("rekey-*.json"))
    if not runs:
        return "## Rekey under load\n\nNo `scripts/rekey_load.py` record in docs/bench/ yet.\n"
    raw = runs[-1]
    r = json.loads(raw.read_text())
    link = os.path.relpath(raw.resolve(), out.resolve().parent)
    lines = ["## Rekey under load (issue 4 point 8)", "",
             f"`scripts/rekey_load.py` on {r['when']}, 1-minute load average {r['loadavg_at_start'][0]:.1f} at the "
             f"start on {r['cores']} vCPUs; raw: [`{link}`]({link}).", "",
             "| case | datagrams/s each way, for | child / IKE rekeys done | A→B sent, lost, duplicated | "
             "B→A sent, lost, duplicated | rekey time, median / max (s) |", "|---|---|---|---|---|---|"]
    failed = []
    for c in r["cases"]:
        if "error" in c:
            failed.append(f"* `{c['case']}`: failed: {c['error'].splitlines()[0]}")
            continue
        streams = [c["streams"][d] for d in ("A->B", "B->A")]
        times = [s["seconds"] for s in c["steps"] if "seconds" in s]
        took = f"{statistics.median(times):.2f} / {max(times):.2f}" if times else "–"
        lines.append(f"| `{c['case']}` | {c['rate']}, {c['seconds']:g} s | {c['child_rekeys']} / {c['ike_rekeys']} | "
                     + " | ".join(f"{s['sent']}, {s['lost']}, {s['duplicated']}" for s in streams) + f" | {took} |")
        failed += [f"* `{c['case']}`: step {i + 1} ({s['what']} by {s['by']}) not seen: {s['error'].splitlines()[0]}"
                   for i, s in enumerate(c["steps"]) if "error" in s]
    lines += ["", "Each rekey in plan order (seconds from the request until gwA shows the new SA):", "",
              "| case | rekeys, in order: what, by whom, seconds |", "|---|---|"]
    for c in r["cases"]:
        if "steps" in c:
            lines.append(f"| `{c['case']}` | " + ", ".join(f"{s['what']} by {s['by']} {_cell(s)}"
                                                           for s in c["steps"]) + " |")
    if failed:
        lines += ["", *failed]
    lines += ["", "**Method.** " + r["method"]]
    return "\n".join(lines) + "\n"


def write(result: dict, raw: Path, out: Path) -> None:
    plot_paths = plots(result, raw.parent)
    out.write_text(render(result, raw, out, plot_paths))


def main(argv: list[str]) -> int:
    raw = Path(argv[0])
    result = json.loads(raw.read_text())
    result["summary"] = summarize(result)
    out = Path(argv[1]) if len(argv) > 1 else raw.parent.parent / "BENCHMARKS.md"
    write(result, raw, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
