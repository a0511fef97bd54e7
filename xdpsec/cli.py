"""The `xdpsec` command: run a gateway, check a configuration, and ask a running gateway what it is doing.

    xdpsec run -c FILE [--log-level info]     run the gateway in the foreground (xdpsec.coordinator)
    xdpsec check -c FILE [--json]             validate a configuration without running it (xdpsec.config)
    xdpsec sas|policies|stats|status [-i NAME | -s PATH] [--json]
    xdpsec version

The query commands send one request to the gateway's control socket (xdpsec.control), /run/xdpsec/NAME.sock,
and print the result as aligned tables (xdpsec.fmt), or as JSON with --json: exactly the gateway's result,
keys sorted, for scripts. `run` and `check` import their modules only when used, so the query commands work
on a host where the gateway cannot start.

Exit status (also in --help):
    0  ok
    1  the gateway answered with an error
    2  usage or configuration error
    3  no gateway reachable (not running, stale socket, permission denied, no answer in time)

A user error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from pathlib import Path

from xdpsec import __version__, fmt
from xdpsec.control import ControlError, Unreachable, request, socket_path


class ExitCode(enum.IntEnum):
    OK = 0
    GATEWAY_ERROR = 1
    USAGE = 2
    UNREACHABLE = 3


EPILOG = """\
exit status:
  0  ok
  1  the gateway answered with an error
  2  usage or configuration error
  3  no gateway reachable (not running, stale socket, permission denied, no answer in time)
"""

QUERIES = {
    "sas": "list installed SAs with their counters (like swanctl --list-sas)",
    "policies": "list SPD policies in evaluation order with hit counts",
    "stats": "per-worker and classifier counters, drops by reason",
    "status": "instance, uptime, interfaces and sizes",
    "ike-sas": "list IKE SAs: peer, state, SPIs, algorithms, children",
}


def _fail(code: ExitCode, message: str) -> int:
    print(f"xdpsec: {message}", file=sys.stderr)
    return code


def _instance(name: str) -> str:
    try:
        socket_path(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


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


def _ask(args: argparse.Namespace, req: dict | None = None) -> tuple[int, object]:
    """Send the command to the gateway: (exit code, result); a failure is reported here, in one line."""
    try:
        return ExitCode.OK, request(args.socket or socket_path(args.instance), args.command, req)
    except Unreachable as e:
        return _fail(ExitCode.UNREACHABLE, str(e)), None
    except ControlError as e:
        return _fail(ExitCode.GATEWAY_ERROR, str(e)), None


def cmd_query(args: argparse.Namespace) -> int:
    code, result = _ask(args)
    if code != ExitCode.OK:
        return code
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return ExitCode.OK
    try:
        text = fmt.RENDERERS[args.command](result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # The gateway is another program, possibly another version: its answer is input like any other.
        return _fail(
            ExitCode.GATEWAY_ERROR,
            f"{args.command}: cannot display the gateway's answer ({type(e).__name__}: {e}); try --json",
        )
    print(text)
    return ExitCode.OK


def cmd_action(args: argparse.Namespace) -> int:
    """initiate / terminate: ask the gateway's IKE thread to act; the outcome shows in `sas` and the log."""
    child = getattr(args, "child", None)
    code, result = _ask(args, {"conn": args.conn, **({"child": child} if child else {})})
    if code != ExitCode.OK:
        return code
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{args.command} {args.conn}{'/' + child if child else ''}: requested "
              "(watch `xdpsec ike-sas` and `xdpsec sas`)")
    return ExitCode.OK


def cmd_version(args: argparse.Namespace) -> int:
    print(f"xdpsec {__version__}")
    return ExitCode.OK


# -- parser ------------------------------------------------------------------------------------------------


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

    run = add("run", "run the gateway in the foreground until SIGINT/SIGTERM", cmd_run)
    run.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="configuration file (TOML)"
    )
    run.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default: info"
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

    add("version", "print the xdpsec version", cmd_version)
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
