"""The `xdpsec` command: run a gateway, check a configuration, and ask a running gateway what it is doing.

    xdpsec run -c FILE [--log-level LEVEL]    run the gateway in the foreground (xdpsec.coordinator)
    xdpsec check -c FILE [--json]             validate a configuration without running it (xdpsec.config)
    xdpsec status|sas|ike-sas|policies|stats [-i NAME | -s PATH] [--json]
    xdpsec initiate CONN [CHILD] | terminate CONN | rekey CONN [--child NAME | --ike]
    xdpsec reload                             re-read the configuration file and apply the changes (or SIGHUP)
    xdpsec top [--interval S] [--count N]     live rates per SA and per worker
    xdpsec version [--json]

Names and verbs follow swanctl (--list-sas, --initiate, --terminate, --rekey, --load-all). The gateway
commands send requests to its control socket (xdpsec.control), /run/xdpsec/NAME.sock, and print the result as
aligned tables (xdpsec.fmt), or with --json exactly the gateway's result, keys sorted, for scripts. `top`
asks for `sas` and `stats` every interval and shows the differences as rates, redrawing the terminal in place
with ANSI escape codes (no curses), or one JSON object per line with --json. `run` and `check` import their
modules only when used, so the query commands work on a host where the gateway cannot start.

Exit status (also in --help):
    0  ok
    1  the gateway answered with an error (unknown connection or child, nothing to do)
    2  usage or configuration error (`check`, `run` and `reload` of a file with errors)
    3  no gateway reachable (not running, stale socket, permission denied, no answer in time)

A user error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from pathlib import Path

from xdpsec import fmt
from xdpsec.control import ControlClient, ControlError, Unreachable, request, socket_path


class ExitCode(enum.IntEnum):
    OK = 0
    GATEWAY_ERROR = 1
    USAGE = 2
    UNREACHABLE = 3


EPILOG = """\
exit status:
  0  ok
  1  the gateway answered with an error (unknown connection or child, nothing to do)
  2  usage or configuration error (check, run and reload of a file with errors)
  3  no gateway reachable (not running, stale socket, permission denied, no answer in time)
