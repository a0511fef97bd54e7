"""Gateway configurations for the namespace lab (xdpsec/lab.py), used by the quick start, the tests and the
benchmarks.

Manually keyed SAs (RFC 4301 §4.5) with fresh random keys per call: the two gateways of a pair get mirror-image
configurations (gwA's outbound SPI and key are gwB's inbound ones). Files are written 0600: they hold keys.
IKEv2-keyed configurations authenticate with a PSK or, given `PubkeyFiles` (`write_pubkey_files` puts the PEM
files next to the configuration, the private key 0600 as config.py demands), with certificates (RFC 7296 §2.15).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from xdpsec.proposals import parse_ah, parse_esp
from xdpsec.sa import Protocol


@dataclass
class Side:
    instance: str
    interfaces: list[str]
    local_addr: str
    remote_addr: str
    local_ts: list[str]
    remote_ts: list[str]
    extra: str = ""  # raw TOML appended to this side's file (more children, pass/drop shunts)
    cpus: list[int] | None = None  # [gateway] cpus; None: the gateway's default


@dataclass
class PairSpec:
    mode: str = "tunnel"  # tunnel | transport
    proposal: str = "aes128gcm16"
    protocol: Protocol = Protocol.ESP
    encap: bool = False
    workers: int = 2
    replay_window: int = 1024
    keying: str = "manual"  # manual (RFC 4301 §4.5 SPIs and keys in the file) | ike (IKEv2, PSK)
    ike_proposal: str = "aes128gcm16-prfsha256-x25519"
    initiator_action: str = "start"  # start_action of the first side of an IKE pair: start | trap | none


def lab_psk() -> str:
    """A fresh random PSK as text. The prefix keeps it from starting with "0x" or "0s", which xdpsec and
    swanctl read as hex or base64 (one random token in 4096 did, and failed to load)."""
    return "lab-" + secrets.token_urlsafe(24)


def _keys(proposal: str, protocol: Protocol) -> tuple[str, str]:
    t = parse_ah(proposal) if protocol == Protocol.AH else parse_esp(proposal)
    return secrets.token_hex(t.enc_key_len), secrets.token_hex(t.integ_key_len)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _proposals_key(spec: PairSpec) -> str:
    return "ah_proposals" if spec.protocol == Protocol.AH else "esp_proposals"


def _child(side: Side, spec: PairSpec) -> list[str]:
    """The child table's opening lines, the same for manual and IKE keying."""
    return [
        "",
        "[connections.lab.children.net]",
        f"local_ts = {_toml_list(side.local_ts)}",
        f"remote_ts = {_toml_list(side.remote_ts)}",
        f'mode = "{spec.mode}"',
        f'{_proposals_key(spec)} = ["{spec.proposal}"]',
        f"replay_window = {spec.replay_window}",
    ]


def _header(side: Side, spec: PairSpec, state_dir: str, *, gateway_keys: str = "",
            ike_proposal: str | None = None) -> list[str]:
    """The instance, [gateway] and connection lines both kinds of configuration start with."""
    lines = [
        f'instance = "{side.instance}"',
        "",
        "[gateway]",
        f"interfaces = {_toml_list(side.interfaces)}",
        f"workers = {spec.workers}",
        *([f"cpus = [{', '.join(map(str, side.cpus))}]"] if side.cpus is not None else []),
        f'state_dir = "{state_dir}"',
        *([gateway_keys] if gateway_keys else []),
        "",
        "[connections.lab]",
        f'local_addrs = ["{side.local_addr}"]',
        f'remote_addrs = ["{side.remote_addr}"]',
    ]
    if ike_proposal:
        lines.append(f'proposals = ["{ike_proposal}"]')
    if spec.encap:
        lines.append("encap = true")
    return lines


def render(side: Side, spec: PairSpec, *, out_spi: int, in_spi: int, out_keys: tuple[str, str],
           in_keys: tuple[str, str], state_dir: str) -> str:
    lines = _header(side, spec, state_dir)
    lines += [
        *_child(side, spec),
        "",
        "[connections.lab.children.net.manual]",
        f"in_spi = {in_spi:#x}",
        f"out_spi = {out_spi:#x}",
    ]
    if in_keys[0]:
        lines += [f'in_enc_key = "{in_keys[0]}"', f'out_enc_key = "{out_keys[0]}"']
    if in_keys[1]:
        lines += [f'in_integ_key = "{in_keys[1]}"', f'out_integ_key = "{out_keys[1]}"']
    if side.extra:
        lines += ["", side.extra]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PubkeyFiles:
    """One gateway's certificate credentials on disk and the identities they stand for (auth = "pubkey")."""

    cert: Path  # our end-entity certificate, PEM
    private_key: Path  # its key, PEM, mode 0600
    cacert: Path  # the trust anchor the peer's certificate must chain to
    local_id: str  # our certificate's subject, e.g. "CN=gwA"
    remote_id: str  # the subject the peer's certificate must carry, e.g. "CN=gwB"


