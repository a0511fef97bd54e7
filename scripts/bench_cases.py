"""The benchmark's cases: what runs on gwA and gwB of the site-to-site lab, and how it is brought up.

Every case leaves hostA - gwA = wire = gwB - hostB (xdpsec/lab.py) carrying hostA -> hostB traffic:

* ``plain``: the gateways are kernel routers, no IPsec: the baseline every tunnel is compared with;
* ``xdpsec-<N>w-<S>sa``: xdpsec on both gateways, ESP tunnel mode, AES-GCM-128 with a 16-byte ICV (RFC 4106),
  manually keyed SAs (RFC 4301 §4.5), N workers and N queues per veth, S children. With 100 children, 99 of
  them are narrowed to one hostA UDP source port each (``[udp/P]``, P = MANY_SA_BASE_PORT + i) and the child
  ``net`` takes everything else, so a UDP load sent from the 100 source ports MANY_SA_BASE_PORT .. +99
  (iperf3 ``-P 100 --cport``) spreads evenly over all 100 SAs, while ping, TCP and iperf3's control
  connection use ``net``. (UDP only: a child with a UDP and a TCP selector makes 4 policies, and the data
  path held at most 256 when these cases were written.);
* ``strongswan``: charon on both gateways (xdpsec/labswan.py), userspace ESP (kernel-libipsec), IKEv2 with
  aes128gcm16-prfsha256-x25519 and ESP aes128gcm16; libipsec always carries ESP in UDP 4500 (RFC 3948).

`bring_up` starts a case's gateways and proves the tunnel carries traffic before anything is measured: a case
whose traffic bypassed the gateways would measure plain forwarding under another name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from xdpsec.lab import Lab, LabError
from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair
from xdpsec.labswan import SwanError, SwanPeer, start_charon, swanctl_conn

PROPOSAL = "aes128gcm16"
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
#: hostA source ports of the per-port children (and of iperf3 --cport in the many-SA loads).
MANY_SA_BASE_PORT = 40000
ALL_WORKERS = os.cpu_count() or 1


class CaseFailed(RuntimeError):
    """The case cannot be measured (gateways down, no traffic through the tunnel); the message says why."""


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    kind: str  # plain | xdpsec | strongswan
    workers: int = 0
    sas: int = 1
    queues: int = 2

    @property
    def flows(self) -> int:
        """How many source ports a load should use to reach every SA of the case."""
        return self.sas if self.sas > 1 else 1


def make_cases() -> tuple[Case, ...]:
    n = ALL_WORKERS
    return (
        Case("plain", "plain forwarding", "plain", queues=n),
        Case("xdpsec-1w-1sa", "xdpsec, 1 worker, 1 SA", "xdpsec", workers=1, sas=1, queues=1),
        Case(f"xdpsec-{n}w-1sa", f"xdpsec, {n} workers, 1 SA", "xdpsec", workers=n, sas=1, queues=n),
        Case("xdpsec-1w-100sa", "xdpsec, 1 worker, 100 SAs", "xdpsec", workers=1, sas=100, queues=1),
        Case(f"xdpsec-{n}w-100sa", f"xdpsec, {n} workers, 100 SAs", "xdpsec", workers=n, sas=100, queues=n),
        Case("strongswan", "strongSwan (libipsec)", "strongswan", queues=n),
    )


@dataclass
class Running:
    """A case brought up: the pids whose CPU time counts as the gateways' (their sessions), and how to stop."""

    gateways: dict[str, int]
    xdpsec: Gateways | None = None
    swan: dict[str, SwanPeer] | None = None

    def stop(self) -> dict[str, int | None]:
        """Stop the gateways gracefully (xdpsec detaches XDP, charon deletes its SAs); returns exit codes."""
        codes: dict[str, int | None] = {}
        if self.xdpsec is not None and self.xdpsec.procs:
            codes.update(self.xdpsec.stop(timeout=10))
        for node, peer in (self.swan or {}).items():
            codes[node] = peer.stop()
        return codes


# --- xdpsec ---------------------------------------------------------------------------------------------------


def _port_children(lab: Lab, count: int) -> tuple[str, str]:
    """TOML for ``count`` extra children on gwA and the mirror image on gwB, fresh SPIs and keys each.

    Child i protects hostA's UDP traffic from (and to) port MANY_SA_BASE_PORT + i.
    """
    net_a, net_b = lab.addr["gwA"]["lan_net_v4"], lab.addr["gwB"]["lan_net_v4"]
    a_lines: list[str] = []
    b_lines: list[str] = []
    for i in range(count):
        port = MANY_SA_BASE_PORT + i
        ported_a = f'["{net_a}[udp/{port}]"]'
        spi_ab, spi_ba = 0x100000 + 2 * i, 0x100001 + 2 * i
        key_ab, key_ba = secrets.token_hex(20), secrets.token_hex(20)  # AES-128 key and 4-byte salt
        for lines, local_ts, remote_ts, out_spi, in_spi, out_key, in_key in (
                (a_lines, ported_a, f'["{net_b}"]', spi_ab, spi_ba, key_ab, key_ba),
                (b_lines, f'["{net_b}"]', ported_a, spi_ba, spi_ab, key_ba, key_ab)):
            lines += [
                f"[connections.lab.children.p{i}]",
                f"local_ts = {local_ts}",
                f"remote_ts = {remote_ts}",
                'mode = "tunnel"',
                f'esp_proposals = ["{PROPOSAL}"]',
                f"[connections.lab.children.p{i}.manual]",
                f"in_spi = {in_spi:#x}",
                f"out_spi = {out_spi:#x}",
                f'in_enc_key = "{in_key}"',
                f'out_enc_key = "{out_key}"',
                "",
            ]
    return "\n".join(a_lines), "\n".join(b_lines)


