"""Dead peer detection against strongSwan 5.9: xdpsec on gwA notices a SIGKILLed charon on gwB in time.

xdpsec runs with dpd_delay = 2 s, retransmit_timeout = 1 s and retransmit_tries = 3. After 2 s without an IKE
message it sends an empty INFORMATIONAL (RFC 7296 §2.4); a dead peer never answers, the request is resent
after 1, 1.8 and 3.24 s, and 5.832 s after the last resend the peer is declared dead (strongSwan's schedule:
timeout x 1.8^n for n = 0..tries, docs.strongswan.org/docs/latest/config/retransmission.html). From the kill,
that is at least the schedule, 11.872 s (a check was just sent when charon died), and at most dpd_delay more,
13.872 s (charon had just answered). The bounds are computed from the loaded configuration, so the keys are
tested on their way in too.

A killed charon sends no Delete and its kernel-libipsec TUN device vanishes with it, so gwB forwards
hostA <-> hostB in clear from then on (xdpsec/labswan.py): a ping with the plaintext marker that reached hostB,
or the marker in a capture on the wire, would prove that gwA sent it unprotected after the SA was cleared.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from xdpsec.config import load
from xdpsec.labconf import MARKER, Gateways, PairSpec, lab_psk, render_ike, site_sides, wire_report
from xdpsec.labswan import start_charon, swanctl_conn

pytestmark = pytest.mark.interop

DPD_KEYS = {"gateway_keys": 'retransmit_timeout = "1s"\nretransmit_tries = 3', "conn_keys": 'dpd_delay = "2s"'}
#: Slack on top of the protocol's bounds: polling the control socket (0.1 s), the IKE thread's wake-up, the
#: data path removing the SAs, a loaded 2-vCPU VM.
MARGIN = 3.0
POLL = 0.1


def wait(pred, timeout: float, step: float = POLL):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def schedule(conn) -> float:
    """Seconds from the first liveness request to giving up (module docstring of xdpsec/config.py)."""
    return sum(conn.retransmit_timeout * 1.8 ** n for n in range(conn.retransmit_tries + 1))


class DpdLab:
    """xdpsec (initiator, DPD on) on gwA, charon (DPD off: it only answers) on gwB."""

    def __init__(self, lab, tmp_path: Path, dpd_action: str):
        self.lab, self.tmp = lab, tmp_path
        a, b = site_sides(lab, workers=1)
        spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1)
        psk = lab_psk()
        text = render_ike(a, spec, psk=psk, initiator=True, state_dir=str(tmp_path / "state"), **DPD_KEYS,
                          child_keys=f'dpd_action = "{dpd_action}"')
        path = tmp_path / f"{a.instance}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        [self.conn] = load(path).ike_connections()
        assert self.conn.children[0].dpd_action.value == dpd_action
        self.swanctl = swanctl_conn("lab", local_addrs=[b.local_addr], remote_addrs=[b.remote_addr],
                                    local_id=b.local_addr, remote_id=b.remote_addr, local_ts=b.local_ts,
                                    remote_ts=b.remote_ts, auth="psk", psk=psk.encode(),
                                    proposals=spec.ike_proposal, esp_proposals=spec.proposal, mode="tunnel")
        self.charon = start_charon(lab, "gwB", self.swanctl)
        self.gws = Gateways(lab)
        self.gws.start("gwA", path, a.instance)
        self.gws.wait_ready()

    def sas(self) -> list[dict]:
        return self.gws.query("gwA", "sas")

    def no_sa_drops(self) -> int:
        stats = self.gws.query("gwA", "stats")
        workers = sum(w["drops"].get("no_sa", 0) for w in stats["workers"])
        return workers + stats["xdp"]["drops"].get("no_sa", 0)

    def debug(self) -> str:
        return f"--- xdpsec gwA:\n{self.gws.log('gwA')}\n--- charon gwB:\n{self.charon.log()[-3000:]}"

    def wait_up(self, timeout: float = 20.0) -> list[dict]:
        rows = wait(lambda: len(self.sas()) == 2 and self.sas(), timeout)
        assert rows, self.debug()
        return rows

    def ping_marker(self, count: int) -> int:
        """Pings with the plaintext marker from hostA to hostB; how many came back."""
        dst = self.lab.addr["hostB"]["v4"]
        out = self.lab.run("hostA", "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", "-p", MARKER.hex(),
                           dst, check=False, timeout=count + 10)
        return sum("bytes from" in line for line in out.stdout.splitlines())

    def kill_charon(self) -> float:
        """SIGKILL charon (no Delete, nothing answers any more); the monotonic time of the kill."""
        proc = self.charon.proc
        # lab.popen -> nsenter -> unshare -> sh -c '... && exec charon': the Popen's pid is charon itself.
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "charon"
        killed = time.monotonic()
        proc.kill()
        proc.wait(5)  # reaped: the next charon's pid file check must not find a zombie
        (self.tmp / "charon-killed.log").write_text(self.charon.log())
        return killed

    def wait_gone(self, killed: float) -> float:
        """Seconds from the kill until xdpsec lists no SA (fails after the upper bound plus MARGIN)."""
        bound = self.conn.dpd_delay + schedule(self.conn)
        gone = wait(lambda: not self.sas(), bound + MARGIN)
        elapsed = time.monotonic() - killed
        assert gone, (f"SAs still installed {elapsed:.1f}s after the kill (bound {bound:.3f}s)", self.debug())
        return elapsed

    def close(self) -> None:
        self.charon.stop()
        codes = self.gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, self.gws.log("gwA"))


@pytest.fixture
def dpd_lab(swan_lab, tmp_path):
    labs: list[DpdLab] = []

    def up(dpd_action: str) -> DpdLab:
        labs.append(DpdLab(swan_lab, tmp_path, dpd_action))
        return labs[-1]

    yield up
    for lab in labs:
        lab.close()


def test_killed_charon_is_noticed_in_time_and_traffic_is_dropped(dpd_lab):
    t = dpd_lab("clear")
    t.wait_up()
    assert t.ping_marker(4) >= 3, t.debug()
    cap = t.lab.capture("wire", "br0")
    # No false positive: over three liveness periods charon answers every check and the SAs stay.
    checks_before = t.charon.log().count("parsed INFORMATIONAL request")
    time.sleep(3 * t.conn.dpd_delay)
    assert len(t.sas()) == 2, t.debug()
    assert t.charon.log().count("parsed INFORMATIONAL request") - checks_before >= 2, t.debug()

    killed = t.kill_charon()
    elapsed = t.wait_gone(killed)
    lower, upper = schedule(t.conn), t.conn.dpd_delay + schedule(t.conn)
    assert lower - 0.5 <= elapsed <= upper + MARGIN, (elapsed, lower, upper, t.debug())
    print(f"dead peer noticed {elapsed:.2f}s after the kill (protocol bounds {lower:.3f}..{upper:.3f}s)")
    log = t.gws.log("gwA")
    assert "no response to INFORMATIONAL after 3 retransmissions" in log, log
    assert "IKE SA down: peer not responding" in log, log

    # dpd_action = clear: the PROTECT policy stays, without an SA: nothing reaches hostB, nothing in clear.
    drops = t.no_sa_drops()
    assert t.ping_marker(5) == 0, t.debug()
    assert t.no_sa_drops() >= drops + 5, (drops, t.gws.query("gwA", "stats"))
    assert t.sas() == [] and t.gws.query("gwA", "ike-sas") == [], t.debug()
    seen = wire_report(cap.stop(), t.lab.addr["gwA"]["wan_v4"], t.lab.addr["gwB"]["wan_v4"])
    assert seen["marker"] == 0 and seen["esp"] > 0, seen


def test_restart_action_reestablishes_with_a_new_charon(dpd_lab):
    """dpd_action = restart: xdpsec initiates again the moment it declares the peer dead. Its IKE_SA_INIT is
    resent 1, 2.8 and 6.04 s later (timeout x 1.8^n, n < tries), so a charon answering within 6.04 s of the
    death is reached by one of them: the tunnel is back at most 6.04 s (plus MARGIN) after the death."""
    t = dpd_lab("restart")
    old = {r["spi"] for r in t.wait_up()}
    assert t.ping_marker(3) >= 2, t.debug()

    killed = t.kill_charon()
    t.wait_gone(killed)
    gone = time.monotonic()
    t.charon = start_charon(t.lab, "gwB", t.swanctl)
    ready = time.monotonic() - gone
    resends = sum(t.conn.retransmit_timeout * 1.8 ** n for n in range(t.conn.retransmit_tries))
    assert ready < resends, f"the new charon took {ready:.1f}s: the test cannot tell what it wants to"

    cap = t.lab.capture("wire", "br0")
    rows = t.wait_up(timeout=resends + MARGIN)
    back = time.monotonic() - gone
    assert back <= resends + MARGIN, (back, t.debug())
    print(f"new charon ready {ready:.2f}s, tunnel back {back:.2f}s after the death (bound {resends:.2f}s)")
    # charon has no start_action and no DPD: the new IKE SA can only be xdpsec's doing.
    assert f"{t.lab.addr['gwA']['wan_v4']} is initiating an IKE_SA" in t.charon.log(), t.debug()
    assert not old & {r["spi"] for r in rows}, (old, rows)  # new SAs, negotiated with the new charon
    assert t.ping_marker(4) >= 3, t.debug()
    ike = t.charon.list_sas()
    assert ike.get("lab", {}).get("state") == "ESTABLISHED", ike
    seen = wire_report(cap.stop(), t.lab.addr["gwA"]["wan_v4"], t.lab.addr["gwB"]["wan_v4"])
    assert seen["marker"] == 0 and seen["esp"] > 0, seen
