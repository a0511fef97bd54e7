"""The gateway configuration: TOML in swanctl.conf's vocabulary -> a validated, immutable `Config`.

Network engineers know strongSwan's swanctl.conf, so the file uses its concepts and names (connections,
children, local_ts/remote_ts, esp_proposals, pass/drop shunts, local/remote authentication, secrets). A
connection is keyed by IKEv2 (it has `local`/`remote` tables, or a protected child without `manual`), or
manually, with a `manual` table per child that reads like `ip xfrm state add`; one file may hold both kinds. Every problem in a file is reported at once as
`FILE:LINE: key: what is wrong (and what would be right)`; `xdpsec check` prints them and exits 2.

tomllib gives values without positions, so `_Locator` scans the raw text once for table headers, dotted
keys and `key =` lines and maps each key path to its line; a key that is missing points at its table.

Schema (every key; the defaults are what an absent key means)::

    instance = "default"           # names the control socket /run/xdpsec/<instance>.sock and the BPF pins
    secrets_file = "secrets.toml"  # optional, relative to this file: a [secrets] table in a file that must not
                                   #   be readable by group or others (refused otherwise)
    [gateway]
    interfaces = ["lan0", "wan0"]  # required: the interfaces XDP attaches to; unique, at most 15 characters
    workers = <cpus>               # worker processes, 1..64 (default: the number of CPUs)
    cpus = [0, 1]                  # CPUs the workers are pinned to, worker i on cpus[i % len]; [] = not pinned
                                   #   (default: worker i on CPU i % <cpus>)
    xdp_mode = "native"            # native | generic (skb mode)
    state_dir = "/var/lib/xdpsec"  # absolute; where outbound sequence-number reservations persist
    default_action = "bypass"      # bypass | discard: what happens to traffic no policy matches
    encap_port = 4500              # UDP port of ESP-in-UDP (RFC 3948), the default of local/remote_port
    retransmit_timeout = "4s"      # IKE retransmission (strongswan.conf's charon.retransmit_timeout): a duration
                                   #   or TOML float seconds, 0.1..3600; the n-th retransmission waits
                                   #   timeout x 1.8^(n-1) (charon.retransmit_base, fixed here)
    retransmit_tries = 5           # retransmissions before the peer is declared dead, 0..100; both are the
                                   #   default of the IKE connections' keys of the same names

    [log]                          # read by xdpsec.logs.setup
    format = "plain"               # plain | json (one JSON object per line)
    level = "info"                 # debug | info | warning | error: every subsystem's default
    levels = { ike = "debug" }     # per subsystem (logger xdpsec.<name>): ike, dataplane, worker, control, bpf,
                                   #   config, metrics
    [metrics]
    listen = "127.0.0.1:9469"      # Prometheus endpoint, "[::1]:9469" for IPv6; absent: off. Not loopback: a warning
    [debug]
    key_export = "/run/xdpsec/keys"  # absolute directory for Wireshark's esp_sa and ikev2_decryption_table;
                                   #   absent: off; present: a warning (whoever reads it decrypts the traffic)
    [limits]                       # 1..max each (see _LIMIT_MAX)
    half_open_ike_sas = 1024       # IKE SAs between IKE_SA_INIT and IKE_AUTH
    ike_sas_per_peer = 16          # IKE SAs with one remote address
    sas_per_worker = 4096          # ESP/AH SAs per worker, at most the BPF SAD's XS_MAX_SAS
    pending_acquires = 256         # trap-triggered initiations queued
    control_clients = 16           # concurrent control socket connections
    ike_init_rate = 100            # IKE_SA_INIT requests/s per source prefix, dropped in XDP beyond it
    ike_init_burst = 100           #   and how many may come at once (also each configured peer's own bucket)
    ike_init_global_rate = 2000    # IKE_SA_INIT requests/s from all prefixes together (bursts of one second)
    ike_init_prefix4 = 24          # the source prefix of those buckets: IPv4 /24
    ike_init_prefix6 = 64          #   IPv6 /64

    [connections.<name>]           # as swanctl connections.<name>; <name> has no '/'
    local_addrs = ["192.0.2.1"]    # outer addresses; manual keying needs exactly one on each side,
    remote_addrs = ["192.0.2.2"]   #   of one family (needed only if a child is tunnel/transport)
    encap = false                  # force RFC 3948 UDP encapsulation (ESP only)
    local_port = 4500              # UDP ports with encap = true (default: gateway.encap_port)
    remote_port = 4500

    [connections.<name>.children.<child>]
    mode = "tunnel"                # tunnel | transport | pass | drop (pass/drop: swanctl shunts, BYPASS/DISCARD)
    local_ts = ["198.51.100.0/25"] # traffic selectors "net[proto/port]": "10.0.0.0/8[tcp/80]", "[udp/1000-2000]",
    remote_ts = ["..."]            #   "[icmp/8]" (ICMP type as port); a bare address is a /32 or /128.
                                   #   Required for tunnel/pass/drop; transport defaults to the outer addresses.
    esp_proposals = ["aes128gcm16"]  # exactly one proposal for manual keying (see xdpsec.proposals), or
    ah_proposals = ["sha256"]      #   AH instead of ESP (not both, and not with encap)
    priority = 0                   # 0 = automatic (strongSwan's: more specific first, pass shunts first);
                                   #   otherwise used as is, lower wins
    replay_window = 1024           # packets, 0..65536; 0 disables anti-replay (a warning)

    [connections.<name>.children.<child>.manual]   # manual keying (RFC 4301 §4.5); IKE will fill the same
    in_spi = 0x1001                # integer or "0x..." string, 0x100..0xffffffff, unique per direction
    out_spi = 0x2001
    in_enc_key = "hex"             # hex, ':' separators and a 0x prefix allowed; AEAD keys end with the
    out_enc_key = "hex"            #   4-byte salt (RFC 4106 §8.1, RFC 7634 §2)
    in_integ_key = "hex"           # only for non-AEAD ESP and AH
    out_integ_key = "hex"

IKE connections (swanctl.conf's names; everything else as above)::

    [connections.<name>]
    version = 2                    # IKEv2 only
    local_addrs = ["192.0.2.1"]    # IP addresses; empty or omitted: any (and the IKE sockets follow them)
    remote_addrs = ["192.0.2.2"]   # "%any" or omitted: any peer, which makes the connection responder-only
    proposals = ["aes256gcm16-prfsha384-x25519"]  # IKE SA proposals (xdpsec.proposals.parse_ike); default:
                                   #   proposals.DEFAULT_IKE_PROPOSALS
    encap = false                  # force UDP encapsulation as if behind a NAT
    local_port = 500               # IKE ports (not only with encap, unlike manual keying)
    remote_port = 500
    dpd_delay = "30s"              # durations: integer seconds or "30s", "5m", "1h", "1d"; 0 = off
    dpd_timeout = 0
    retransmit_timeout = "4s"      # default: [gateway] retransmit_timeout
    retransmit_tries = 5           # default: [gateway] retransmit_tries
    keyingtries = 1                # 0 = forever
    fragmentation = "yes"          # IKE fragmentation (RFC 7383): yes | accept (announce, never send) | force
                                   #   (= yes for IKEv2) | no (not announced); peers' fragments are always taken
    fragment_size = 0              # IP datagram size of a fragment, 576..65535; 0: 576 (IPv4), 1280 (IPv6)
    rekey_time = "4h"              # IKE SA rekeying (0 = never); life_time = rekey_time + over_time, the hard limit
    over_time = "24m"              #   default 10 % of rekey_time, > 0 when rekey_time is
    rand_time = "24m"              #   subtracted at random from rekey_time; default over_time (at most half of
                                   #   rekey_time); < rekey_time and
                                   #   <= over_time
    [connections.<name>.local]     # how we authenticate
    auth = "psk"                   # psk | pubkey
    id = "gwA.example.org"         # strongSwan identity: IP, FQDN ("@x" forces FQDN), email, DN "CN=x, O=y",
                                   #   "@#hex" key ID. Default: the certificate's subject (pubkey), else the
                                   #   only local address
    certs = ["gwA.pem"]            # pubkey: our certificate, then intermediates (PEM or DER, relative to
                                   #   this file)
    private_key = "gwA.key"        # pubkey: unencrypted PEM or DER; mode 0600 or 0400 (refused otherwise)
    rsa_pss = false                # pubkey with an RSA key: sign with RSASSA-PSS instead of PKCS#1 v1.5
    [connections.<name>.remote]    # how the peer must authenticate
    auth = "pubkey"
    id = "CN=gwB, O=Example"       # default: any identity that authenticates (pubkey), the peer's address (psk)
    cacerts = ["ca.pem"]           # pubkey: trust anchors for the peer's chain
    [connections.<name>.children.<child>]
    local_ts = ["dynamic"]         # default "dynamic": this end's address (IKE addresses); "dynamic[tcp/80]"
    remote_ts = ["dynamic"]
    esp_proposals = [...]          # alternatives, with a key exchange method for PFS ("aes128gcm16-x25519");
                                   #   default: proposals.DEFAULT_ESP_PROPOSALS; or ah_proposals
    start_action = "none"          # none | start | trap
    dpd_action = "clear"           # clear | restart | trap
    rekey_time = "1h"              # CHILD_SA rekeying, 0 = never (default 1h, or life_time - 10 % if only that)
    life_time = "66m"              # hard limit, 0 = none (default rekey_time + 10 %); > rekey_time if both set
    rand_time = "6m"               # subtracted at random from rekey_time (default life_time - rekey_time,
                                   #   at most half of rekey_time);
                                   #   < rekey_time and <= life_time - rekey_time
    rekey_bytes = 0                # volume limits, same defaults as the times (rekey 0 = off); counted on the SAs
    life_bytes = 0
    rekey_packets = 0
    life_packets = 0

    [secrets]                      # swanctl's secrets.ike-*: PSKs by the pair of identities
    ike = [ { id = ["gwA.example.org", "gwB.example.org"], secret = "..." } ]
                                   # secret: text, "0x<hex>" or "0s<base64>"; an empty id list matches any pair

Dead peer detection (RFC 7296 §2.4, strongSwan's schedule): after `dpd_delay` without any IKE message from
the peer (ESP traffic does not count), an empty INFORMATIONAL request goes out. Like every request it is
retransmitted `retransmit_tries` times, the n-th time (n = 1..tries) timeout x 1.8^(n-1) after the previous
send; timeout x 1.8^tries after the last one the peer is declared dead, the IKE SA and its children are
deleted without telling it, and each child's `dpd_action` applies. A peer that dies just after answering is
therefore noticed after at most

    dpd_delay + sum(retransmit_timeout * 1.8**n for n in range(retransmit_tries + 1))

(the sum has retransmit_tries + 1 terms: strongSwan's defaults 4 s and 5 tries give 165 s, its documented
"giving up" time), and no earlier than the sum alone. Example: dpd_delay = "2s", retransmit_timeout = "1s",
retransmit_tries = 3 give 2 + 1 + 1.8 + 3.24 + 5.832 = 13.872 s. Any request outstanding when the peer dies
(a rekeying, a Delete) is retransmitted the same way, without the dpd_delay.

Derived: per tunnel/transport child an OUT PROTECT policy for every local_ts x remote_ts pair of one family
(protocol and ports narrowed to their intersection) and the reverse IN PROTECT policy, which drops cleartext
that should have been protected (RFC 4301 §5.2); pass/drop give BYPASS/DISCARD in both directions. IKE
children get the same PROTECT policies; their SAs come later, from the negotiation.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import difflib
import enum
import ipaddress
import json
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.x509.oid import NameOID

from xdpsec import proposals
from xdpsec.abi import XS_MAX_SAS, Action, PolicyDir
from xdpsec.ike.conf import (
    CHILD_LIFETIME,
    IKE_LIFETIME,
    AuthMethod,
    AuthRound,
    ChildConfig,
    ChildProposal,
    DpdAction,
    Fragmentation,
    Identity,
    IkeConnConfig,
    IkeProposal,
    Lifetime,
    StartAction,
)
from xdpsec.ike.consts import IdType
from xdpsec.sa import (
    AEAD_SALT_LEN,
    ANY_PORT,
    Direction,
    Encr,
    IPAddress,
    Mode,
    PortRange,
    Protocol,
    SAParams,
    TrafficSelector,
    Transform,
    UdpEncap,
)
from xdpsec.spd import Policy, auto_priority, covers, ordered

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a configuration file."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration has errors; `problems` lists all of them, `warnings` what else was noticed."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None):
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems
        self.warnings = warnings or []


class XdpMode(enum.Enum):
    NATIVE = "native"  # driver mode: the fast path
    GENERIC = "generic"  # skb mode: works everywhere, slower


class ChildMode(enum.Enum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"
    PASS = "pass"  # swanctl shunt: BYPASS both ways
    DROP = "drop"  # swanctl shunt: DISCARD both ways


_SHUNT_ACTION = {ChildMode.PASS: Action.BYPASS, ChildMode.DROP: Action.DISCARD}


@dataclass(frozen=True)
class GatewayConfig:
    interfaces: tuple[str, ...]
    workers: int
    xdp_mode: XdpMode = XdpMode.NATIVE
    state_dir: Path = Path("/var/lib/xdpsec")
    default_action: Action = Action.BYPASS
    encap_port: int = 4500
    retransmit_timeout: float = IkeConnConfig.retransmit_timeout  # the IKE connections' defaults
    retransmit_tries: int = IkeConnConfig.retransmit_tries
    cpus: tuple[int, ...] | None = None  # None: worker i on CPU i % os.cpu_count(); (): not pinned

    def worker_cpu(self, wid: int, ncpus: int) -> int | None:
        """The CPU worker `wid` is pinned to, or None (not pinned)."""
        if self.cpus is None:
            return wid % max(1, ncpus)
        return self.cpus[wid % len(self.cpus)] if self.cpus else None


#: Subsystems with a logger of their own, `xdpsec.<subsystem>`: the keys of [log] levels.
LOG_SUBSYSTEMS = ("ike", "dataplane", "worker", "control", "bpf", "config", "metrics")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")


@dataclass(frozen=True)
class LogConfig:
    """[log]: plain or JSON lines, a default level and per-subsystem levels (read by xdpsec.logs.setup)."""

    format: str = "plain"
    level: str = "info"
    levels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """[limits]: bounds on what peers and local clients can make the gateway hold (issue 7)."""

    half_open_ike_sas: int = 1024  # IKE SAs past IKE_SA_INIT but not yet authenticated
    ike_sas_per_peer: int = 16     # IKE SAs with one remote address
    sas_per_worker: int = 4096     # ESP/AH SAs one worker holds (the BPF SAD has XS_MAX_SAS slots)
    pending_acquires: int = 256    # trap-triggered initiations queued at once
    control_clients: int = 16      # concurrent connections to the control socket
    # IKE_SA_INIT rate limit in XDP (RFC 7296 §2.6; xdpsec/bpf/include/ratelimit.h): token buckets per source
    # prefix, one global bucket; configured peers (remote_addrs) get a bucket of their own by exact address
    ike_init_rate: int = 100       # requests per second per source prefix
    ike_init_burst: int = 100      # bucket size per prefix (and per configured peer)
    ike_init_global_rate: int = 2000  # requests per second, all prefixes together (bucket: one second's worth)
    ike_init_prefix4: int = 24     # IPv4 prefix length of a source's bucket
    ike_init_prefix6: int = 64     # IPv6 prefix length


@dataclass(frozen=True)
class ManualKeys:
    """SPIs and keys of a manually keyed child (RFC 4301 §4.5): 'in' is what we receive, 'out' what we send."""

    in_spi: int
    out_spi: int
    in_enc_key: bytes = field(default=b"", repr=False)
    out_enc_key: bytes = field(default=b"", repr=False)
    in_integ_key: bytes = field(default=b"", repr=False)
    out_integ_key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Child:
    """A swanctl CHILD_SA configuration: what traffic, how protected, keyed how."""

    name: str
    mode: ChildMode
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    protocol: Protocol | None = None  # None for pass/drop
    transform: Transform | None = None
    priority: int = 0  # 0 = automatic
    replay_window: int = 1024
    manual: ManualKeys | None = None  # None when IKE negotiates the keys
    ike: ChildConfig | None = None  # what the IKE core negotiates for this child


@dataclass(frozen=True)
class Connection:
    name: str
    local_addrs: tuple[IPAddress, ...]
    remote_addrs: tuple[IPAddress, ...]
    encap: UdpEncap | None  # manual keying: outbound ports (sport = ours) when RFC 3948 encapsulation is forced
    children: tuple[Child, ...]
    ike: IkeConnConfig | None = None  # None for manually keyed connections


@dataclass(frozen=True)
class Config:
    path: Path
    instance: str
    gateway: GatewayConfig
    connections: tuple[Connection, ...]
    warnings: tuple[Problem, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    metrics_listen: tuple[str, int] | None = None  # (host without brackets, port); None: no metrics endpoint
    key_export: Path | None = None  # directory for Wireshark's esp_sa / ikev2_decryption_table; None: off
    limits: Limits = field(default_factory=Limits)

    def manual_sas(self) -> list[tuple[str, SAParams, SAParams]]:
        """("conn/child", outbound SA, inbound SA) for every manually keyed child, in configuration order."""
        return [(f"{conn.name}/{child.name}", *_sa_pair(conn, child))
                for conn in self.connections for child in conn.children if child.manual is not None]

    def policies(self) -> list[Policy]:
        """The whole SPD in priority order (stable), numbered 1..n."""
        return ordered(p for conn in self.connections for child in conn.children
                       for p in _child_policies(conn, child))

    def ike_connections(self) -> list[IkeConnConfig]:
        """What the IKE core needs of every IKE-keyed connection, in configuration order."""
        return [conn.ike for conn in self.connections if conn.ike is not None]

    def local_addresses(self) -> set[IPAddress]:
        return {addr for conn in self.connections for addr in conn.local_addrs}

    def ike_peer_addresses(self) -> set[IPAddress]:
        """The configured remote addresses of IKE connections: each gets its own IKE_SA_INIT bucket in XDP."""
        return {addr for conn in self.connections if conn.ike is not None for addr in conn.remote_addrs}


# --- derived SAs and policies -------------------------------------------------------------------------------

def _sa_pair(conn: Connection, child: Child) -> tuple[SAParams, SAParams]:
    keys, name = child.manual, f"{conn.name}/{child.name}"
    assert keys is not None and child.protocol is not None and child.transform is not None
    common = dict(protocol=child.protocol, mode=Mode(child.mode.value), transform=child.transform,
                  local=conn.local_addrs[0], remote=conn.remote_addrs[0], replay_window=child.replay_window,
                  local_ts=child.local_ts, remote_ts=child.remote_ts, name=name)
    # Encapsulation ports as they appear in each SA's packets: ours are the source of what we send.
    in_encap = UdpEncap(sport=conn.encap.dport, dport=conn.encap.sport) if conn.encap else None
    out = SAParams(spi=keys.out_spi, direction=Direction.OUT, enc_key=keys.out_enc_key,
                   integ_key=keys.out_integ_key, encap=conn.encap, **common)  # type: ignore[arg-type]
    inb = SAParams(spi=keys.in_spi, direction=Direction.IN, enc_key=keys.in_enc_key,
                   integ_key=keys.in_integ_key, encap=in_encap, **common)  # type: ignore[arg-type]
    return out, inb


_ICMP = (1, 58)


def _intersect(a: PortRange, b: PortRange) -> PortRange | None:
    lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
    return PortRange(lo, hi) if lo <= hi else None


def _selector_pairs(srcs, dsts) -> Iterator[tuple[Any, Any, int, PortRange, PortRange]]:
    """(src net, dst net, proto, sports, dports) of every same-family pair whose protocols intersect."""
    for s in srcs:
        for d in dsts:
            if s.net.version != d.net.version or (s.proto and d.proto and s.proto != d.proto):
                continue
            proto = s.proto or d.proto
            if proto in _ICMP:
                # The ICMP type is the one "port" and sits in the source-port slot of the flow (as in XFRM).
                types = _intersect(s.ports, d.ports)
                if types is not None:
                    yield s.net, d.net, proto, types, ANY_PORT
            else:
                yield s.net, d.net, proto, s.ports, d.ports


def _child_policies(conn: Connection, child: Child) -> list[Policy]:
    name = f"{conn.name}/{child.name}"
    action = _SHUNT_ACTION.get(child.mode, Action.PROTECT)
    out = []
    for direction, srcs, dsts in ((PolicyDir.OUT, child.local_ts, child.remote_ts),
                                  (PolicyDir.IN, child.remote_ts, child.local_ts)):
        for src, dst, proto, sports, dports in _selector_pairs(srcs, dsts):
            policy = Policy(id=0, name=name, direction=direction, action=action, priority=child.priority,
                            src=src, dst=dst, proto=proto, sports=sports, dports=dports,
                            child=name if action == Action.PROTECT else None)
            if not child.priority:
                policy = replace(policy, priority=auto_priority(policy))
            out.append(policy)
    return out


# --- traffic selectors ----------------------------------------------------------------------------------------

_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136,
              "gre": 47, "esp": 50, "ah": 51}
_PORTED = {6, 17, 132, 136, 1, 58}
_TS_RE = re.compile(r"^(?P<net>[^\[\]\s]*)(?:\[(?P<proto>[^/\]]*)(?:/(?P<port>[^\]]*))?\])?$")


def _parse_net(text: str):
    if "-" in text:
        raise ValueError(f"address ranges ({text!r}) are not supported; write a prefix")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an address or prefix: {text!r}") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from None


def _parse_proto(text: str) -> int:
    if text.isdigit() and int(text) <= 255:
        return int(text)
    if text.lower() in _PROTOCOLS:
        return _PROTOCOLS[text.lower()]
    if text in ("", "%any", "any"):
        return 0
    raise ValueError(f"unknown protocol {text!r}; use a number 0..255 or one of {', '.join(_PROTOCOLS)}")


def _parse_ports(text: str, proto: int) -> PortRange:
    if text in ("", "%any", "any"):
        return ANY_PORT
    if proto not in _PORTED:
        raise ValueError("a port needs a protocol with ports (tcp, udp, sctp, udplite) or icmp/icmpv6 types")
    top = 255 if proto in _ICMP else 65535
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (-1, -1)
    if not (0 <= lo <= hi <= top):
        kind = "ICMP type" if proto in _ICMP else "port"
        raise ValueError(f"bad {kind} {text!r}: a number or a range lo-hi within 0..{top}")
    return PortRange(lo, hi)


def parse_ts(text: str) -> TrafficSelector:
    """A strongSwan traffic selector: ``net[proto/port]``; see the module docstring. Raises ValueError."""
    m = _TS_RE.match(text.strip())
    if m is None:
        raise ValueError(f"bad traffic selector {text!r}; write net[proto/port], e.g. 10.0.0.0/8[tcp/80]")
    if not m["net"]:
        raise ValueError(f"traffic selector {text!r} has no address; write e.g. 0.0.0.0/0{text.strip()}")
    if m["net"] == "dynamic":
        raise ValueError("'dynamic' needs IKE; write the address")
    net = _parse_net(m["net"])
    proto = _parse_proto(m["proto"] or "")
    if proto in _ICMP and proto != (1 if net.version == 4 else 58):
        raise ValueError(f"protocol {proto} does not go with IPv{net.version}; "
                         f"use {'icmp' if net.version == 4 else 'icmpv6'}")
    return TrafficSelector(net=net, proto=proto, ports=_parse_ports(m["port"] or "", proto))


# --- locating keys in the text ---------------------------------------------------------------------------------

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_KEYVAL_RE = re.compile(rf"^\s*({_DOTTED})\s*=")


def _split_key(dotted: str) -> KeyPath:
    parts = re.findall(_KEY, dotted)
    return tuple(json.loads(p) if p.startswith('"') else p.strip("'") for p in parts)


class _Locator:
    """Key path -> line number, from a scan of the raw TOML text (as people write it, not every corner)."""

    def __init__(self, text: str):
        self.explicit: dict[KeyPath, int] = {}  # tables with a header, keys with a `key =` line
        self.implicit: dict[KeyPath, int] = {}  # parents created by a dotted key or header
        arrays: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_string = False
        for lineno, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_string:
                in_string = quotes % 2 == 0  # a multi-line string ends on this line if it has an odd count
                continue
            in_string = quotes % 2 == 1
            if m := _ARRAY_RE.match(line):
                path = _split_key(m.group(1))
                arrays[path] = arrays.get(path, -1) + 1
                table = (*path, str(arrays[path]))
                self._define(table, lineno)
            elif m := _TABLE_RE.match(line):
                table = _split_key(m.group(1))
                self._define(table, lineno)
            elif m := _KEYVAL_RE.match(line):
                self._define((*table, *_split_key(m.group(1))), lineno)

    def _define(self, path: KeyPath, lineno: int) -> None:
        self.explicit.setdefault(path, lineno)
        for i in range(1, len(path)):
            self.implicit.setdefault(path[:i], lineno)

    def line(self, path: KeyPath) -> int:
        """The line defining `path`, else that of its nearest defined parent, else 1."""
        for i in range(len(path), 0, -1):
            for known in (self.explicit, self.implicit):
                if path[:i] in known:
                    return known[path[:i]]
        return 1


# --- reading values with their problems -----------------------------------------------------------------------

_REQUIRED = object()
_TOML_TYPES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}


def _type_name(value: Any) -> str:
    return next((name for t, name in _TOML_TYPES.items() if isinstance(value, t)), "date/time")


class _Checker:
    """Collects problems and warnings with their file positions while the config is read."""

    def __init__(self, file: str, locator: _Locator):
        self.file, self.locator = file, locator
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(self.file, self.locator.line(path), ".".join(path), message)

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.problem(path, message))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(self.problem(path, message))

    def unknown_keys(self, table: dict, path: KeyPath, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(allowed)}"
                self.error((*path, key), f"unknown key; {hint}")

    def get(self, table: dict, path: KeyPath, key: str, kind: type, default: Any = _REQUIRED) -> Any:
        """table[key] if it has TOML type `kind`; else record a problem and return None (or the default)."""
        if key not in table:
            if default is _REQUIRED:
                self.error((*path, key), "missing (required)")
                return None
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error((*path, key), f"expected {'an' if _TOML_TYPES[kind][0] in 'ai' else 'a'} "
                                     f"{_TOML_TYPES[kind]}, got {_type_name(value)} {value!r}")
            return None
        return value

    def table(self, value: Any, path: KeyPath) -> bool:
        """Is `value` (found at `path`) a table? Records a problem if not."""
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {_type_name(value)} {value!r}")
            return False
        return True

    def strings(self, table: dict, path: KeyPath, key: str, default: Any = _REQUIRED) -> list[str] | None:
        """An array of strings; a string is split at commas, as swanctl does ("aes128gcm16,aes256gcm16")."""
        if key not in table:
            return self.get(table, path, key, list, default)
        value = table[key]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error((*path, key), f"expected an array of strings, got {value!r}")
            return None
        return value

    def integer(self, table: dict, path: KeyPath, key: str, lo: int, hi: int, default: Any) -> int | None:
        value = self.get(table, path, key, int, default)
        if value is not None and not lo <= value <= hi:
            self.error((*path, key), f"{value} is outside {lo}..{hi}")
            return None
        return value

    def choice(self, table: dict, path: KeyPath, key: str, enum_type: type[enum.Enum], default: Any) -> Any:
        value = self.get(table, path, key, str, default)
        if value is None or isinstance(value, enum_type):
            return value
        try:
            return enum_type(value)
        except ValueError:
            valid = " | ".join(str(m.value) for m in enum_type)
            self.error((*path, key), f"{value!r} is not one of {valid}")
            return None


# --- the schema, section by section ---------------------------------------------------------------------------

_TOP_KEYS = ("instance", "gateway", "connections", "secrets", "secrets_file", "log", "metrics", "debug", "limits")
_GATEWAY_KEYS = ("interfaces", "workers", "cpus", "xdp_mode", "state_dir", "default_action", "encap_port",
                 "retransmit_timeout", "retransmit_tries")
_CONN_KEYS = ("local_addrs", "remote_addrs", "encap", "local_port", "remote_port", "children")
_IKE_CONN_KEYS = (*_CONN_KEYS, "version", "proposals", "dpd_delay", "dpd_timeout", "keyingtries",
                  "retransmit_timeout", "retransmit_tries", "rekey_time", "over_time", "rand_time", "local",
                  "remote", "fragmentation", "fragment_size")
_CHILD_KEYS = ("mode", "local_ts", "remote_ts", "esp_proposals", "ah_proposals", "priority", "replay_window",
               "manual")
_CHILD_LIFETIME_KEYS = ("rekey_time", "life_time", "rand_time", "rekey_bytes", "life_bytes", "rekey_packets",
                        "life_packets")
_IKE_CHILD_KEYS = (*_CHILD_KEYS[:-1], "start_action", "dpd_action", *_CHILD_LIFETIME_KEYS)
_ANY_CHILD_KEYS = tuple(dict.fromkeys((*_CHILD_KEYS, *_IKE_CHILD_KEYS)))  # IKE-only keys get their own message
_LOCAL_KEYS = ("auth", "id", "certs", "private_key", "rsa_pss")
_REMOTE_KEYS = ("auth", "id", "cacerts")
_SECRETS_KEYS = ("ike",)
_SECRET_KEYS = ("id", "secret")
_MANUAL_KEYS = ("in_spi", "out_spi", "in_enc_key", "out_enc_key", "in_integ_key", "out_integ_key")
_LOG_KEYS = ("format", "level", "levels")
_METRICS_KEYS = ("listen",)
_DEBUG_KEYS = ("key_export",)
_LIMITS_KEYS = tuple(f.name for f in fields(Limits))
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IFNAME_RE = re.compile(r"[^/\s:]{1,15}")  # IFNAMSIZ - 1; '/', ':' and whitespace are not allowed by the kernel
_MAX_PRIORITY = 1_000_000
#: Retransmission bounds. Below 0.1 s a lost packet turns into a burst; above an hour, or past 100 tries, a dead
#: peer is never noticed in practice (strongSwan's defaults, 4 s and 5 tries, give up after 165 s).
_RETRANSMIT_TIMEOUT_RANGE = (0.1, 3600.0)
_RETRANSMIT_DEFAULTS = (GatewayConfig.retransmit_timeout, GatewayConfig.retransmit_tries)
_MAX_RETRANSMIT_TRIES = 100


class _DefaultAction(enum.Enum):
    BYPASS = "bypass"
    DISCARD = "discard"


def _gateway(ck: _Checker, tbl: dict) -> GatewayConfig | None:
    path = ("gateway",)
    ck.unknown_keys(tbl, path, _GATEWAY_KEYS)
    ifaces = ck.strings(tbl, path, "interfaces")
    if ifaces is not None:
        if not ifaces:
            ck.error((*path, "interfaces"), "empty; name the interfaces XDP should attach to")
        for name in ifaces:
            if not _IFNAME_RE.fullmatch(name) or name in (".", ".."):
                ck.error((*path, "interfaces"), f"{name!r} is not a valid interface name (1..15 characters, "
                                                f"no '/', ':' or spaces)")
        for name in sorted({n for n in ifaces if ifaces.count(n) > 1}):
            ck.error((*path, "interfaces"), f"{name!r} is listed twice")
    workers = ck.integer(tbl, path, "workers", 1, 64, min(os.cpu_count() or 1, 64))
    cpus_ok, cpus = _cpus(ck, tbl, path)
    xdp_mode = ck.choice(tbl, path, "xdp_mode", XdpMode, XdpMode.NATIVE)
    state_dir = ck.get(tbl, path, "state_dir", str, "/var/lib/xdpsec")
    if state_dir is not None and not state_dir.startswith("/"):
        ck.error((*path, "state_dir"), f"{state_dir!r} must be an absolute path")
        state_dir = None
    action = ck.choice(tbl, path, "default_action", _DefaultAction, _DefaultAction.BYPASS)
    encap_port = ck.integer(tbl, path, "encap_port", 1, 65535, 4500)
    timeout, tries = _retransmission(ck, tbl, path, _RETRANSMIT_DEFAULTS)
    values = (ifaces, workers, xdp_mode, state_dir, action, encap_port, timeout, tries)
    if any(v is None for v in values) or not cpus_ok:
        return None
    return GatewayConfig(interfaces=tuple(ifaces), workers=workers, xdp_mode=xdp_mode, state_dir=Path(state_dir),
                         default_action=Action[action.name], encap_port=encap_port, retransmit_timeout=timeout,
                         retransmit_tries=tries, cpus=cpus)


_MAX_CPU = 4095  # CONFIG_NR_CPUS of distribution kernels is at most 8192; beyond this is a typo


def _cpus(ck: _Checker, tbl: dict, path: KeyPath) -> tuple[bool, tuple[int, ...] | None]:
    """[gateway] cpus: (valid, CPU numbers or None when absent). Whether the CPUs exist is the running
    machine's business: the worker warns and stays unpinned if its CPU is not available."""
    if "cpus" not in tbl:
        return True, None
    value = ck.get(tbl, path, "cpus", list)
    if value is None:
        return False, None
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= _MAX_CPU for c in value):
        ck.error((*path, "cpus"), f"expected an array of CPU numbers 0..{_MAX_CPU}, got {value!r}")
        return False, None
    twice = sorted({c for c in value if value.count(c) > 1})
    for cpu in twice:
        ck.error((*path, "cpus"), f"CPU {cpu} is listed twice")
    return not twice, tuple(value)
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= _MAX_CPU for c in value):
        ck.error((*path, "cpus"), f"expected an array of CPU numbers 0..{_MAX_CPU}, got {value!r}")
        return None
    for cpu in sorted({c for c in value if value.count(c) > 1}):
        ck.error((*path, "cpus"), f"CPU {cpu} is listed twice")
    return value