def write_pubkey_files(directory: Path, name: str, *, cert_pem: bytes, key_pem: bytes, ca_pem: bytes,
                       local_id: str, remote_id: str) -> PubkeyFiles:
    """Write ``NAME.pem``, ``NAME.key`` (0600) and ``NAME-ca.pem`` into ``directory``; returns where they are."""
    directory.mkdir(parents=True, exist_ok=True)
    files = PubkeyFiles(directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}-ca.pem",
                        local_id, remote_id)
    for path, data, mode in ((files.cert, cert_pem, 0o644), (files.private_key, key_pem, 0o600),
                             (files.cacert, ca_pem, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return files


def _auth_tables(side: Side, psk: str | None, pubkey: PubkeyFiles | None) -> tuple[list[str], list[str]]:
    """Connection "lab"'s [local] and [remote] tables, and the [secrets] table (PSK only)."""
    if (psk is None) == (pubkey is None):
        raise ValueError("render_ike needs exactly one of psk and pubkey")
    if pubkey is None:
        local = ['auth = "psk"', f'id = "{side.local_addr}"']
        remote = ['auth = "psk"', f'id = "{side.remote_addr}"']
        secrets_table = ["", "[secrets]",
                         f'ike = [{{ id = ["{side.local_addr}", "{side.remote_addr}"], secret = "{psk}" }}]']
    else:
        local = ['auth = "pubkey"', f'id = "{pubkey.local_id}"', f'certs = ["{pubkey.cert}"]',
                 f'private_key = "{pubkey.private_key}"']
        remote = ['auth = "pubkey"', f'id = "{pubkey.remote_id}"', f'cacerts = ["{pubkey.cacert}"]']
        secrets_table = []
    return ["", "[connections.lab.local]", *local, "", "[connections.lab.remote]", *remote], secrets_table


def render_ike(side: Side, spec: PairSpec, *, psk: str | None = None, initiator: bool, state_dir: str,
               gateway_keys: str = "", conn_keys: str = "", child_keys: str = "",
               pubkey: PubkeyFiles | None = None) -> str:
    """An IKEv2-keyed configuration, authenticated either with ``psk`` (the outer addresses as identities) or
    with the certificates in ``pubkey`` (their subjects as identities).

    `gateway_keys`, `conn_keys` and `child_keys` are raw TOML lines added to [gateway], the connection and its
    child (e.g. dpd_delay, retransmit_timeout, dpd_action): tables that `Side.extra` cannot reach."""
    auth_tables, secrets_table = _auth_tables(side, psk, pubkey)
    lines = _header(side, spec, state_dir, gateway_keys=gateway_keys, ike_proposal=spec.ike_proposal)
    if conn_keys:
        lines.append(conn_keys)
    lines += [
        *auth_tables,
        *_child(side, spec),
        f'start_action = "{spec.initiator_action if initiator else "none"}"',
        *([child_keys] if child_keys else []),
        *secrets_table,
    ]
    if side.extra:
        lines += ["", side.extra]
    return "\n".join(lines) + "\n"


def write_pair(directory: Path, a: Side, b: Side, spec: PairSpec) -> tuple[Path, Path]:
    """Write matching configurations for gateways `a` and `b`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    spi_ab, spi_ba = 0x1000 + secrets.randbelow(0xFFFF), 0x20000 + secrets.randbelow(0xFFFF)
    manual = spec.keying != "ike"  # IKE negotiates keys (and the proposal may ask for PFS, which manual cannot)
    keys_ab = _keys(spec.proposal, spec.protocol) if manual else ("", "")
    keys_ba = _keys(spec.proposal, spec.protocol) if manual else ("", "")
    paths = []
    psk = lab_psk()
    for side, out_spi, in_spi, out_k, in_k in ((a, spi_ab, spi_ba, keys_ab, keys_ba),
                                                 (b, spi_ba, spi_ab, keys_ba, keys_ab)):
        path = directory / f"{side.instance}.toml"
        if spec.keying == "ike":
            text = render_ike(side, spec, psk=psk, initiator=side is a, state_dir=str(directory / "state"))
        else:
            text = render(side, spec, out_spi=out_spi, in_spi=in_spi, out_keys=out_k, in_keys=in_k,
                          state_dir=str(directory / "state"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        paths.append(path)
    return paths[0], paths[1]


# --- running gateways in the lab ----------------------------------------------------------------------------

def site_sides(lab, *, inner: tuple[str, ...] = ("v4", "v6"), workers: int = 2) -> tuple[Side, Side]:
    """gwA and gwB of the site-to-site lab protecting hostA's and hostB's networks, tunnel mode."""
    a, b = lab.addr["gwA"], lab.addr["gwB"]
    tag = lab.run_name
    side_a = Side(f"{tag}-gwA", ["lan0", "wan0"], a["wan_v4"], b["wan_v4"],
                  [a[f"lan_net_{f}"] for f in inner], [b[f"lan_net_{f}"] for f in inner])
    side_b = Side(f"{tag}-gwB", ["lan0", "wan0"], b["wan_v4"], a["wan_v4"],
                  [b[f"lan_net_{f}"] for f in inner], [a[f"lan_net_{f}"] for f in inner])
    # Two gateways share this host: each one's worker 0 on a different CPU (gwA from the first, gwB from the
    # second), so that with one worker each they do not take turns on one core while another idles.
    cpus = sorted(os.sched_getaffinity(0))
    side_a.cpus, side_b.cpus = cpus, cpus[1:] + cpus[:1]
    return side_a, side_b


def host_sides(lab, *, family: str = "v4") -> tuple[Side, Side]:
    """hostC and hostD of the host-to-host lab protecting their own traffic, transport mode."""
    c, d = lab.addr["hostC"], lab.addr["hostD"]
    tag = lab.run_name
    return (Side(f"{tag}-hostC", [c["if"]], c[family], d[family], [c[family]], [d[family]]),
            Side(f"{tag}-hostD", [d["if"]], d[family], c[family], [d[family]], [c[family]]))


class Gateways:
    """xdpsec gateways running in lab namespaces: started, waited for, queried and stopped together."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.procs: dict[str, object] = {}
        self.instances: dict[str, str] = {}
        self.logs: dict[str, Path] = {}

    def start(self, node: str, config: Path, instance: str, *, log_level: str = "info") -> None:
        import subprocess
        import sys
        log = config.with_suffix(".log")
        fh = open(log, "w")  # noqa: SIM115 - owned by the process for its lifetime
        self.procs[node] = self.lab.popen(node, sys.executable, "-m", "xdpsec", "run", "-c", str(config),
                                          "--log-level", log_level, stdout=fh, stderr=subprocess.STDOUT)
        self.instances[node] = instance
        self.logs[node] = log

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        from xdpsec.control import ControlError, request, socket_path
        deadline = time.monotonic() + timeout
        for node, instance in self.instances.items():
            while True:
                proc = self.procs[node]
                if proc.poll() is not None:
                    raise RuntimeError(f"{node}: xdpsec exited with {proc.returncode}:\n{self.log(node)}")
                try:
                    request(socket_path(instance), "status", timeout=2.0)
                    break
                except ControlError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{node}: xdpsec not ready after {timeout}s:\n{self.log(node)}") from None
                    time.sleep(0.2)

    def query(self, node: str, cmd: str):
        from xdpsec.control import request, socket_path
        return request(socket_path(self.instances[node]), cmd, timeout=10.0)

    def sa(self, node: str, direction: str) -> dict:
        """The one child SA of `direction` ("in"/"out") on a node, as `xdpsec sas --json` shows it."""
        rows = [r for r in self.query(node, "sas") if r["direction"] == direction]
        if len(rows) != 1:
            raise AssertionError(f"{node}: expected one {direction} SA, got {rows}")
        return rows[0]

    def log(self, node: str) -> str:
        try:
            return self.logs[node].read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, node: str | None = None, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM the gateways (all, or one) and wait: returns their exit codes."""
        import signal
        codes = {}
        for n in [node] if node else list(self.procs):
            proc = self.procs.pop(n)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except Exception:
                    proc.kill()
                    proc.wait(5)
            codes[n] = proc.returncode
        return codes


# --- what crossed the wire ------------------------------------------------------------------------------------

#: Sent in clear by the demo and the tests; finding it on the wire between protecting nodes is a leak. Exactly
#: 16 bytes, the longest pattern `ping -p` repeats, so a leaked ping contains it whole.
MARKER = b"xdpsec-plaintext"
assert len(MARKER) == 16


def wire_report(pcap, a: str, b: str) -> dict[str, int]:
    """Classify a capture between outer addresses a and b: ESP (plain or in UDP 4500), AH, any other IP
    packet between them, and packets anywhere in the capture that contain the plaintext MARKER."""
    from scapy.all import AH, ESP, IP, UDP, IPv6, rdpcap  # scapy only where a capture is read

    seen = {"esp": 0, "ah": 0, "other": 0, "marker": 0}
    for pkt in rdpcap(str(pcap)):
        if MARKER in bytes(pkt):
            seen["marker"] += 1
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None or {ip.src, ip.dst} != {a, b}:
            continue
        if pkt.haslayer(ESP) or (pkt.haslayer(UDP) and 4500 in (pkt[UDP].sport, pkt[UDP].dport)):
            seen["esp"] += 1
        elif pkt.haslayer(AH):
            seen["ah"] += 1
        else:
            seen["other"] += 1
    return seen
