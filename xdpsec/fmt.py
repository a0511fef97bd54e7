"""Human output of the `xdpsec` command: the control socket's results as aligned, compact tables.

Meant to be read at 3 a.m.: SAs grouped by child like ``swanctl --list-sas`` (one line per child with what
both directions share, then one line per SA), every count with thousands separators, drop reasons by the
names `xdpsec.abi.drop_name` gives them, zero counts left out. `status` fits one screen: what runs, each
connection's children with their SPIs, the top drop reasons. `top` frames show rates with SI prefixes
(``12.3 Mb/s``). `stats` also shows each worker's loop: rounds, the mean rx batch (frames per busy round),
the mean tx batch (frames per kick) and its sleeps in poll(), means since the worker started. Each renderer takes the result shape the coordinator returns (see xdpsec/coordinator.py,
`_cmd_*`) and returns text without a trailing newline; --json output bypasses this module entirely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NONE = "-"
#: IANA protocol numbers a policy is likely to name; others are shown as numbers.
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 58: "ipv6-icmp", 132: "sctp"}


def num(n: int) -> str:
    return f"{n:,}"


def align(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows of cells as lines with every column padded to its widest cell; columns in `right` are numbers."""
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def drops_text(drops: Mapping[str, int]) -> str:
    """``replay 3, auth_failed 1``: largest first, zeros left out, ``-`` if nothing was dropped."""
    nonzero = sorted(((n, reason) for reason, n in drops.items() if n), key=lambda t: (-t[0], t[1]))
    return ", ".join(f"{reason} {num(n)}" for n, reason in nonzero) or NONE


