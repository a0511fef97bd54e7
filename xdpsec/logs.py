"""Logging for people reading a gateway's log at 3 a.m., and for the machines that collect it (issue 5).

`setup(log_cfg)` installs one handler on the root logger, writing either

    plain:  2026-11-29T07:00:00.123Z info  ike  net-net/child: child SA up: in 0x0000c1a0 out 0x0000b00f, tunnel
    json:   {"ts": "2026-11-29T07:00:00.123Z", "level": "info", "subsystem": "ike", "msg": "...", "conn": ...}

one line per record, timestamps in UTC. Subsystems are the loggers `xdpsec.<subsystem>` (ike, dataplane,
worker, control, bpf, config, metrics); `[log] level` is the default of all of them and `[log] levels` sets
single ones, so `levels = { ike = "debug" }` shows IKE in detail and leaves the rest quiet. Forked workers
inherit the handler, so their lines have the same shape.

Callers pass the identifiers of what a line is about as `extra=` (conn, child, spi_in, spi_out, peer): JSON
lines carry them as fields, SPIs written 0x%08x as `xdpsec sas` shows them. Keys never belong in a log line,
and a safety net makes sure of it: `Redact` replaces every bytes value longer than 8 octets in a record's
arguments or extras (key material is bytes and at least 16 octets; SPIs and IKE SPIs fit in 8) by
"<redacted>" before anything is formatted. Formatting never raises: a record whose arguments do not fit its
format string is still written, with its raw message and arguments.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

SUBSYSTEMS = ("ike", "dataplane", "worker", "control", "bpf", "config", "metrics")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: Level names in plain lines, at most 5 characters so the columns after them line up.
PLAIN_LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
               logging.CRITICAL: "crit"}
REDACTED = "<redacted>"
MAX_CLEAR_BYTES = 8  # an IKE SPI; any longer bytes value might be key material
_NEST = 3  # how deep Redact looks into containers within arguments

#: Attributes every LogRecord has; any other attribute came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
#: The handler this module installed, replaced by the next setup() (a reload may change the format).
_installed: logging.Handler | None = None


def setup(log_cfg=None, stream: TextIO | None = None) -> logging.Handler:
    """Send every record to `stream` (stderr) in the configured format, with the configured levels.
    `log_cfg` is config.LogConfig (format, level, levels); None means plain lines at info. May be called again:
    the previous handler and per-subsystem levels are replaced, not added to. Returns the handler."""
    global _installed
    fmt = getattr(log_cfg, "format", "plain")
    default = _level(getattr(log_cfg, "level", "info"))
    levels = {sub: _level(name) for sub, name in (getattr(log_cfg, "levels", None) or {}).items()}
    if fmt not in ("plain", "json"):
        raise ValueError(f"log format {fmt!r}: expected plain or json")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(Redact())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    for old in [h for h in root.handlers if isinstance(h.formatter, PlainFormatter | JsonFormatter)]:
        root.removeHandler(old)  # a handler of this module inherited from before a fork, or left by a test
    root.addHandler(handler)
    _installed = handler
    # Third-party libraries (pyroute2, bcc) stay at warning unless everything is at debug.
    root.setLevel(default if default == logging.DEBUG else max(default, logging.WARNING))
    logging.getLogger("xdpsec").setLevel(default)
    for sub in {*SUBSYSTEMS, *levels}:
        logging.getLogger(f"xdpsec.{sub}").setLevel(levels.get(sub, logging.NOTSET))  # NOTSET: the default
    return handler


def _level(name: str) -> int:
    try:
        return LEVELS[str(name).lower()]
    except KeyError:
        raise ValueError(f"log level {name!r}: expected one of {', '.join(LEVELS)}") from None


# --- the safety net ------------------------------------------------------------------------------------------

class Redact(logging.Filter):
    """Replace bytes longer than MAX_CLEAR_BYTES in a record's message, arguments and extras by "<redacted>".
    It never refuses a record: the line is still useful without the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrub(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _scrub(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_scrub(a) for a in record.args)
        for key in _extras(record):
            setattr(record, key, _scrub(getattr(record, key)))
        return True


def _scrub(value, depth: int = _NEST):
    """`value` itself when nothing in it needs redacting (so formatting is unchanged), else a scrubbed copy."""
    if isinstance(value, bytes | bytearray | memoryview):
        return REDACTED if len(value) > MAX_CLEAR_BYTES else value
    if depth == 0 or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        items = {k: _scrub(v, depth - 1) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, list | tuple | set | frozenset):
        items = [_scrub(v, depth - 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else type(value)(items)  # a namedtuple becomes a tuple
    return value


def _extras(record: logging.LogRecord) -> list[str]:
    return [key for key in vars(record) if key not in _STANDARD]


# --- formats -------------------------------------------------------------------------------------------------

def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(record.msecs):03d}Z"


def _subsystem(name: str) -> str:
    """`xdpsec.ike.manager` -> `ike`; the bare `xdpsec` logger and other libraries' loggers keep their name."""
    parts = name.split(".")
    return parts[1] if parts[0] == "xdpsec" and len(parts) > 1 else name


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # wrong arguments for the format, or one that cannot be printed: still say what was logged
        return f"{_shown(record.msg, str)} (unformatted arguments: {_shown(record.args, repr)})"


def _shown(value, show) -> str:
    try:
        return show(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _exception(record: logging.LogRecord) -> str:
    text = ""
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        text = record.exc_text
    if record.stack_info:
        text = f"{text}\n{record.stack_info}".strip()
    return text


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = PLAIN_LEVEL.get(record.levelno, record.levelname.lower())
        line = f"{_timestamp(record)} {level:<5} {_subsystem(record.name):<4} {_message(record)}"
        if extra := _exception(record):
            line += "\n" + extra
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": _timestamp(record), "level": record.levelname.lower(), "subsystem": _subsystem(record.name),
               "msg": _message(record)}
        for key in _extras(record):
            if key not in obj:
                obj[key] = _field(key, getattr(record, key))
        if extra := _exception(record):
            obj["exc"] = extra
        if record.processName != "MainProcess":
            obj["process"] = record.processName  # a forked worker (xdpsec-worker0, ...)
        return json.dumps(obj, default=lambda v: _shown(v, str), ensure_ascii=False)


def _field(key: str, value):
    """SPIs as `xdpsec sas` shows them, so a line can be found by the SPI on screen; short bytes as hex."""
    if key.startswith("spi") and isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:08x}"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    return value