def _retransmission(ck: _Checker, tbl: dict, path: KeyPath,
                    default: tuple[float, int]) -> tuple[float | None, int | None]:
    """retransmit_timeout (a duration, or float seconds as strongswan.conf's double) and retransmit_tries."""
    value = tbl.get("retransmit_timeout", default[0])
    timeout = value if isinstance(value, float) else _duration(ck, tbl, path, "retransmit_timeout")
    lo, hi = _RETRANSMIT_TIMEOUT_RANGE
    if timeout is not None and not lo <= timeout <= hi:  # also refuses nan
        ck.error((*path, "retransmit_timeout"), f"{value!r} is outside {lo:g}..{hi:g} seconds")
        timeout = None
    tries = ck.integer(tbl, path, "retransmit_tries", 0, _MAX_RETRANSMIT_TRIES, default[1])
    return timeout, tries


def _addresses(ck: _Checker, tbl: dict, path: KeyPath, key: str, ike: bool = False) -> tuple[IPAddress, ...] | None:
    """Outer addresses; for IKE, "%any" (or nothing) means any address, an empty tuple."""
    texts = ck.strings(tbl, path, key, [])
    if texts is None:
        return None
    if ike and "%any" in texts:
        return ()
    addrs = []
    for text in texts:
        try:
            addrs.append(ipaddress.ip_address(text))
        except ValueError:
            ck.error((*path, key), f"{text!r} is not an IP address (hostnames, ranges and %any need IKE)")
            return None
    return tuple(addrs)