def _out_packets(gws: Gateways, node: str) -> int:
    return sum(sa["packets"] for sa in gws.query(node, "sas") if sa["direction"] == "out")


def _warm_ping(lab: Lab) -> None:
    """The first packets may wait for neighbour and route resolution: a few tries before calling it broken."""
    for _ in range(5):
        warm = lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=3)
        if warm.received:
            return
    raise CaseFailed(f"no traffic hostA -> hostB: ping: 0/{warm.sent} replies")


def _start_xdpsec(lab: Lab, case: Case, work: Path, ready_timeout: float) -> Running:
    side_a, side_b = site_sides(lab, inner=("v4",), workers=case.workers)
    if case.sas > 1:
        side_a.extra, side_b.extra = _port_children(lab, case.sas - 1)
    pa, pb = write_pair(work / case.name, side_a, side_b,
                        PairSpec(mode="tunnel", proposal=PROPOSAL, workers=case.workers))
    gws = Gateways(lab)
    running = Running({}, xdpsec=gws)
    with _stopped_on_failure(running):
        gws.start("gwA", pa, side_a.instance)
        gws.start("gwB", pb, side_b.instance)
        try:
            gws.wait_ready(ready_timeout)
        except RuntimeError as exc:
            raise CaseFailed(_log_tail(str(exc))) from None
        running.gateways = {node: proc.pid for node, proc in gws.procs.items()}
        _check_xdpsec(lab, gws)
    return running


def _check_xdpsec(lab: Lab, gws: Gateways) -> None:
    _warm_ping(lab)
    try:
        protected = _out_packets(gws, "gwA")
    except Exception as exc:  # noqa: BLE001 - any control failure means the tunnel cannot be verified
        raise CaseFailed(f"gwA control socket: {type(exc).__name__}: {exc}") from None
    if not protected:
        raise CaseFailed("pings pass but gwA's outbound SAs counted 0 packets: traffic bypassed xdpsec")


@contextlib.contextmanager
def _stopped_on_failure(running: Running):
    """Stop what was started if bring-up fails half way (the lab's teardown would only kill it)."""
    try:
        yield
    except BaseException:
        running.stop()
        raise


def _log_tail(text: str) -> str:
    """"gwA: xdpsec exited with 1:\n<log>" -> its first line and the log's last line (the exception)."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(kept[:1] + kept[1:][-1:])


# --- strongSwan -----------------------------------------------------------------------------------------------

#: charon logs only errors: its per-packet paths log at levels above 1, and a log write per packet would be
#: measured as strongSwan's cost.
SWAN_LOG_LEVELS = {"default": 0}


def _start_strongswan(lab: Lab, ready_timeout: float) -> Running:
    psk = secrets.token_bytes(32)
    peers: dict[str, SwanPeer] = {}
    running = Running({}, swan=peers)
    with _stopped_on_failure(running):
        _start_charons(lab, peers, psk, ready_timeout)
        running.gateways = {node: peer.proc.pid for node, peer in peers.items()}
        _warm_ping(lab)
        # libipsec installs no drop policy: only the ESP counters prove the pings went through the tunnel.
        child = next(iter(peers["gwA"].list_sas()["bench"]["child-sas"].values()))
        if not int(child.get("packets-out", "0")):
            raise CaseFailed("pings pass but charon's CHILD_SA counted 0 packets: traffic bypassed strongSwan")
    return running


def _start_charons(lab: Lab, peers: dict[str, SwanPeer], psk: bytes, ready_timeout: float) -> None:
    try:
        for node, other in (("gwA", "gwB"), ("gwB", "gwA")):
            me, peer = lab.addr[node], lab.addr[other]
            conf = swanctl_conn("bench", local_addrs=me["wan_v4"], remote_addrs=peer["wan_v4"],
                                local_id=me["wan_v4"], remote_id=peer["wan_v4"], psk=psk,
                                proposals=IKE_PROPOSAL, esp_proposals=PROPOSAL, child="net",
                                local_ts=me["lan_net_v4"], remote_ts=peer["lan_net_v4"])
            peers[node] = start_charon(lab, node, conf, log_level=SWAN_LOG_LEVELS, timeout=ready_timeout)
        peers["gwA"].initiate("net", timeout=ready_timeout)
    except SwanError as exc:
        raise CaseFailed(str(exc).splitlines()[0]) from None


# --- any case -------------------------------------------------------------------------------------------------


def bring_up(lab: Lab, case: Case, work: Path, ready_timeout: float) -> Running:
    """Start the case's gateways in ``lab`` (built with ``case.queues``) and check that traffic crosses them."""
    started = time.monotonic()
    if case.kind == "xdpsec":
        running = _start_xdpsec(lab, case, work, ready_timeout)
    elif case.kind == "strongswan":
        running = _start_strongswan(lab, ready_timeout)
    else:
        try:
            _warm_ping(lab)
        except LabError as exc:
            raise CaseFailed(str(exc)) from None
        running = Running({})
    print(f"    up in {time.monotonic() - started:.1f} s", flush=True)
    return running
