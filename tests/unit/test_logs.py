"""xdpsec.logs: the two line formats, per-subsystem levels, the key redaction safety net, and records that
would trip up a formatter."""

from __future__ import annotations

import io
import json
import logging
import re
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec import logs


@dataclass
class Cfg:  # the shape of config.LogConfig
    format: str = "plain"
    level: str = "info"
    levels: dict[str, str] = field(default_factory=dict)


@pytest.fixture(autouse=True)
def restore_logging():
    """setup() changes process-wide state: put the root handlers and every xdpsec level back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ["xdpsec", *(f"xdpsec.{s}" for s in logs.SUBSYSTEMS)]
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)
    logs._installed = None


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


TS = datetime(2026, 11, 29, 7, 0, 0, tzinfo=UTC).timestamp()


def record(name="xdpsec.ike", level=logging.INFO, msg="", args=(), **extra) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.created, rec.msecs = TS + 0.123, 123.0
    rec.__dict__.update(extra)
    return rec


# --- formats -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rec,line", [
    (record(msg="%s/%s: child SA up in %#010x out %#010x", args=("net-net", "child", 0xC1A0, 0xB00F)),
     "2026-11-29T07:00:00.123Z info  ike  net-net/child: child SA up in 0x0000c1a0 out 0x0000b00f"),
    (record("xdpsec.dataplane", logging.WARNING, "no route to %s", ("192.0.2.7",)),
     "2026-11-29T07:00:00.123Z warn  dataplane no route to 192.0.2.7"),
    (record("xdpsec", logging.ERROR, "gateway down"), "2026-11-29T07:00:00.123Z error xdpsec gateway down"),
    (record("pyroute2.ndb", logging.DEBUG, "x"), "2026-11-29T07:00:00.123Z debug pyroute2.ndb x"),
    (record("xdpsec.ike.manager", logging.CRITICAL, "y"), "2026-11-29T07:00:00.123Z crit  ike  y"),
])
def test_plain_lines(rec, line):
    assert logs.PlainFormatter().format(rec) == line


def test_json_line_fields():
    rec = record(msg="%s/%s: child SA up", args=("net-net", "child"), conn="net-net", child="child",
                 spi_in=0xC1A0, spi_out=0xB00F, peer="198.51.100.2")
    assert json.loads(logs.JsonFormatter().format(rec)) == {
        "ts": "2026-11-29T07:00:00.123Z", "level": "info", "subsystem": "ike", "msg": "net-net/child: child SA up",
        "conn": "net-net", "child": "child", "spi_in": "0x0000c1a0", "spi_out": "0x0000b00f", "peer": "198.51.100.2"}


def test_json_through_setup_one_object_per_line():
    buf = io.StringIO()
    logs.setup(Cfg(format="json"), buf)
    log = logging.getLogger("xdpsec.control")
    log.info("two\nlines", extra={"conn": "a"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed for %s", "b")
    out = [json.loads(line) for line in lines(buf)]
    assert [o["msg"] for o in out] == ["two\nlines", "failed for b"]
    assert out[0]["conn"] == "a" and out[0]["subsystem"] == "control"
    assert out[1]["level"] == "error" and "ValueError: bad" in out[1]["exc"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]) for o in out)


# --- levels --------------------------------------------------------------------------------------------------

LEVEL_NAMES = ("debug", "info", "warning", "error")


def emitted(buf: io.StringIO, fmt: str) -> set[tuple[str, str]]:
    if fmt == "json":
        return {(o["subsystem"], o["msg"]) for o in map(json.loads, lines(buf))}
    return {(line.split()[2], line.split()[3]) for line in lines(buf)}


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("cfg,threshold", [
    (Cfg(), {s: "info" for s in logs.SUBSYSTEMS}),
    (Cfg(level="warning", levels={"ike": "debug", "worker": "error"}),
     {**{s: "warning" for s in logs.SUBSYSTEMS}, "ike": "debug", "worker": "error"}),
    (Cfg(level="debug", levels={"bpf": "info"}), {**{s: "debug" for s in logs.SUBSYSTEMS}, "bpf": "info"}),
])
def test_levels_per_subsystem(fmt, cfg, threshold):
    buf = io.StringIO()
    cfg.format = fmt
    logs.setup(cfg, buf)
    for sub in logs.SUBSYSTEMS:
        for name in LEVEL_NAMES:
            logging.getLogger(f"xdpsec.{sub}").log(logs.LEVELS[name], name)
    want = {(sub, name) for sub in logs.SUBSYSTEMS for name in LEVEL_NAMES
            if logs.LEVELS[name] >= logs.LEVELS[threshold[sub]]}
    assert emitted(buf, fmt) == want


def test_setup_again_replaces_handler_and_levels():
    first = io.StringIO()
    logs.setup(Cfg(levels={"ike": "debug"}), first)
    second = io.StringIO()
    logs.setup(Cfg(format="json"), second)  # a reload dropped `levels` and switched to JSON
    logging.getLogger("xdpsec.ike").debug("hidden now")
    logging.getLogger("xdpsec.ike").info("shown")
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in lines(second)] == ["shown"]
    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, logs.JsonFormatter | logs.PlainFormatter)]
    assert len(ours) == 1


@pytest.mark.parametrize("cfg", [Cfg(format="xml"), Cfg(level="loud"), Cfg(levels={"ike": "verbose"})])
def test_bad_settings_are_refused(cfg):
    with pytest.raises(ValueError):
        logs.setup(cfg, io.StringIO())


# --- redaction -----------------------------------------------------------------------------------------------

KEY = bytes(range(0x10, 0x30))  # 32 octets, an AES-256 key's size
Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize("msg,args,extra", [
    ("key %r", (KEY,), {}),
    ("key %s", (bytearray(KEY),), {}),
    ("key %s", (memoryview(KEY),), {}),
    ("keys %r", ([b"ok", KEY],), {}),
    ("keys %r", ({"sk_ei": KEY},), {}),
    ("keys %r", (Pair(1, (KEY,)),), {}),
    ("key %(k)r", {"k": KEY}, {}),
    (KEY, (), {}),
    ("up", (), {"sk_d": KEY}),
    ("up", (), {"keys": {"in": [KEY]}}),
    ("nine %r", (KEY[:9],), {}),
])
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_long_bytes_never_reach_the_line(fmt, msg, args, extra):
    buf = io.StringIO()
    logs.setup(Cfg(format=fmt), buf)
    logging.getLogger("xdpsec.ike").info(msg, *([args] if isinstance(args, dict) else args), extra=extra)
    out = buf.getvalue()
    if fmt == "json" or not extra:  # plain lines do not show extras at all
        assert logs.REDACTED in out
    for secret in (KEY, KEY[:9]):
        assert secret.hex() not in out and repr(secret)[2:-1] not in out


@pytest.mark.parametrize("value", [b"\x00\x00\xc1\xa0", bytes(range(8))])
def test_short_bytes_pass(value):
    """SPIs (4 octets) and IKE SPIs (8) are identifiers, not secrets."""
    buf = io.StringIO()
    logs.setup(Cfg(format="json"), buf)
    logging.getLogger("xdpsec.ike").info("spi %r", value, extra={"spi": value})
    obj = json.loads(buf.getvalue())
    assert logs.REDACTED not in buf.getvalue()
    assert obj["msg"] == f"spi {value!r}" and obj["spi"] == value.hex()


def test_nothing_changes_when_nothing_is_redacted():
    args = (Pair(1, 2), [1, b"ab"], {"x": 1})
    rec = record(msg="%r %r %r", args=args)
    logs.Redact().filter(rec)
    assert all(a is b for a, b in zip(rec.args, args, strict=True))


_secret = st.binary(min_size=9, max_size=64).filter(lambda b: len(set(b)) > 2)  # hex of 0000… could be anywhere


def _wrap(secret):
    leaf = st.just(secret)
    return st.recursive(leaf, lambda inner: st.lists(inner, min_size=1, max_size=2).map(tuple)
                        | st.lists(inner, min_size=1, max_size=2)
                        | st.dictionaries(st.sampled_from(["k", "sk_ei"]), inner, min_size=1, max_size=1),
                        max_leaves=3)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), secret=_secret, fmt=st.sampled_from(["plain", "json"]),
       where=st.sampled_from(["arg", "extra"]))
def test_redaction_property(data, secret, fmt, where):
    """A key nested up to three containers deep in the arguments or extras never appears, in any spelling."""
    value = data.draw(_wrap(secret))
    buf = io.StringIO()
    logs.setup(Cfg(format=fmt), buf)
    log = logging.getLogger("xdpsec.ike")
    if where == "arg":
        log.info("value %r", value)
    else:
        log.info("value", extra={"material": value})
    out = buf.getvalue()
    assert secret.hex() not in out and repr(secret)[2:-1] not in out and str(list(secret))[1:-1] not in out


# --- odd records ---------------------------------------------------------------------------------------------

class Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")

    __str__ = __repr__


ODD = [
    record(msg="%s %s", args=("one",)),
    record(msg="%d", args=("x",)),
    record(msg="%(missing)s", args=({"present": 1},)),
    record(msg={"a": KEY}),
    record(msg=ValueError("an exception as the message")),
    record(msg=None),
    record(msg="%s", args=(Unprintable(),)),
    record(msg="ok", weird=object(), nan=float("nan"), nested={1: {2, 3}}, spi_in=True),
    record(msg="ok", spi_in=-1, spi_out=2**40),
    record(msg="unicode \u00e9\u2603 \x00 \n newline"),
    record(name="", msg="no logger name"),
    record(level=5, msg="a level without a name"),
]


def strict_json(name: str):
    raise AssertionError(f"{name} is not JSON")


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("rec", ODD, ids=range(len(ODD)))
def test_odd_records_are_written_not_raised(fmt, rec, capsys):
    buf = io.StringIO()
    handler = logs.setup(Cfg(format=fmt, level="debug"), buf)
    handler.handle(rec)
    assert capsys.readouterr().err == ""  # logging's "--- Logging error ---" report would land here
    out = buf.getvalue()
    assert out.endswith("\n")
    if fmt == "json":
        assert len(lines(buf)) == 1 and "ts" in json.loads(out, parse_constant=strict_json)
    assert KEY.hex() not in out