def _check_outer(ck: _Checker, path: KeyPath, local: tuple, remote: tuple) -> bool:
    """Manual keying names one SA between two known addresses: exactly one on each side, one family."""
    ok = True
    for key, addrs in (("local_addrs", local), ("remote_addrs", remote)):
        if len(addrs) != 1:
            ck.error((*path, key), f"manual keying needs exactly one address, got {len(addrs)}")
            ok = False
    if ok and local[0].version != remote[0].version:
        ck.error((*path, "remote_addrs"), f"IPv{remote[0].version} address with an IPv{local[0].version} "
                                          f"local_addrs; the outer header has one family")
        ok = False
    return ok


def _encap(ck: _Checker, tbl: dict, path: KeyPath, gw_port: int) -> tuple[bool, UdpEncap | None]:
    encap = ck.get(tbl, path, "encap", bool, False)
    ports = [ck.integer(tbl, path, key, 1, 65535, gw_port) for key in ("local_port", "remote_port")]
    if not encap:
        for key in ("local_port", "remote_port"):
            if key in tbl:
                ck.error((*path, key), "only used with encap = true (RFC 3948 UDP encapsulation)")
        return encap is not None, None
    if None in ports:
        return False, None
    return True, UdpEncap(sport=ports[0], dport=ports[1])