"""

QUERIES = {
    "status": "one-screen overview: interfaces, workers, connections and children, top drop reasons",
    "sas": "list installed SAs with their counters (like swanctl --list-sas)",
    "ike-sas": "list IKE SAs: peer, state, SPIs, algorithms, children",
    "policies": "list SPD policies in evaluation order with hit counts",
    "stats": "per-worker and classifier counters, worker loop batches, drops by reason",
}
#: Seconds a reload may take: every new SA waits for its worker's confirmation.
RELOAD_TIMEOUT = 60.0
#: ANSI: cursor to the top left, erase to the end of the line, erase below (ECMA-48 CUP, EL, ED).
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def _fail(code: ExitCode, message: str) -> int:
    print(f"xdpsec: {message}", file=sys.stderr)
    return code


def _instance(name: str) -> str:
    try:
        socket_path(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _target(args: argparse.Namespace) -> Path:
    return args.socket or socket_path(args.instance)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# -- commands ----------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        from xdpsec.coordinator import run_main  # lazily: only `run` needs bcc, workers and netlink
    except ModuleNotFoundError as e:
        if e.name != "bcc":
            raise
        return _fail(ExitCode.USAGE, "run: bcc is not installed: install Debian's python3-bpfcc "
                     "(PyPI has no real bcc) or run scripts/setup.sh")
    return run_main(args)


def cmd_check(args: argparse.Namespace) -> int:
    from xdpsec.config import check_main

    return check_main(["-c", str(args.config)] + (["--json"] if args.json else []))


def _ask(args: argparse.Namespace, req: dict | None = None, timeout: float = 5.0) -> tuple[int, object]:
    """Send the command to the gateway: (exit code, result); a failure is reported here, in one line."""
    try:
        return ExitCode.OK, request(_target(args), args.command, req, timeout=timeout)
    except Unreachable as e:
        return _fail(ExitCode.UNREACHABLE, str(e)), None
    except ControlError as e:
        return _fail(ExitCode.GATEWAY_ERROR, str(e)), None


def _render(command: str, render, result: object) -> int:
    """Print the human form of a gateway's answer; an answer of another shape is input like any other."""
    try:
        text = render(result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # The gateway is another program, possibly another version.
        return _fail(
            ExitCode.GATEWAY_ERROR,
            f"{command}: cannot display the gateway's answer ({type(e).__name__}: {e}); try --json",
        )
    print(text)
    return ExitCode.OK


def cmd_query(args: argparse.Namespace) -> int:
    code, result = _ask(args)
    if code != ExitCode.OK:
        return code
    if args.json:
        _print_json(result)
        return ExitCode.OK
    return _render(args.command, fmt.RENDERERS[args.command], result)


def cmd_action(args: argparse.Namespace) -> int:
    """initiate / terminate / rekey: ask the gateway's IKE thread to act; the outcome shows in `sas` and the log."""
    child = getattr(args, "child", None)
    req = {"conn": args.conn, **({"child": child} if child else {})}
    if getattr(args, "ike", False):
        req["ike"] = True
    code, result = _ask(args, req)
    if code != ExitCode.OK:
        return code
    if args.json:
        _print_json(result)
    else:
        what = f"{args.conn}/{child}" if child else f"{args.conn} (IKE SA)" if req.get("ike") else args.conn
        print(f"{args.command} {what}: requested (watch `xdpsec ike-sas` and `xdpsec sas`)")
    return ExitCode.OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Exit 2 if the file has errors (the gateway keeps running the previous configuration), else 0."""
    code, result = _ask(args, timeout=RELOAD_TIMEOUT)
    if code != ExitCode.OK:
        return code
    applied = isinstance(result, dict) and result.get("applied") is True
    if args.json:
        _print_json(result)
        return ExitCode.OK if applied else ExitCode.USAGE
    if applied:
        for message in result.get("restart_needed", []):
            print(f"xdpsec: warning: {message}", file=sys.stderr)
        return _render("reload", fmt.render_reload, result)
    if not isinstance(result, dict) or not isinstance(result.get("errors"), list):
        return _fail(ExitCode.GATEWAY_ERROR, "reload: the gateway's answer says neither applied nor why not")
    for problem in result["errors"]:
        print(problem, file=sys.stderr)
    return _fail(ExitCode.USAGE, f"reload: {result.get('file', 'the configuration')} has "
                 f"{len(result['errors'])} error(s); the gateway keeps running the previous configuration")


def cmd_version(args: argparse.Namespace) -> int:
    from xdpsec.version import versions  # lazily: it asks the kernel, bcc and the libraries

    found = versions()
    if args.json:
        _print_json(found)
    else:
        print("\n".join(fmt.align([[name, version] for name, version in found.items()])))
    return ExitCode.OK


# -- top ---------------------------------------------------------------------------------------------------


def _rate(now: int, before: int, seconds: float) -> float:
    # A counter that went down belongs to a restarted worker or a replaced SA: count from zero.
    return round(max(0, now - before if now >= before else now) / seconds, 1)


def _drop_rates(now: dict, before: dict, seconds: float) -> dict[str, float]:
    rates = {reason: _rate(n, before.get(reason, 0), seconds) for reason, n in now.items()}
    return {reason: r for reason, r in rates.items() if r}


def top_sample(before: tuple[list, dict], now: tuple[list, dict], seconds: float) -> dict:
    """Rates between two (sas, stats) answers taken `seconds` apart: per SA, per worker and in XDP. An SA or
    worker new in `now` is measured from zero."""
    (sas0, stats0), (sas1, stats1) = before, now
    old_sas = {sa["index"]: sa for sa in sas0}
    sas = []
    for sa in sas1:
        prev = old_sas.get(sa["index"], {})
        sas.append({"index": sa["index"], "name": sa["name"], "direction": sa["direction"], "spi": sa["spi"],
                    "worker": sa["worker"], "pps": _rate(sa["packets"], prev.get("packets", 0), seconds),
                    "bps": _rate(8 * sa["bytes"], 8 * prev.get("bytes", 0), seconds),
                    "drops": _drop_rates(sa["drops"], prev.get("drops", {}), seconds)})
    sas.sort(key=lambda r: (-r["bps"], -r["pps"], r["index"]))
    old_workers = {w["id"]: w for w in stats0["workers"]}
    workers = []
    for w in sorted(stats1["workers"], key=lambda w: w["id"]):
        prev = old_workers.get(w["id"], {})
        if prev.get("pid") != w["pid"]:  # restarted in between: its counters started again from zero
            prev = {}
        workers.append({"id": w["id"], "alive": w["alive"], "restarts": w["restarts"],
                        **{f"{k}_pps": _rate(w[k], prev.get(k, 0), seconds)
                           for k in ("rx", "tx", "handoff_in", "handoff_out")},
                        "drops": _drop_rates(w["drops"], prev.get("drops", {}), seconds)})
    xdp0, xdp1 = stats0["xdp"], stats1["xdp"]
    xdp = {"pps": {k: _rate(n, xdp0["stats"].get(k, 0), seconds) for k, n in xdp1["stats"].items()},
           "drops": _drop_rates(xdp1["drops"], xdp0["drops"], seconds)}
    return {"interval": round(seconds, 4), "sas": sas, "workers": workers, "xdp": xdp}


def _poll(client: ControlClient) -> tuple[list, dict]:
    return client.request("sas"), client.request("stats")


def cmd_top(args: argparse.Namespace) -> int:
    in_place = not args.json and sys.stdout.isatty()
    title = f"xdpsec top: {args.socket or args.instance}, every {args.interval:g} s"
    try:
        with ControlClient(_target(args), timeout=max(5.0, 2 * args.interval)) as client:
            before, taken = _poll(client), time.monotonic()
            shown = 0
            while args.count is None or shown < args.count:
                time.sleep(args.interval)
                now, at = _poll(client), time.monotonic()
                sample = top_sample(before, now, at - taken)
                before, taken, shown = now, at, shown + 1
                if args.json:
                    print(json.dumps(sample, sort_keys=True), flush=True)
                    continue
                frame = f"{title} (Ctrl-C to quit)\n\n{fmt.render_top(sample)}"
                if in_place:  # redraw over the previous frame instead of scrolling
                    frame = HOME + frame.replace("\n", ERASE_LINE + "\n") + ERASE_LINE + "\n" + ERASE_BELOW
                    sys.stdout.write(frame)
                else:
                    sys.stdout.write(frame + "\n\n")
                sys.stdout.flush()
    except Unreachable as e:
        return _fail(ExitCode.UNREACHABLE, str(e))
    except ControlError as e:
        return _fail(ExitCode.GATEWAY_ERROR, str(e))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return _fail(ExitCode.GATEWAY_ERROR, f"top: cannot use the gateway's answer ({type(e).__name__}: {e})")
    return ExitCode.OK


# -- parser ------------------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: use a number of seconds above 0 and at most 3600")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdpsec",
        description="IPsec gateway with an XDP fast path and AF_XDP workers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str, func, parents=()) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EPILOG,
            parents=list(parents),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    run = add("run", "run the gateway in the foreground until SIGINT/SIGTERM (SIGHUP reloads)", cmd_run)
    run.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="configuration file (TOML)"
    )
    run.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"),
        help="default level of every subsystem (default: the configuration's [log] level, else info)",
    )

    check = add("check", "check a configuration file and exit", cmd_check)
    check.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="configuration file (TOML)"
    )
    check.add_argument("--json", action="store_true", help="print the problems as JSON")

    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "-i",
        "--instance",
        default="default",
        type=_instance,
        metavar="NAME",
        help="gateway instance; its socket is /run/xdpsec/NAME.sock (default: default)",
    )
    target.add_argument(
        "-s", "--socket", type=Path, metavar="PATH", help="control socket path (overrides -i)"
    )
    target.add_argument("--json", action="store_true", help="print the gateway's result as JSON")
    for name, summary in QUERIES.items():
        add(name, summary, cmd_query, parents=[target])

    initiate = add("initiate", "negotiate a connection's IKE SA and a child (swanctl --initiate)", cmd_action,
                   parents=[target])
    initiate.add_argument("conn", help="connection name")
    initiate.add_argument("child", nargs="?", help="child name (default: the connection's children)")
    terminate = add("terminate", "delete a connection's IKE SA and its children (swanctl --terminate)", cmd_action,
                    parents=[target])
    terminate.add_argument("conn", help="connection name")
    rekey = add("rekey", "rekey a connection's children, one child, or its IKE SA (swanctl --rekey)", cmd_action,
                parents=[target])
    rekey.add_argument("conn", help="connection name")
    which = rekey.add_mutually_exclusive_group()
    which.add_argument("--child", metavar="NAME", help="rekey only this child SA")
    which.add_argument("--ike", action="store_true", help="rekey the IKE SA (RFC 7296 §2.18)")

    add("reload", "re-read the gateway's configuration file and apply what changed (as SIGHUP does)", cmd_reload,
        parents=[target])

    top = add("top", "live rates per SA and per worker: packets, bits and drops per second", cmd_top,
              parents=[target])
    top.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="seconds between refreshes "
                     "(default: 1)")
    top.add_argument("--count", type=_count, metavar="N", help="stop after N refreshes (default: run until Ctrl-C)")

    version = add("version", "print the versions of xdpsec and what it runs on", cmd_version)
    version.add_argument("--json", action="store_true", help="print them as a JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # `xdpsec sas | head`: the reader is gone. Point stdout at /dev/null so the interpreter's final flush
        # does not complain again (the recipe from the `signal` module's documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except KeyboardInterrupt:
        return 128 + 2