def duration(seconds: float) -> str:
    """``3d 4h 12m``, ``4m 12s``: the two largest units, enough to tell "just restarted" from "up for weeks"."""
    s = int(seconds)
    parts = [(s // 86400, "d"), (s // 3600 % 24, "h"), (s // 60 % 60, "m"), (s % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{v}{unit}" for v, unit in parts[:2])


# -- sas ---------------------------------------------------------------------------------------------------


def _child_line(sa: Mapping[str, Any]) -> str:
    encap = f", udp {sa['encap']}" if sa["encap"] else ""  # RFC 3948 UDP encapsulation: ports local->remote
    return (
        f"{sa['name']}: {sa['protocol']} {sa['mode']} {sa['transform']}, "
        f"{sa['local']} <-> {sa['remote']}{encap}"
    )


def _sa_row(sa: Mapping[str, Any]) -> list[str]:
    if sa["direction"] == "out":
        position = f"seq {num(sa['seq'])}"
    else:
        position = f"window {num(sa['replay_window'])}"
    return [
        f"  #{sa['index']}",
        sa["direction"],
        sa["spi"],
        f"worker {sa['worker']}",
        f"{num(sa['packets'])} packets",
        f"{num(sa['bytes'])} bytes",
        position,
        f"drops: {drops_text(sa['drops'])}" if any(sa["drops"].values()) else "",
    ]


def render_sas(sas: Sequence[Mapping[str, Any]]) -> str:
    if not sas:
        return "no SAs installed"
    # Both directions of a child share a heading when they agree on everything but direction and SPI.
    order = sorted(sas, key=lambda sa: (sa["name"], _child_line(sa), sa["direction"] != "in", sa["index"]))
    lines = align([_sa_row(sa) for sa in order], right=(4, 5))
    out, heading = [], None
    for sa, line in zip(order, lines, strict=True):
        if _child_line(sa) != heading:
            heading = _child_line(sa)
            out.append(heading)
        out.append(line)
    return "\n".join(out)


# -- policies ----------------------------------------------------------------------------------------------


def render_policies(policies: Sequence[Mapping[str, Any]]) -> str:
    if not policies:
        return "no policies installed"
    # The order the SPD evaluates them in: by direction, lower priority first (RFC 4301 §4.4.1).
    order = sorted(policies, key=lambda p: (p["direction"] != "out", p["priority"], p["id"]))
    rows = [["ID", "NAME", "DIR", "PRIO", "ACTION", "SRC", "DST", "PROTO", "SPORT", "DPORT", "SA", "HITS"]]
    for p in order:
        rows.append(
            [
                str(p["id"]),
                p["name"],
                p["direction"],
                str(p["priority"]),
                p["action"],
                p["src"],
                p["dst"],
                PROTOCOLS.get(p["proto"], str(p["proto"])),
                str(p["sports"]),
                str(p["dports"]),
                NONE if p["sa"] is None else f"#{p['sa']}",
                num(p["hits"]),
            ]
        )
    return "\n".join(align(rows, right=(0, 3, 11)))


# -- stats -------------------------------------------------------------------------------------------------


def _workers_table(workers: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [["WORKER", "PID", "STATE", "RESTARTS", "RX", "TX", "HANDOFF IN", "HANDOFF OUT", "DROPS"]]
    for w in sorted(workers, key=lambda w: w["id"]):
        rows.append(
            [
                str(w["id"]),
                str(w["pid"]),
                "up" if w["alive"] else "DEAD",
                num(w["restarts"]),
                num(w["rx"]),
                num(w["tx"]),
                num(w["handoff_in"]),
                num(w["handoff_out"]),
                num(sum(w["drops"].values())),
            ]
        )
    return align(rows, right=(0, 1, 3, 4, 5, 6, 7, 8))


def ratio(n: int, d: int) -> str:
    """``12.5``: a mean to one decimal, ``-`` when there is nothing to divide by."""
    return f"{n / d:.1f}" if d else NONE


def _loop_table(workers: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per worker: how its loop batches (xdpsec.worker.LoopStats). A worker without the counters (dead,
    not answering) gets dashes."""
    rows = [["WORKER", "ROUNDS", "BUSY", "FRAMES/BUSY", "KICKS", "FRAMES/KICK", "SLEEPS"]]
    for w in sorted(workers, key=lambda w: w["id"]):
        loop = w.get("loop") or {}
        if not loop:
            rows.append([str(w["id"])] + [NONE] * 6)
            continue
        rows.append(
            [
                str(w["id"]),
                num(loop["rounds"]),
                num(loop["busy_rounds"]),
                ratio(loop["frames"], loop["busy_rounds"]),
                num(loop["kicks"]),
                ratio(loop["kick_frames"], loop["kicks"]),
                num(loop["sleeps"]),
            ]
        )
    return align(rows, right=range(7))


def _drops_table(xdp_drops: Mapping[str, int], workers: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per reason that dropped anything: where it happened (classifier, each worker) and the total."""
    workers = sorted(workers, key=lambda w: w["id"])
    sources = [xdp_drops] + [w["drops"] for w in workers]
    totals: dict[str, int] = {}
    for source in sources:
        for reason, n in source.items():
            totals[reason] = totals.get(reason, 0) + n
    reasons = sorted((r for r, n in totals.items() if n), key=lambda r: (-totals[r], r))
    if not reasons:
        return ["no drops"]
    rows = [["DROP REASON", "XDP"] + [f"W{w['id']}" for w in workers] + ["TOTAL"]]
    for reason in reasons:
        rows.append([reason] + [num(s.get(reason, 0)) for s in sources] + [num(totals[reason])])
    return align(rows, right=range(1, len(rows[0])))


def render_stats(stats: Mapping[str, Any]) -> str:
    workers = stats["workers"]
    xdp = stats["xdp"]
    counters = [["XDP CLASSIFIER", ""]] + [[name, num(n)] for name, n in xdp["stats"].items()]
    parts = [_workers_table(workers) if workers else ["no workers"]]
    if any(w.get("loop") for w in workers):  # a gateway older than the loop counters has none
        parts.append(_loop_table(workers))
    parts += [
        align(counters, right=(1,)),
        _drops_table(xdp["drops"], workers),
    ]
    ike = {name: n for name, n in (stats.get("ike") or {}).items() if n}
    if ike:  # the IKE core's events: malformed, unknown_spi, cookie_sent, rekeys, retransmissions ...
        parts.append(align([["IKE", ""]] + [[name, num(n)] for name, n in sorted(ike.items())], right=(1,)))
    limits = {name: n for name, n in (stats.get("limits") or {}).items() if n}
    if limits:
        parts.append(align([["LIMITS REACHED", ""]] + [[name, num(n)] for name, n in sorted(limits.items())],
                           right=(1,)))
    return "\n\n".join("\n".join(part) for part in parts)


# -- status ------------------------------------------------------------------------------------------------


def _workers_summary(workers: Sequence[Mapping[str, Any]]) -> str:
    up = [w for w in workers if w["alive"]]
    dead = ", ".join(f"W{w['id']}" for w in sorted(workers, key=lambda w: w["id"]) if not w["alive"])
    restarts = sum(w["restarts"] for w in workers)
    return (f"{len(up)} of {len(workers)} up" + (f" ({dead} dead)" if dead else "")
            + f", {num(restarts)} restart{'s' if restarts != 1 else ''}")


def _connections_table(connections: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per child; the connection's columns only on its first row, as swanctl --list-conns nests."""
    rows = [["CONNECTION", "KEYING", "STATE", "PEER", "CHILD", "CHILD STATE", "OUT SPI", "IN SPI"]]
    for conn in connections:
        lead = [conn["name"], conn["keying"], conn["state"], ",".join(conn["remote"]) or "%any"]
        for n, child in enumerate(conn["children"] or [{"name": NONE, "state": NONE}]):
            rows.append([*(lead if n == 0 else [""] * 4), child["name"], child["state"],
                         child.get("out_spi", ""), child.get("in_spi", "")])
    return align(rows)


def render_status(status: Mapping[str, Any]) -> str:
    """The one-screen overview: what runs where, are the tunnels up, what is dropped most."""
    drops = ", ".join(f"{d['reason']} {num(d['count'])}" for d in status["top_drops"]) or NONE
    summary = align(
        [
            ["instance", status["instance"]],
            ["config", status["config"]],
            ["uptime", f"{duration(status['uptime'])}, {num(status['reloads'])} reload(s)"],
            ["workers", _workers_summary(status["workers"])],
            ["SAs", num(status["sas"])],
            ["policies", num(status["policies"])],
            ["top drops", drops],
        ]
    )
    rows = [["INTERFACE", "XDP", "QUEUES"]]
    rows += [[i["name"], i["xdp_mode"], num(i["queues"])] for i in status["interfaces"]]
    interfaces = align(rows, right=(2,)) if status["interfaces"] else ["no interfaces attached"]
    connections = _connections_table(status["connections"]) if status["connections"] else ["no connections"]
    return "\n\n".join("\n".join(part) for part in (summary, interfaces, connections))


def render_ike_sas(ike_sas: Sequence[Mapping[str, Any]]) -> str:
    """One row per IKE SA, columns as the core reports them (scalars shown, lists joined)."""
    if not ike_sas:
        return "no IKE SAs"
    keys = list(dict.fromkeys(k for sa in ike_sas for k in sa))

    def cell(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(cell(x) for x in v) or "-"
        if isinstance(v, Mapping):
            return ",".join(f"{k}={cell(x)}" for k, x in v.items()) or "-"
        return num(v) if isinstance(v, int) and not isinstance(v, bool) else str(v)

    return "\n".join(align([[k.upper() for k in keys]] + [[cell(sa.get(k, "")) for k in keys] for sa in ike_sas]))


# -- reload ------------------------------------------------------------------------------------------------


def _changes(diff: Mapping[str, Sequence[str]]) -> str:
    parts = [f"{what} {', '.join(diff[what])}" for what in ("added", "removed", "changed") if diff.get(what)]
    if diff.get("unchanged"):
        parts.append(f"{len(diff['unchanged'])} unchanged")
    return "; ".join(parts) or NONE


def render_reload(result: Mapping[str, Any]) -> str:
    """What an applied reload did; its "needs a restart" warnings go to stderr (xdpsec/cli.py)."""
    return "\n".join(
        [f"reloaded {result['file']}"]
        + align(
            [
                ["manual children", _changes(result["manual"])],
                ["IKE connections", _changes(result["ike"])],
                ["policies", "replaced" if result["policies_changed"] else "unchanged"],
                ["applied live", ", ".join(result["live"]) or NONE],
            ]
        )
    )


# -- top ---------------------------------------------------------------------------------------------------


def rate(value: float, unit: str) -> str:
    """``12.3 Mb/s``, ``950 pps``: SI prefixes, three significant digits, what a glance needs."""
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}" if value else f"0 {unit}"


def _drop_rates(drops: Mapping[str, float]) -> str:
    return ", ".join(f"{r} {rate(n, '/s')}" for r, n in sorted(drops.items(), key=lambda t: -t[1])) or NONE


def render_top(sample: Mapping[str, Any]) -> str:
    """One `xdpsec top` frame: SAs busiest first, then workers, then the classifier's drops."""
    rows = [["SA", "NAME", "DIR", "SPI", "WORKER", "PACKETS", "BITS", "DROPS"]]
    for sa in sample["sas"]:
        rows.append([f"#{sa['index']}", sa["name"], sa["direction"], sa["spi"], str(sa["worker"]),
                     rate(sa["pps"], "pps"), rate(sa["bps"], "b/s"), _drop_rates(sa["drops"])])
    sas = align(rows, right=(0, 4, 5, 6)) if sample["sas"] else ["no SAs installed"]
    rows = [["WORKER", "STATE", "RX", "TX", "HANDOFF IN", "HANDOFF OUT", "DROPS"]]
    for w in sample["workers"]:
        rows.append([str(w["id"]), "up" if w["alive"] else "DEAD", rate(w["rx_pps"], "pps"),
                     rate(w["tx_pps"], "pps"), rate(w["handoff_in_pps"], "pps"), rate(w["handoff_out_pps"], "pps"),
                     _drop_rates(w["drops"])])
    workers = align(rows, right=(0, 2, 3, 4, 5))
    xdp = sample["xdp"]
    classifier = [f"XDP  {rate(xdp['pps'].get('rx', 0), 'pps')} in, drops: {_drop_rates(xdp['drops'])}"]
    return "\n\n".join("\n".join(part) for part in (sas, workers, classifier))


RENDERERS = {
    "ike-sas": render_ike_sas,
    "sas": render_sas,
    "policies": render_policies,
    "stats": render_stats,
    "status": render_status,
}