def _unkeyed_children(tbl: dict) -> list[str]:
    """Names of the protected children (tunnel/transport) without a [manual] table: IKE must key them."""
    children = tbl.get("children")
    if not isinstance(children, dict):
        return []
    return [name for name, c in children.items() if isinstance(c, dict) and "manual" not in c
            and c.get("mode", "tunnel") in ("tunnel", "transport")]


def _is_ike(tbl: dict) -> bool:
    """IKE keys a connection with authentication tables, or with a protected child that has no manual keys."""
    return "local" in tbl or "remote" in tbl or bool(_unkeyed_children(tbl))


def _connection(ck: _Checker, name: str, tbl: dict, gw_port: int, ctx: _IkeContext) -> Connection | None:
    if _is_ike(tbl):
        return _ike_connection(ck, name, tbl, ctx)
    path = ("connections", name)
    for key in tbl:
        if key in _IKE_CONN_KEYS and key not in _CONN_KEYS:
            ck.error((*path, key), "only for IKE connections (with [local] and [remote] tables); this one is "
                                   "manually keyed")
    ck.unknown_keys(tbl, path, _IKE_CONN_KEYS)
    local = _addresses(ck, tbl, path, "local_addrs")
    remote = _addresses(ck, tbl, path, "remote_addrs")
    encap_ok, encap = _encap(ck, tbl, path, gw_port)
    children_tbl = ck.get(tbl, path, "children", dict)
    if local is None or remote is None or children_tbl is None or not encap_ok:
        return None
    if not children_tbl:
        ck.error((*path, "children"), "no children; add a [connections.<name>.children.<child>] table")
        return None
    needs_sa = any(isinstance(c, dict) and c.get("mode", "tunnel") in ("tunnel", "transport")
                   for c in children_tbl.values())
    if needs_sa and not _check_outer(ck, path, local, remote):
        return None
    conn = Connection(name=name, local_addrs=local, remote_addrs=remote, encap=encap, children=())
    children = []
    for child_name, child_tbl in children_tbl.items():
        child_path = (*path, "children", child_name)
        if not (_valid_name(ck, child_path, child_name) and ck.table(child_tbl, child_path)):
            continue
        child = _child(ck, conn, child_path, child_tbl, ike=False, encap=encap is not None)
        if child is not None:
            children.append(child)
    return Connection(name=name, local_addrs=local, remote_addrs=remote, encap=encap, children=tuple(children))


def _valid_name(ck: _Checker, path: KeyPath, name: str) -> bool:
    if _NAME_RE.fullmatch(name):
        return True
    ck.error(path, "names are 1..64 letters, digits, '_', '.' or '-' (a '/' joins connection and child)")
    return False


def _dynamic_ts(text: str, addrs: tuple[IPAddress, ...], addrs_key: str) -> list[TrafficSelector]:
    """swanctl's `dynamic[proto/port]`: this end's IKE address(es), here the configured ones."""
    rest = text.strip()[len("dynamic"):]
    if rest and not rest.startswith("["):
        raise ValueError(f"bad traffic selector {text!r}; write dynamic or dynamic[proto/port]")
    if not addrs:
        raise ValueError(f"'dynamic' (the default) stands for the IKE address of this end, but {addrs_key} is "
                         f"any: list the address in {addrs_key} or write the selector (e.g. 198.51.100.0/24)")
    return [parse_ts(f"{addr}{rest}") for addr in addrs]


def _selectors(ck: _Checker, tbl: dict, path: KeyPath, key: str, default: tuple,
               dynamic: tuple[tuple[IPAddress, ...], str] | None = None) -> tuple | None:
    """Traffic selectors; `dynamic` (IKE only: the addresses and their key) resolves swanctl's `dynamic`."""
    if key in tbl:
        texts = ck.strings(tbl, path, key)
    elif dynamic is not None:
        texts = ["dynamic"]  # swanctl's default for IKE children
    else:
        if not default:
            ck.error((*path, key), "missing; required for this mode (e.g. [\"198.51.100.0/24\"])")
        return default or None
    if texts is None:
        return None
    result = []
    for text in texts:
        try:
            if dynamic is not None and text.strip().startswith("dynamic"):
                result.extend(_dynamic_ts(text, *dynamic))
            else:
                result.append(parse_ts(text))
        except ValueError as e:
            ck.error((*path, key), str(e))
            return None
    if not result:
        ck.error((*path, key), "empty; list at least one traffic selector")
        return None
    return tuple(result)


def _transport_ts_ok(ck: _Checker, path: KeyPath, key: str, ts: tuple, addrs: tuple[IPAddress, ...]) -> bool:
    """Transport mode protects the hosts' own traffic (RFC 4301 §4.1): selectors must be outer addresses.

    With no addresses (an IKE responder for any peer) there is nothing to compare with before negotiation.
    """
    for sel in ts:
        if addrs and (sel.net.num_addresses != 1 or sel.net.network_address not in addrs):
            ck.error((*path, key), f"{sel} is not the outer address {', '.join(map(str, addrs))}: transport mode "
                                   f"carries only the endpoints' own traffic (RFC 4301 §4.1); use "
                                   f"mode = \"tunnel\"")
            return False
    return True


def _proposal(ck: _Checker, tbl: dict, path: KeyPath, encap: bool) -> tuple[Protocol, Transform] | None:
    present = [k for k in ("esp_proposals", "ah_proposals") if k in tbl]
    if len(present) != 1:
        ck.error((*path, present[1] if present else "esp_proposals"),
                 "set esp_proposals or ah_proposals, not both" if present else
                 "missing; manual keying needs one proposal, e.g. esp_proposals = [\"aes128gcm16\"]")
        return None
    key = present[0]
    texts = ck.strings(tbl, path, key)
    if texts is None:
        return None
    if len(texts) != 1:
        ck.error((*path, key), f"manual keying uses exactly one proposal, got {len(texts)}")
        return None
    protocol, parse = (Protocol.ESP, proposals.parse_esp) if key == "esp_proposals" else (Protocol.AH,
                                                                                          proposals.parse_ah)
    try:
        transform = parse(texts[0])
    except proposals.ProposalError as e:
        ck.error((*path, key), str(e))
        return None
    if protocol == Protocol.AH and encap:
        ck.error((*path, key), "AH cannot be UDP-encapsulated (RFC 3948 covers ESP only; AH's ICV covers the "
                               "addresses a NAT rewrites); use esp_proposals or encap = false")
        return None
    for note in proposals.advice(transform):
        ck.warn((*path, key), note)
    return protocol, transform


