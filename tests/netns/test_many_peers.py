"""One `%any` responder, three peers at once (a road-warrior hub), xdpsec on every gateway, IKEv2 with
certificates (one identity per peer, one CA):

       hostH ─── gwH ═══ hubwire ═══ gwS1 ─── hostS1   198.51.100.128/27
                 192.0.2.1       ╠══ gwS2 ─── hostS2   198.51.100.160/27
                                 ╚══ gwS3 ─── hostS3   198.51.100.192/27

gwH's one connection accepts any peer for 198.51.100.128/25; each spoke proposes its own /27 and gwH narrows to
it (RFC 7296 §2.9). Each peer must get its own child instance (`lan[192.0.2.1N]`) with its own SA pair and
its own policies from the narrowed selectors (RFC 4301 §4.4.1), so all three tunnels carry traffic at once,
each through its own SAs (per-SA packet counters), and terminating one peer leaves the others untouched.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.netns.test_ike_fragment import _cert  # a throw-away ECDSA CA's certificates
from xdpsec.lab import Lab
from xdpsec.labconf import Gateways, write_pubkey_files

pytestmark = pytest.mark.netns

SPOKES = (1, 2, 3)
HUB_NET, SPOKES_NET = "198.51.100.0/25", "198.51.100.128/25"
PINGS = 4
DEADLINE = 60.0  # seconds for all tunnels to come up


def _pki(directory, nodes):
    """ECDSA P-256 certificates CN=<node> from one CA, written next to the configurations."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("xdpsec hub CA", ca_key, "xdpsec hub CA", ca_key, ca=True)
    files = {}
    for node, peer in nodes:
        key = ec.generate_private_key(ec.SECP256R1())
        files[node] = write_pubkey_files(
            directory, node, cert_pem=_cert(node, key, "xdpsec hub CA", ca_key, ca=False),
            key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()),
            ca_pem=ca, local_id=f"CN={node}", remote_id=f"CN={peer}" if peer else "")
    return files


def _config(instance: str, state_dir, *, local: str, remote: str | None, local_ts: str, remote_ts: str,
            files) -> str:
    remote_id = f'id = "{files.remote_id}"\n' if files.remote_id else ""  # the hub takes any the CA vouches for
    return f"""instance = "{instance}"

[gateway]
interfaces = ["lan0", "wan0"]
workers = 1
state_dir = "{state_dir}"

[connections.hub]
local_addrs = ["{local}"]
remote_addrs = ["{remote or '%any'}"]
proposals = ["aes128gcm16-prfsha256-x25519"]

[connections.hub.local]
auth = "pubkey"
id = "{files.local_id}"
certs = ["{files.cert}"]
private_key = "{files.private_key}"

[connections.hub.remote]
auth = "pubkey"
{remote_id}cacerts = ["{files.cacert}"]

[connections.hub.children.lan]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["aes128gcm16"]
start_action = "{'start' if remote else 'none'}"
"""


@pytest.fixture
def hub(tmp_path):
    lab = Lab(prefix="xst", tag=None)
    gws = Gateways(lab)
    try:
        lab.hub(len(SPOKES))
        files = _pki(tmp_path, [("gwH", None), *((f"gwS{n}", "gwH") for n in SPOKES)])
        hub_conf = tmp_path / "gwH.toml"
        hub_conf.write_text(_config(f"{lab.run_name}-gwH", tmp_path / "state", local="192.0.2.1", remote=None,
                                    local_ts=HUB_NET, remote_ts=SPOKES_NET, files=files["gwH"]))
        gws.start("gwH", hub_conf, f"{lab.run_name}-gwH")
        gws.wait_ready()  # the responder listens before the spokes start their IKE_SA_INIT
        for n in SPOKES:
            node = f"gwS{n}"
            conf = tmp_path / f"{node}.toml"
            conf.write_text(_config(f"{lab.run_name}-{node}", tmp_path / "state", local=lab.addr[node]["wan_v4"],
                                    remote="192.0.2.1", local_ts=lab.addr[node]["lan_net_v4"], remote_ts=HUB_NET,
                                    files=files[node]))
            gws.start(node, conf, f"{lab.run_name}-{node}")
        gws.wait_ready()
        yield lab, gws
        codes = gws.stop()  # every gateway stops cleanly on SIGTERM
        assert all(c == 0 for c in codes.values()), codes
    finally:
        if gws.procs:
            gws.stop()
        lab.teardown()