def _child(ck: _Checker, conn: Connection, path: KeyPath, tbl: dict, ike: bool, encap: bool) -> Child | None:
    if not ike:
        for key in tbl:
            if key in _IKE_CHILD_KEYS and key not in _CHILD_KEYS:
                ck.error((*path, key), "only for children keyed by IKE (a manually keyed SA is never rekeyed "
                                       "or started); remove it, or key this connection with IKE")
    ck.unknown_keys(tbl, path, _IKE_CHILD_KEYS if ike else _ANY_CHILD_KEYS)
    mode = ck.choice(tbl, path, "mode", ChildMode, ChildMode.TUNNEL)
    if mode is None:
        return None
    transport = mode == ChildMode.TRANSPORT
    if ike:  # swanctl: both default to `dynamic`, the IKE endpoints
        local_ts = _selectors(ck, tbl, path, "local_ts", (), (conn.local_addrs, "local_addrs"))
        remote_ts = _selectors(ck, tbl, path, "remote_ts", (), (conn.remote_addrs, "remote_addrs"))
    else:  # transport mode defaults to the endpoints themselves; the others must say what they carry
        default_local = (TrafficSelector(ipaddress.ip_network(conn.local_addrs[0])),) if transport else ()
        default_remote = (TrafficSelector(ipaddress.ip_network(conn.remote_addrs[0])),) if transport else ()
        local_ts = _selectors(ck, tbl, path, "local_ts", default_local)
        remote_ts = _selectors(ck, tbl, path, "remote_ts", default_remote)
    priority = ck.integer(tbl, path, "priority", 0, _MAX_PRIORITY, 0)
    replay = ck.integer(tbl, path, "replay_window", 0, 65536, 1024)
    if replay == 0:
        ck.warn((*path, "replay_window"), "0 disables anti-replay (RFC 4303 §3.4.3): replayed packets are "
                                          "accepted")
    if None in (local_ts, remote_ts, priority, replay):
        return None
    if transport and not (_transport_ts_ok(ck, path, "local_ts", local_ts, conn.local_addrs)
                          and _transport_ts_ok(ck, path, "remote_ts", remote_ts, conn.remote_addrs)):
        return None
    if not any(True for _ in _selector_pairs(local_ts, remote_ts)):
        ck.error((*path, "remote_ts"), "no local_ts/remote_ts pair has the same address family and protocol: "
                                       "the child would match nothing")
        return None
    child = Child(name=path[-1], mode=mode, local_ts=local_ts, remote_ts=remote_ts, priority=priority,
                  replay_window=replay)
    if mode in _SHUNT_ACTION:
        for key in ("esp_proposals", "ah_proposals", "manual", "start_action", "dpd_action", *_CHILD_LIFETIME_KEYS):
            if key in tbl:
                ck.error((*path, key), f"mode = \"{mode.value}\" is a shunt without SAs; remove {key}")
        return child
    if ike:
        return _ike_child(ck, conn, path, tbl, child, encap)
    return _protected_child(ck, conn, path, tbl, child)


def _protected_child(ck: _Checker, conn: Connection, path: KeyPath, tbl: dict, child: Child) -> Child | None:
    found = _proposal(ck, tbl, path, conn.encap is not None)
    manual_tbl = ck.get(tbl, path, "manual", dict)
    if manual_tbl is None:
        return None
    # Without a transform the key lengths are unknown, but the SPIs and key names can still be checked.
    manual = _manual(ck, (*path, "manual"), manual_tbl, found[1] if found else None)
    if found is None or manual is None:
        return None
    protocol, transform = found
    child = replace(child, protocol=protocol, transform=transform, manual=manual)
    try:
        _sa_pair(conn, child)  # SAParams checks its own invariants; a failure here is a gap in ours
    except ValueError as e:
        ck.error(path, str(e))
        return None
    return child


def _spi(ck: _Checker, tbl: dict, path: KeyPath, key: str) -> int | None:
    """An SPI as a TOML integer (0x1001) or a string ("0x1001", as `ip xfrm` prints it)."""
    value = tbl.get(key)
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            ck.error((*path, key), f"{value!r} is not a number; write 0x1001 or 4097")
            return None
    elif not isinstance(value, int) or isinstance(value, bool):
        return ck.get(tbl, path, key, int)  # reports it missing or of the wrong type
    if not 0x100 <= value <= 0xFFFFFFFF:
        ck.error((*path, key), f"SPI {value:#x} is outside 0x100..0xffffffff (0 is not an SPI and 1..255 are "
                               f"reserved by IANA, RFC 4303 §2.1)")
        return None
    return value


def _key_bytes(ck: _Checker, tbl: dict, path: KeyPath, key: str, need: int, why: str, t: Transform) -> bytes:
    """Hex key material of the length the transform needs; records a problem and returns b"" otherwise."""
    name = proposals.format_transform(t)
    if key not in tbl:
        if need:
            ck.error((*path, key), f"missing; {name} needs {need} bytes ({why})")
        return b""
    text = ck.get(tbl, path, key, str)
    if text is None:
        return b""
    if not need:
        ck.error((*path, key), f"not used by {name} ({why}); remove it")
        return b""
    digits = text.strip().replace(":", "")
    digits = digits[2:] if digits[:2].lower() == "0x" else digits
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        ck.error((*path, key), "not hex; write pairs of hex digits, optionally with ':' between bytes")
        return b""
    if len(data) != need:
        ck.error((*path, key), f"{len(data)} bytes, {name} needs {need} ({why})")
    return data


def _enc_key_why(t: Transform) -> str:
    if t.encr is None:
        return "AH does not encrypt"
    if t.encr == Encr.NULL:
        return "ENCR_NULL has no key"
    if t.encr == Encr.CHACHA20_POLY1305:
        return f"32-byte key + {AEAD_SALT_LEN}-byte salt, RFC 7634 §2"
    if t.is_aead:
        return f"{t.encr_key_bits // 8}-byte key + {AEAD_SALT_LEN}-byte salt, RFC 4106 §8.1"
    return f"AES-{t.encr_key_bits} key, RFC 3602"


def _integ_key_why(t: Transform) -> str:
    if t.integ is None:
        return "the AEAD cipher carries its own ICV"
    return "HMAC-SHA2 keys are as long as the hash output, RFC 4868 §2.1.1"


def _manual(ck: _Checker, path: KeyPath, tbl: dict, t: Transform | None) -> ManualKeys | None:
    ck.unknown_keys(tbl, path, _MANUAL_KEYS)
    spis = {key: _spi(ck, tbl, path, key) for key in ("in_spi", "out_spi")}
    if t is None:
        return None
    keys = {}
    for d in ("in", "out"):
        keys[f"{d}_enc_key"] = _key_bytes(ck, tbl, path, f"{d}_enc_key", t.enc_key_len, _enc_key_why(t), t)
        keys[f"{d}_integ_key"] = _key_bytes(ck, tbl, path, f"{d}_integ_key", t.integ_key_len,
                                            _integ_key_why(t), t)
    if None in spis.values() or any(len(v) != need for v, need in (
            (keys["in_enc_key"], t.enc_key_len), (keys["out_enc_key"], t.enc_key_len),
            (keys["in_integ_key"], t.integ_key_len), (keys["out_integ_key"], t.integ_key_len))):
        return None
    return ManualKeys(**spis, **keys)


# --- IKE: durations, identities, secrets, certificates -------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+)\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: int | str) -> float:
    """A swanctl duration: integer seconds, or "30s", "5m", "1h", "1d". Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a duration; write seconds (30) or \"30s\", \"5m\", \"1h\", \"1d\"")
    return float(int(m[1]) * _DURATION_UNITS[m[2]])


# strongSwan's DN attribute names (its asn1 OID table, the common subset).
_DN_ATTRS = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
             "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
             "E": NameOID.EMAIL_ADDRESS, "EMAIL": NameOID.EMAIL_ADDRESS, "SN": NameOID.SERIAL_NUMBER,
             "DC": NameOID.DOMAIN_COMPONENT, "UID": NameOID.USER_ID, "STREET": NameOID.STREET_ADDRESS,
             "T": NameOID.TITLE, "G": NameOID.GIVEN_NAME}


def _parse_dn(text: str) -> x509.Name:
    """strongSwan's DN syntax: "C=CH, O=Example, CN=gw" with RDNs in the order of the ASN.1 sequence."""
    rdns = []
    for part in re.split(r"(?<!\\),", text):
        attr, eq, value = part.partition("=")
        oid = _DN_ATTRS.get(attr.strip().upper())
        if not eq or oid is None:
            raise ValueError(f"bad DN component {part.strip()!r} in {text!r}; write TYPE=value with TYPE one "
                             f"of {', '.join(_DN_ATTRS)}")
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value.strip().replace("\\,", ","))]))
    return x509.Name(rdns)


def _dn_text(name: x509.Name) -> str:
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value}" for a in name)


def _dn_identity(name: x509.Name, text: str = "") -> Identity:
    return Identity(IdType.DER_ASN1_DN, name.public_bytes(), text or _dn_text(name))


def parse_identity(text: str) -> Identity:
    """An IKE identity in strongSwan's syntax (RFC 7296 §3.5 types). Raises ValueError.

    IPv4/IPv6 address; "C=CH, O=x, CN=y" (a DN: it contains '='); "user@example.org" (email);
    "@example.org" (an FQDN, never taken for an address); "@#0a1b" (key ID, hex); anything else an FQDN.
    """
    t = text.strip()
    if not t:
        raise ValueError("empty identity")
    if t.startswith("@#"):
        try:
            return Identity(IdType.KEY_ID, bytes.fromhex(t[2:]), text)
        except ValueError:
            raise ValueError(f"{text!r}: a key ID is '@#' and hex digits") from None
    if t.startswith("@"):
        return Identity(IdType.FQDN, t[1:].encode(), text)
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        pass
    else:
        return Identity(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed, text)
    if "=" in t:
        return _dn_identity(_parse_dn(t), text)
    if not t.isascii() or any(c.isspace() for c in t):
        raise ValueError(f"{text!r} is not an address, FQDN, email address or DN \"CN=..., O=...\"")
    return Identity(IdType.RFC822_ADDR if "@" in t else IdType.FQDN, t.encode(), text)


def _address_identity(addr: IPAddress) -> Identity:
    return Identity(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed, str(addr))


def _same_identity(a: Identity, b: Identity) -> bool:
    """Equal type and data; names compare case-insensitively, as DNS and strongSwan do."""
    if a.id_type != b.id_type:
        return False
    if a.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        return a.data.lower() == b.data.lower()
    return a.data == b.data


@dataclass(frozen=True)
class PskSecret:
    """One `secrets.ike` entry: the identities it is for (none: any pair) and the key."""

    ids: tuple[Identity, ...]
    secret: bytes = field(repr=False)


def decode_secret(text: str) -> bytes:
    """A strongSwan secret: "0x" + hex, "0s" + base64, else the UTF-8 text itself. Raises ValueError."""
    if text[:2].lower() == "0x":
        try:
            return bytes.fromhex(text[2:].replace(":", ""))
        except ValueError:
            raise ValueError("a \"0x\" secret must be hex digits") from None
    if text[:2] == "0s":
        try:
            return base64.b64decode(text[2:], validate=True)
        except binascii.Error:
            raise ValueError("a \"0s\" secret must be base64") from None
    return text.encode()


def find_psk(secrets: tuple[PskSecret, ...], local: Identity, remote: Identity) -> bytes | None:
    """The secret for this pair (swanctl secrets.ike-*): one naming both identities, else one naming none."""
    for s in secrets:
        if any(_same_identity(i, local) for i in s.ids) and any(_same_identity(i, remote) for i in s.ids):
            return s.secret
    return next((s.secret for s in secrets if not s.ids), None)


def _loose_mode(path: Path) -> str | None:
    """Why `path` is too open for a secret (group/other permission bits), or None."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return f"{path} is mode {mode:04o}: it holds secrets and must not be readable by group or others; " \
               f"chmod 600 {path}"
    return None


# RFC 7296 §2.15: a PSK is only as strong as its entropy; shorter than a 128-bit key invites a dictionary attack.
_MIN_PSK = 16


def _secret_entries(ck: _Checker, tbl: Any, path: KeyPath) -> list[PskSecret]:
    if not ck.table(tbl, path):
        return []
    ck.unknown_keys(tbl, path, _SECRETS_KEYS)
    entries = ck.get(tbl, path, "ike", list, [])
    out = []
    for i, entry in enumerate(entries or []):
        epath = (*path, "ike", str(i))
        if not ck.table(entry, epath):
            continue
        ck.unknown_keys(entry, epath, _SECRET_KEYS)
        texts = ck.strings(entry, epath, "id", [])
        text = ck.get(entry, epath, "secret", str)
        if texts is None or text is None:
            continue
        try:
            ids = tuple(parse_identity(t) for t in texts)
            secret = decode_secret(text)
        except ValueError as e:
            ck.error(epath, str(e))
            continue
        if len(secret) < _MIN_PSK:
            ck.warn((*epath, "secret"), f"{len(secret)} bytes: RFC 7296 §2.15 wants a PSK as strong as a key; use "
                                        f"at least {_MIN_PSK} random bytes (e.g. \"0s\" + `head -c 32 "
                                        f"/dev/urandom | base64`)")
        out.append(PskSecret(ids, secret))
    return out


def _secrets(ck: _Checker, data: dict, path: Path) -> tuple[PskSecret, ...]:
    """The [secrets] table of the file and that of `secrets_file`, in this order."""
    found = []
    if "secrets" in data:
        found += _secret_entries(ck, data["secrets"], ("secrets",))
        if (loose := _loose_mode(path)) is not None:
            ck.warn(("secrets",), loose.replace("; chmod", ", or move [secrets] to a secrets_file; chmod"))
    name = ck.get(data, (), "secrets_file", str, None)
    if name is None:
        return tuple(found)
    file = path.parent / name
    try:
        loose = _loose_mode(file)
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        ck.error(("secrets_file",), f"cannot read {file}: {e}")
        return tuple(found)
    if loose is not None:
        ck.error(("secrets_file",), loose)
        return tuple(found)
    try:
        sub_data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        ck.problems.append(_syntax_problem(str(file), e))
        return tuple(found)
    sub = _Checker(str(file), _Locator(text))
    sub.unknown_keys(sub_data, (), ("secrets",))
    found += _secret_entries(sub, sub_data.get("secrets", {}), ("secrets",))
    ck.problems += sub.problems
    ck.warnings += sub.warnings
    return tuple(found)


def _read(ck: _Checker, path: KeyPath, base: Path, name: str) -> tuple[Path, bytes] | None:
    file = base / name
    try:
        return file, file.read_bytes()
    except OSError as e:
        ck.error(path, f"cannot read {file}: {e.strerror or e}")
        return None


def _certs(ck: _Checker, tbl: dict, path: KeyPath, key: str, base: Path) -> list[x509.Certificate] | None:
    """Certificates from PEM (one or more per file) or DER files, in the order listed."""
    names = ck.strings(tbl, path, key, [])
    if names is None:
        return None
    out = []
    for name in names:
        found = _read(ck, (*path, key), base, name)
        if found is None:
            return None
        file, data = found
        try:
            out += x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else \
                [x509.load_der_x509_certificate(data)]
        except ValueError:
            ck.error((*path, key), f"{file} is not a PEM or DER X.509 certificate")
            return None
    return out


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_key(ck: _Checker, tbl: dict, path: KeyPath, base: Path, cert: x509.Certificate) -> bytes | None:
    """The key file's bytes, once it is private to its owner, parses, and belongs to our certificate."""
    name = ck.get(tbl, path, "private_key", str)
    found = _read(ck, (*path, "private_key"), base, name) if name is not None else None
    if found is None:
        return None
    file, data = found
    if (loose := _loose_mode(file)) is not None:
        ck.error((*path, "private_key"), loose)
        return None
    load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:
        ck.error((*path, "private_key"), f"{file} is encrypted; xdpsec needs it unencrypted (its file mode "
                                         f"protects it)")
        return None
    except (ValueError, serialization.UnsupportedAlgorithm):
        ck.error((*path, "private_key"), f"{file} is not a PEM or DER private key")
        return None
    if isinstance(key, dsa.DSAPrivateKey):
        ck.error((*path, "private_key"), f"{file} is a DSA key; use RSA, ECDSA or Ed25519")
        return None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        ck.error((*path, "private_key"), f"{file} does not belong to our certificate {_dn_text(cert.subject)} "
                                         f"(different public key)")
        return None
    return data