def _wait(what: str, check, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(0.3)
    return result


def _instances(gws) -> dict[str, dict[str, dict]]:
    """gwH's SAs by instance name and direction."""
    out: dict[str, dict[str, dict]] = {}
    for row in gws.query("gwH", "sas"):
        out.setdefault(row["name"], {})[row["direction"]] = row
    return out


def _name(n: int) -> str:
    return f"hub/lan[192.0.2.{10 + n}]"


def test_three_peers_at_once_each_through_its_own_sas(hub):
    lab, gws = hub
    names = {_name(n) for n in SPOKES}
    _wait("all tunnels up", lambda: set(_instances(gws)) == names
          and all(len(d) == 2 for d in _instances(gws).values()))
    sas = _instances(gws)
    assert len({row["spi"] for d in sas.values() for row in d.values()}) == 2 * len(SPOKES)
    for n in SPOKES:
        assert sas[_name(n)]["out"]["remote"] == f"192.0.2.{10 + n}"

    # each peer's narrowed /27 got its own OUT and IN policy, ahead of the %any catch-all
    policies = gws.query("gwH", "policies")
    own = {(p["name"], p["direction"], p["dst"] if p["direction"] == "out" else p["src"]) for p in policies
           if p["name"] != "hub/lan"}
    assert own == {(_name(n), d, lab.addr[f"gwS{n}"]["lan_net_v4"]) for n in SPOKES for d in ("out", "in")}
    first_catch_all = min(i for i, p in enumerate(policies) if p["name"] == "hub/lan")
    assert all(i < first_catch_all for i, p in enumerate(policies) if p["name"] != "hub/lan")
    status = gws.query("gwH", "status")["connections"][0]
    assert {c["name"] for c in status["children"]} == {f"lan[192.0.2.{10 + n}]" for n in SPOKES}

    hub_host = lab.addr["hostH"]["v4"]
    for n in SPOKES:
        assert lab.ping(f"hostS{n}", hub_host, count=PINGS, timeout=10).received >= PINGS - 1, gws.log("gwH")
    after = _instances(gws)
    for n in SPOKES:  # requests came in on this peer's inbound SA, the replies left on its outbound SA
        assert after[_name(n)]["in"]["packets"] >= PINGS - 1, after
        assert after[_name(n)]["out"]["packets"] >= PINGS - 1, after

    # one peer leaves: its instance, SAs and policies go; the others keep passing through theirs
    _terminate(gws, "gwS1")
    _wait("peer 1 gone", lambda: set(_instances(gws)) == names - {_name(1)}, timeout=20)
    assert not any(p["name"] == _name(1) for p in gws.query("gwH", "policies"))
    before = _instances(gws)
    for n in SPOKES[1:]:
        assert lab.ping(f"hostS{n}", hub_host, count=PINGS, timeout=10).received >= PINGS - 1
    later = _instances(gws)
    for n in SPOKES[1:]:
        assert later[_name(n)]["in"]["packets"] - before[_name(n)]["in"]["packets"] >= PINGS - 1
        assert later[_name(n)]["in"]["spi"] == before[_name(n)]["in"]["spi"]  # untouched, not renegotiated
    assert lab.ping("hostS1", hub_host, count=2, timeout=4).received == 0  # no SA any more: dropped, not clear


def _terminate(gws, node: str) -> None:
    from xdpsec.control import request, socket_path
    request(socket_path(gws.instances[node]), "terminate", {"conn": "hub"})