def _cert_identities(cert: x509.Certificate) -> list[Identity]:
    """What a certificate vouches for: its subject and its subjectAltNames of IKE ID types."""
    ids = [_dn_identity(cert.subject)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ids
    ids += [Identity(IdType.FQDN, n.encode()) for n in san.get_values_for_type(x509.DNSName)]
    ids += [Identity(IdType.RFC822_ADDR, n.encode()) for n in san.get_values_for_type(x509.RFC822Name)]
    return ids + [_address_identity(a) for a in san.get_values_for_type(x509.IPAddress)]


# --- IKE: authentication rounds, children, connections -----------------------------------------------------------

@dataclass(frozen=True)
class _IkeContext:
    base: Path  # certificate and key paths are relative to the configuration file
    secrets: tuple[PskSecret, ...]
    retransmission: tuple[float, int]  # [gateway] retransmit_timeout and retransmit_tries, the defaults


def _round_identity(ck: _Checker, tbl: dict, path: KeyPath) -> tuple[bool, Identity | None]:
    text = ck.get(tbl, path, "id", str, None)
    if text is None:
        return "id" not in tbl, None
    try:
        return True, parse_identity(text)
    except ValueError as e:
        ck.error((*path, "id"), str(e))
        return False, None


def _default_psk_identity(ck: _Checker, path: KeyPath, addrs: tuple[IPAddress, ...], side: str) -> Identity | None:
    if len(addrs) == 1:
        return _address_identity(addrs[0])
    ck.error((*path, "id"), f"missing; PSK authentication looks the secret up by both identities, and "
                            f"{side}_addrs has {len(addrs) or 'any'} address{'es' if len(addrs) != 1 else ''} to "
                            f"default to: set id, e.g. id = \"gw.example.org\"")
    return None


def _auth_round(ck: _Checker, conn_tbl: dict, conn_path: KeyPath, side: str, addrs: tuple[IPAddress, ...],
                ctx: _IkeContext) -> AuthRound | None:
    """[local] or [remote] minus the PSK, which needs both identities (`_with_psk`)."""
    path = (*conn_path, side)
    if side not in conn_tbl:
        unkeyed = ", ".join(_unkeyed_children(conn_tbl))
        why = f" (children without a [manual] table: {unkeyed})" if unkeyed else ""
        ck.error(path, f"missing; IKE keys this connection{why}: add [{'.'.join(path)}] with auth = \"psk\" or "
                       f"\"pubkey\", or give every child a [manual] table for manual keying")
        return None
    tbl = conn_tbl[side]
    if not ck.table(tbl, path):
        return None
    ck.unknown_keys(tbl, path, _LOCAL_KEYS if side == "local" else _REMOTE_KEYS)
    method = ck.choice(tbl, path, "auth", AuthMethod, _REQUIRED)
    ok, identity = _round_identity(ck, tbl, path)
    if method is None or not ok:
        return None
    if method == AuthMethod.PSK:
        for key in ("certs", "private_key", "cacerts"):
            if key in tbl:
                ck.error((*path, key), "only with auth = \"pubkey\"; PSKs live in [secrets]")
        if identity is None:
            identity = _default_psk_identity(ck, path, addrs, side)
        return AuthRound(AuthMethod.PSK, identity) if identity is not None else None
    if side == "remote":
        cacerts = _certs(ck, tbl, path, "cacerts", ctx.base)
        if cacerts == []:
            ck.error((*path, "cacerts"), "missing; pubkey authentication of the peer needs trust anchors, e.g. "
                                         "cacerts = [\"ca.pem\"]")
        if not cacerts:
            return None
        return AuthRound(AuthMethod.PUBKEY, identity, cacerts=tuple(c.public_bytes(serialization.Encoding.DER)
                                                                   for c in cacerts))
    return _local_pubkey(ck, tbl, path, identity, ctx)


def _local_pubkey(ck: _Checker, tbl: dict, path: KeyPath, identity: Identity | None,
                  ctx: _IkeContext) -> AuthRound | None:
    certs = _certs(ck, tbl, path, "certs", ctx.base)
    if certs == []:
        ck.error((*path, "certs"), "missing; pubkey authentication needs our certificate, e.g. certs = [\"gw.pem\"]")
    if not certs:
        return None
    key = _private_key(ck, tbl, path, ctx.base, certs[0])
    if key is None:
        return None
    if identity is None:
        identity = _dn_identity(certs[0].subject)
    elif not any(_same_identity(identity, i) for i in _cert_identities(certs[0])):
        ck.warn((*path, "id"), f"{identity.text!r} is neither the subject nor a subjectAltName of our certificate "
                               f"({_dn_text(certs[0].subject)}): peers will not accept the certificate for it "
                               f"(RFC 4945 §3.1)")
    rsa_pss = ck.get(tbl, path, "rsa_pss", bool, False)
    if rsa_pss and not isinstance(certs[0].public_key(), rsa.RSAPublicKey):
        ck.error((*path, "rsa_pss"), "only for an RSA key; ours is not RSA (remove rsa_pss)")
        rsa_pss = False
    return AuthRound(AuthMethod.PUBKEY, identity, private_key=key, rsa_pss=bool(rsa_pss),
                     certs=tuple(c.public_bytes(serialization.Encoding.DER) for c in certs))


def _with_psk(ck: _Checker, path: KeyPath, local: AuthRound, remote: AuthRound,
              secrets: tuple[PskSecret, ...]) -> tuple[AuthRound, AuthRound] | None:
    """Both rounds with the pair's PSK filled in where the method is PSK (RFC 7296 §2.15)."""
    if AuthMethod.PSK not in (local.method, remote.method):
        return local, remote
    local_id = local.identity
    remote_id = remote.identity or Identity(0, b"")
    assert local_id is not None  # the local round always has one (configured or defaulted)
    psk = find_psk(secrets, local_id, remote_id)
    if psk is None:
        side = "local" if local.method == AuthMethod.PSK else "remote"
        ck.error((*path, side, "auth"), f"no PSK for {local_id.text or 'us'} <-> {remote_id.text or 'any peer'}: "
                                        f"add {{ id = [\"{local_id.text}\", \"{remote_id.text}\"], secret = "
                                        f"\"...\" }} to [secrets] ike")
        return None
    return tuple(replace(r, psk=psk) if r.method == AuthMethod.PSK else r  # type: ignore[return-value]
                 for r in (local, remote))


def _child_proposals(ck: _Checker, tbl: dict, path: KeyPath, encap: bool) -> tuple[Protocol, tuple] | None:
    if "esp_proposals" in tbl and "ah_proposals" in tbl:
        ck.error((*path, "ah_proposals"), "set esp_proposals or ah_proposals, not both")
        return None
    key, protocol = ("ah_proposals", Protocol.AH) if "ah_proposals" in tbl else ("esp_proposals", Protocol.ESP)
    texts = ck.strings(tbl, path, key, list(proposals.DEFAULT_ESP_PROPOSALS))
    if texts is None:
        return None
    if protocol == Protocol.AH and encap:
        ck.error((*path, key), "AH cannot be UDP-encapsulated (RFC 3948 covers ESP only; AH's ICV covers the "
                               "addresses a NAT rewrites); use esp_proposals or encap = false")
        return None
    found: list[ChildProposal] = []
    for text in texts:
        try:
            found += proposals.parse_child(text, protocol)
        except proposals.ProposalError as e:
            ck.error((*path, key), str(e))
            return None
    unique = tuple(dict.fromkeys(found))
    if not unique or len(unique) > proposals.MAX_PROPOSALS:
        ck.error((*path, key), f"{len(unique)} proposals; list 1..{proposals.MAX_PROPOSALS} (RFC 7296 §3.3.1)")
        return None
    for note in dict.fromkeys(n for p in unique for n in proposals.advice(p.transform)):
        ck.warn((*path, key), note)
    return protocol, unique


def _ike_child(ck: _Checker, conn: Connection, path: KeyPath, tbl: dict, child: Child, encap: bool) -> Child | None:
    found = _child_proposals(ck, tbl, path, encap)
    start = ck.choice(tbl, path, "start_action", StartAction, StartAction.NONE)
    dpd = ck.choice(tbl, path, "dpd_action", DpdAction, DpdAction.CLEAR)
    lifetime = _child_lifetime(ck, tbl, path)
    if start in (StartAction.START, StartAction.TRAP) and not conn.remote_addrs:
        ck.error((*path, "start_action"), f"\"{start.value}\" initiates, but remote_addrs is any: a connection "
                                          f"for any peer can only respond; name the peer in remote_addrs")
        return None
    if found is None or start is None or dpd is None or lifetime is None:
        return None
    protocol, offers = found
    config = ChildConfig(name=child.name, local_ts=child.local_ts, remote_ts=child.remote_ts,
                         mode=Mode(child.mode.value), proposals=offers, start_action=start, dpd_action=dpd,
                         replay_window=child.replay_window, lifetime=lifetime)
    return replace(child, protocol=protocol, ike=config)


def _ike_proposals(ck: _Checker, tbl: dict, path: KeyPath) -> tuple[IkeProposal, ...] | None:
    texts = ck.strings(tbl, path, "proposals", list(proposals.DEFAULT_IKE_PROPOSALS))
    if texts is None:
        return None
    found: list[IkeProposal] = []
    for text in texts:
        try:
            found += proposals.parse_ike(text)
        except proposals.ProposalError as e:
            ck.error((*path, "proposals"), str(e))
            return None
    unique = tuple(dict.fromkeys(found))
    if not unique or len(unique) > proposals.MAX_PROPOSALS:
        ck.error((*path, "proposals"), f"{len(unique)} proposals; list 1..{proposals.MAX_PROPOSALS} "
                                       f"(RFC 7296 §3.3.1)")
        return None
    return unique


def _duration(ck: _Checker, tbl: dict, path: KeyPath, key: str) -> float | None:
    try:
        return parse_duration(tbl.get(key, 0))
    except ValueError as e:
        ck.error((*path, key), str(e))
        return None


# --- IKE: lifetimes (swanctl's rekey_/life_/rand_/over_ keys) -------------------------------------------------------

_MAX_VOLUME = 2**63 - 1  # bytes and packets: 64-bit counters, as the data path keeps them
_UNSET = object()


def format_duration(seconds: float) -> str:
    """The largest unit that states `seconds` exactly: 3600 -> "1h", 3960 -> "66m", 7.5 -> "7.5s"."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _DURATION_UNITS[unit] == 0:
            return f"{int(seconds // _DURATION_UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def _amount(ck: _Checker, tbl: dict, path: KeyPath, key: str, time: bool) -> Any:
    """A duration (time) or a byte/packet count; _UNSET if absent, None if wrong."""
    if key not in tbl:
        return _UNSET
    return _duration(ck, tbl, path, key) if time else ck.integer(tbl, path, key, 0, _MAX_VOLUME, 0)


def _soft_hard(ck: _Checker, tbl: dict, path: KeyPath, kind: str, default: float) -> tuple[Any, Any] | None:
    """rekey_<kind> and life_<kind> with strongSwan's defaults: the one not given is 10 % more (life) or less
    (rekey) than the other; neither given: rekey = `default`. Both non-zero: the SA must outlive its rekey."""
    time = kind == "time"
    soft_key, hard_key = f"rekey_{kind}", f"life_{kind}"
    soft, hard = (_amount(ck, tbl, path, key, time) for key in (soft_key, hard_key))
    if soft is None or hard is None:
        return None
    show = format_duration if time else str
    if soft is _UNSET:
        soft = default if hard is _UNSET else (hard * 9 / 10 if time else hard * 9 // 10)
    if hard is _UNSET:
        hard = soft * 11 / 10 if time else soft * 11 // 10
    elif soft and hard and hard <= soft:
        better = show(soft * 11 / 10 if time else soft * 11 // 10)
        ck.error((*path, hard_key), f"{show(hard)} is not more than {soft_key} ({show(soft)}): the SA would die "
                                    f"before it is rekeyed; make it larger, e.g. {better} ({soft_key} + 10 %, "
                                    f"strongSwan's default), or set it to 0 for no limit")
        return None
    return soft, hard


def _check_rand(ck: _Checker, path: KeyPath, rand: float, rekey: float, margin: float, margin_name: str) -> bool:
    """A rekey is scheduled at rekey_time - uniform(0, rand_time) (xdpsec.ike.conf.Lifetime)."""
    if rekey and rand >= rekey:
        ck.error((*path, "rand_time"), f"{format_duration(rand)} is not less than rekey_time "
                                       f"({format_duration(rekey)}): the rekey could be due at once; e.g. "
                                       f"rand_time = \"{format_duration(margin or rekey / 10)}\"")
        return False
    # The random spread stays within the margin between rekey and expiry (strongSwan's default is exactly it),
    # so a peer's rekeys stay close to what its rekey_time says.
    if rekey and margin and rand > margin:
        ck.error((*path, "rand_time"), f"{format_duration(rand)} is more than {margin_name} "
                                       f"({format_duration(margin)}); at most that, e.g. rand_time = "
                                       f"\"{format_duration(margin)}\" (the default)")
        return False
    return True


def _child_lifetime(ck: _Checker, tbl: dict, path: KeyPath) -> Lifetime | None:
    """A child's rekey_/life_/rand_time, rekey_/life_bytes and rekey_/life_packets (swanctl.conf defaults)."""
    pairs = [_soft_hard(ck, tbl, path, kind, default) for kind, default in
             (("time", CHILD_LIFETIME.rekey_time), ("bytes", 0), ("packets", 0))]
    rand = _amount(ck, tbl, path, "rand_time", time=True)
    if None in pairs or rand is None:
        return None
    (rekey, life), (rekey_bytes, life_bytes), (rekey_packets, life_packets) = pairs  # type: ignore[misc]
    margin = max(life - rekey, 0.0) if rekey else 0.0
    if rand is _UNSET:
        rand = min(margin, rekey / 2)  # strongSwan's default, kept clear of rekeying at once (life >= 2 x rekey)
    elif not _check_rand(ck, path, rand, rekey, margin, "life_time - rekey_time"):
        return None
    return Lifetime(rekey_time=rekey, life_time=life, rand_time=rand, rekey_bytes=rekey_bytes,
                    life_bytes=life_bytes, rekey_packets=rekey_packets, life_packets=life_packets)


def _ike_lifetime(ck: _Checker, tbl: dict, path: KeyPath) -> Lifetime | None:
    """The IKE SA's rekey_time, over_time (life_time = rekey_time + over_time) and rand_time (swanctl.conf)."""
    rekey, over, rand = (_amount(ck, tbl, path, key, time=True) for key in ("rekey_time", "over_time", "rand_time"))
    if None in (rekey, over, rand):
        return None
    rekey = IKE_LIFETIME.rekey_time if rekey is _UNSET else rekey
    if over is _UNSET:
        over = rekey / 10
    elif rekey and not over:
        ck.error((*path, "over_time"), f"0 leaves no time to rekey: the IKE SA would be deleted when its rekeying "
                                       f"starts; e.g. over_time = \"{format_duration(rekey / 10)}\" (10 % of "
                                       f"rekey_time, the default)")
        return None
    if rand is _UNSET:
        rand = min(over, rekey / 2)  # strongSwan's default (over_time), at most half of rekey_time
    elif not _check_rand(ck, path, rand, rekey, over, "over_time"):
        return None
    return Lifetime(rekey_time=rekey, life_time=rekey + over if rekey or over else 0.0, rand_time=rand)


def _ike_connection(ck: _Checker, name: str, tbl: dict, ctx: _IkeContext) -> Connection | None:
    path = ("connections", name)
    ck.unknown_keys(tbl, path, _IKE_CONN_KEYS)
    local = _addresses(ck, tbl, path, "local_addrs", ike=True)
    remote = _addresses(ck, tbl, path, "remote_addrs", ike=True)
    version = ck.integer(tbl, path, "version", 0, 2, 2)
    if version is not None and version != 2:
        ck.error((*path, "version"), "xdpsec speaks IKEv2 (RFC 7296) only; set version = 2")
    ike_proposals = _ike_proposals(ck, tbl, path)
    encap = ck.get(tbl, path, "encap", bool, False)
    ports = [ck.integer(tbl, path, key, 1, 65535, 500) for key in ("local_port", "remote_port")]
    timers = [_duration(ck, tbl, path, key) for key in ("dpd_delay", "dpd_timeout")]
    tries = ck.integer(tbl, path, "keyingtries", 0, 1_000_000, 1)
    retransmission = _retransmission(ck, tbl, path, ctx.retransmission)
    lifetime = _ike_lifetime(ck, tbl, path)
    fragmentation = ck.choice(tbl, path, "fragmentation", Fragmentation, Fragmentation.YES)
    fragment_size = _fragment_size(ck, tbl, path)
    children_tbl = ck.get(tbl, path, "children", dict)
    rounds = None
    if local is not None and remote is not None:
        local_round = _auth_round(ck, tbl, path, "local", local, ctx)
        remote_round = _auth_round(ck, tbl, path, "remote", remote, ctx)
        if local_round is not None and remote_round is not None:
            rounds = _with_psk(ck, path, local_round, remote_round, ctx.secrets)
    if local is None or remote is None or children_tbl is None:
        return None
    for child_name, child_tbl in children_tbl.items():
        if isinstance(child_tbl, dict) and "manual" in child_tbl:
            ck.error((*path, "children", child_name, "manual"),
                     "this connection is keyed by IKE, so its children cannot have manual keys: move this child "
                     "to a connection of its own")
    conn = Connection(name=name, local_addrs=local, remote_addrs=remote, encap=None, children=())
    children = []
    for child_name, child_tbl in children_tbl.items():
        child_path = (*path, "children", child_name)
        if _valid_name(ck, child_path, child_name) and ck.table(child_tbl, child_path) and "manual" not in child_tbl:
            child = _child(ck, conn, child_path, child_tbl, ike=True, encap=bool(encap))
            if child is not None:
                children.append(child)
    if rounds is None or None in (ike_proposals, encap, tries, lifetime, *ports, *timers, *retransmission,
                                  fragmentation, fragment_size) or version != 2:
        return None
    ike = IkeConnConfig(name=name, local_addrs=local, remote_addrs=remote, proposals=ike_proposals,
                        local=rounds[0], remote=rounds[1], children=tuple(c.ike for c in children if c.ike),
                        encap=encap, local_port=ports[0], remote_port=ports[1], dpd_delay=timers[0],
                        dpd_timeout=timers[1], retransmit_timeout=retransmission[0],
                        retransmit_tries=retransmission[1], keyingtries=tries, lifetime=lifetime,
                        fragmentation=fragmentation, fragment_size=fragment_size)
    return replace(conn, children=tuple(children), ike=ike)


#: RFC 791: every IPv4 host takes datagrams of 576 octets; a smaller fragment size would help no path.
_MIN_FRAGMENT_SIZE = 576


def _fragment_size(ck: _Checker, tbl: dict, path: KeyPath) -> int | None:
    """strongSwan's charon.fragment_size, per connection: 0 or 576..65535."""
    size = ck.integer(tbl, path, "fragment_size", 0, 65535, 0)
    if size is not None and 0 < size < _MIN_FRAGMENT_SIZE:
        ck.error((*path, "fragment_size"), f"{size} is below {_MIN_FRAGMENT_SIZE}, the datagram every IPv4 path "
                                           f"carries; use 0 for 576 (IPv4) / 1280 (IPv6)")
        return None
    return size


# --- operations: [log], [metrics], [debug], [limits] --------------------------------------------------------------

#: Upper bounds of [limits] (the lower bound is 1): beyond them a limit no longer limits anything this gateway
#: can hold (sas_per_worker: the BPF SAD's XS_MAX_SAS slots).
_LIMIT_MAX = {"half_open_ike_sas": 1_000_000, "ike_sas_per_peer": 65_536, "sas_per_worker": XS_MAX_SAS,
              "pending_acquires": 65_536, "control_clients": 1024, "ike_init_rate": 1_000_000,
              "ike_init_burst": 1_000_000, "ike_init_global_rate": 10_000_000, "ike_init_prefix4": 32,
              "ike_init_prefix6": 128}
_LISTEN_RE = re.compile(r"\[(?P<v6>[^\]]*)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]*):(?P<port>\d+)")


def parse_listen(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" with an IP address -> (host without brackets, port). Raises ValueError."""
    m = _LISTEN_RE.fullmatch(text.strip())
    hint = "write address:port, e.g. \"127.0.0.1:9469\" or \"[::1]:9469\""
    if m is None:
        raise ValueError(f"{text!r} is not host:port; {hint}")
    host, port = (m["v6"], m["port6"]) if m["port6"] else (m["host"], m["port"])
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; {hint}") from None
    if (addr.version == 6) != bool(m["port6"]):
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, an IPv4 address without; {hint}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is outside 1..65535")
    return str(addr), int(port)


def _log(ck: _Checker, tbl: dict) -> LogConfig | None:
    path = ("log",)
    ck.unknown_keys(tbl, path, _LOG_KEYS)
    problems = len(ck.problems)
    fmt = _one_of(ck, tbl, path, "format", LOG_FORMATS, LogConfig.format)
    level = _one_of(ck, tbl, path, "level", LOG_LEVELS, LogConfig.level)
    levels = ck.get(tbl, path, "levels", dict, {})
    if levels is not None:
        ck.unknown_keys(levels, (*path, "levels"), LOG_SUBSYSTEMS)
        for name in LOG_SUBSYSTEMS:
            _one_of(ck, levels, (*path, "levels"), name, LOG_LEVELS, None)
    if len(ck.problems) > problems:
        return None
    return LogConfig(format=fmt, level=level, levels=dict(levels))


def _one_of(ck: _Checker, tbl: dict, path: KeyPath, key: str, valid: tuple[str, ...],
            default: str | None) -> str | None:
    """A string from `valid`, with the closest one as the hint when it is not."""
    value = ck.get(tbl, path, key, str, default)
    if value is not None and value not in valid:
        close = difflib.get_close_matches(value, valid, n=1)
        ck.error((*path, key), f"{value!r} is not one of {' | '.join(valid)}"
                               + (f"; did you mean {close[0]!r}?" if close else ""))
        return None
    return value


def _metrics(ck: _Checker, tbl: dict) -> tuple[str, int] | None:
    path = ("metrics",)
    ck.unknown_keys(tbl, path, _METRICS_KEYS)
    text = ck.get(tbl, path, "listen", str, None)
    if text is None:
        return None
    try:
        host, port = parse_listen(text)
    except ValueError as e:
        ck.error((*path, "listen"), str(e))
        return None
    if not ipaddress.ip_address(host).is_loopback:
        ck.warn((*path, "listen"), f"serves SA names, addresses and counters to anyone who reaches {text} "
                                   f"(no authentication): prefer 127.0.0.1 or a firewall rule")
    return host, port


def _key_export(ck: _Checker, tbl: dict) -> Path | None:
    path = ("debug",)
    ck.unknown_keys(tbl, path, _DEBUG_KEYS)
    directory = ck.get(tbl, path, "key_export", str, None)
    if directory is None:
        return None
    if not directory.startswith("/"):
        ck.error((*path, "key_export"), f"{directory!r} must be an absolute path, e.g. \"/run/xdpsec/keys\"")
        return None
    ck.warn((*path, "key_export"), f"writes every ESP and IKE key to {directory}: whoever reads it decrypts the "
                                   f"traffic; for debugging only, remove it afterwards")
    return Path(directory)


def _limits(ck: _Checker, tbl: dict) -> Limits | None:
    path = ("limits",)
    ck.unknown_keys(tbl, path, _LIMITS_KEYS)
    values = {f.name: ck.integer(tbl, path, f.name, 1, _LIMIT_MAX[f.name], f.default) for f in fields(Limits)}
    return None if None in values.values() else Limits(**values)


def _operations(ck: _Checker, data: dict) -> dict[str, Any] | None:
    """The Config fields of [log], [metrics], [debug] and [limits]; None if any of them is wrong."""
    out: dict[str, Any] = {}
    problems = len(ck.problems)
    for key, parse, attr in (("log", _log, "log"), ("metrics", _metrics, "metrics_listen"),
                             ("debug", _key_export, "key_export"), ("limits", _limits, "limits")):
        if key in data and ck.table(data[key], (key,)) and (value := parse(ck, data[key])) is not None:
            out[attr] = value
    return out if len(ck.problems) == problems else None


# --- whole-file checks ------------------------------------------------------------------------------------------

def _child_path(name: str) -> KeyPath:
    conn, child = name.split("/", 1)
    return ("connections", conn, "children", child)


def _check_spis(ck: _Checker, connections: tuple[Connection, ...]) -> None:
    """An SPI identifies an SA per direction (RFC 4301 §4.1): two children sharing one cannot be told apart."""
    for key in ("in_spi", "out_spi"):
        first: dict[int, str] = {}
        for conn in connections:
            for child in conn.children:
                if child.manual is None:
                    continue
                spi, where = getattr(child.manual, key), f"{conn.name}/{child.name}"
                if spi in first:
                    ck.error((*_child_path(where), "manual", key),
                             f"SPI {spi:#x} is already the {key} of {first[spi]}")
                else:
                    first[spi] = where


def _describe(p: Policy) -> str:
    proto = f" proto {p.proto}" if p.proto else ""
    ports = "".join(f" {k} {r.lo}-{r.hi}" for k, r in (("sport", p.sports), ("dport", p.dports)) if not r.is_any)
    return f"{p.direction.name} {p.src} -> {p.dst}{proto}{ports}"


def _check_shadowing(ck: _Checker, policies: list[Policy]) -> None:
    """Warn about a policy the first covering policy before it overrides with another action or child."""
    for j, later in enumerate(policies):
        earlier = next((p for p in policies[:j] if p.direction == later.direction and covers(p, later)), None)
        if earlier is not None and (earlier.action, earlier.child) != (later.action, later.child):
            ck.warn(_child_path(later.name), f"policy {_describe(later)} never matches: {earlier.name} "
                                             f"({earlier.action.name}) covers it and comes first")


def _syntax_problem(file: str, err: tomllib.TOMLDecodeError) -> Problem:
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)", str(err))
    if m is None:
        return Problem(file, 1, "syntax", str(err))
    return Problem(file, int(m.group(1)), "syntax", f"{str(err)[:m.start()]} (column {m.group(2)})")


def _build(ck: _Checker, data: dict, path: Path) -> Config | None:
    ck.unknown_keys(data, (), _TOP_KEYS)
    instance = ck.get(data, (), "instance", str, "default")
    if instance is not None and not _NAME_RE.fullmatch(instance):
        ck.error(("instance",), f"{instance!r}: use 1..64 letters, digits, '_', '.' or '-' (it names a socket)")
    gateway_tbl = ck.get(data, (), "gateway", dict)
    gateway = _gateway(ck, gateway_tbl) if gateway_tbl is not None else None
    retransmission = (gateway.retransmit_timeout, gateway.retransmit_tries) if gateway else _RETRANSMIT_DEFAULTS
    ctx = _IkeContext(base=path.parent, secrets=_secrets(ck, data, path), retransmission=retransmission)
    conns_tbl = ck.get(data, (), "connections", dict, {})
    connections = []
    for name, tbl in (conns_tbl or {}).items():
        conn_path = ("connections", name)
        if _valid_name(ck, conn_path, name) and ck.table(tbl, conn_path):
            conn = _connection(ck, name, tbl, gateway.encap_port if gateway else 4500, ctx)
            if conn is not None:
                connections.append(conn)
    _check_spis(ck, tuple(connections))
    operations = _operations(ck, data)
    if gateway is None or instance is None or operations is None:
        return None
    config = Config(path=path, instance=instance, gateway=gateway, connections=tuple(connections), **operations)
    _check_shadowing(ck, config.policies())
    return config


def load(path: str | Path) -> Config:
    """Read and validate a configuration; raises ConfigError listing every problem found."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(file, 1, "file", f"cannot read: {e}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_problem(file, e)]) from None
    ck = _Checker(file, _Locator(text))
    config = _build(ck, data, path)
    warnings = sorted(ck.warnings, key=lambda p: p.line)
    if ck.problems or config is None:
        raise ConfigError(sorted(ck.problems, key=lambda p: p.line), warnings)
    return replace(config, warnings=tuple(warnings))


# --- xdpsec check -----------------------------------------------------------------------------------------------

def _summary(config: Config) -> dict[str, int]:
    return {"connections": len(config.connections),
            "children": sum(len(c.children) for c in config.connections),
            "policies": len(config.policies())}


def check_main(argv: list[str] | None = None) -> int:
    """`xdpsec check -c FILE [--json]`: 0 if the file is valid, 2 (with every problem listed) if not."""
    parser = argparse.ArgumentParser(prog="xdpsec check", description="validate a configuration file")
    parser.add_argument("-c", "--config", required=True, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as e:
        problems, warnings, summary = e.problems, e.warnings, None
    else:
        problems, warnings, summary = [], list(config.warnings), _summary(config)
    if args.json:
        print(json.dumps({"file": args.config, "ok": not problems, **(summary or {}),
                          "problems": [asdict(p) for p in problems],
                          "warnings": [asdict(p) for p in warnings]}))
    else:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for p in problems:
            print(p, file=sys.stderr)
        if summary is not None:
            print(f"{args.config}: ok ({summary['connections']} connections, {summary['children']} children, "
                  f"{summary['policies']} policies)")
    return 2 if problems else 0
