"""What a changed configuration changes: the plan that `xdpsec reload` (and SIGHUP) carries out.

A reload must not cost a packet to a tunnel the change does not concern, so the coordinator never rebuilds
anything wholesale: it compares the running configuration with the new one and touches only what differs.
This module makes that comparison, and nothing else (it is pure: two Config objects in, a Plan out):

* manually keyed children (RFC 4301 §4.5), by "conn/child": added ones are installed, removed ones torn down,
  changed ones (keys, SPIs, transform, addresses, selectors) replaced make-before-break; unchanged ones keep
  their SAs, SA indices and sequence numbers;
* IKE connections, by name, for IkeService.reconfigure (removed ones deleted, changed ones renegotiated);
* the SPD, replaced as a whole only if it differs (the classifier flips between two banks atomically);
* gateway settings: the ones the data path can take live (default action, encapsulation port, local
  addresses, logging, metrics, key export) and the ones that shape it (interfaces, workers, XDP mode, state
  directory, instance, limits), which need a restart. Those are reported and left at their running values in
  `Plan.effective`, so the gateway never claims a setting it does not run with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from xdpsec.config import Config

#: [gateway] keys that decide the data path's shape: sockets, UMEMs, workers, files. Applied at start only.
RESTART_GATEWAY_KEYS = ("interfaces", "workers", "cpus", "xdp_mode", "state_dir")
#: Top-level settings applied at start only (the instance names the socket and the pins; limits size tables).
RESTART_TOP_KEYS = ("instance", "limits")
#: Top-level settings the running gateway takes over (Config attribute names).
LIVE_TOP_KEYS = ("log", "metrics_listen", "key_export")


@dataclass(frozen=True)
class Diff:
    """Names sorted into what happens to them."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Diff:
    """Compare two name -> value maps; order is the new map's (configuration order), removed ones the old's."""
    return Diff(
        added=tuple(n for n in new if n not in old),
        removed=tuple(n for n in old if n not in new),
        changed=tuple(n for n in new if n in old and new[n] != old[n]),
        unchanged=tuple(n for n in new if n in old and new[n] == old[n]),
    )


@dataclass(frozen=True)
class Plan:
    manual: Diff
    ike: Diff
    policies_changed: bool
    live: tuple[str, ...]  # settings to apply now: "default_action", "encap_port", "local_addrs", LIVE_TOP_KEYS
    restart: tuple[str, ...]  # one message per setting that needs a restart, for the operator
    effective: Config  # the new configuration with the restart-only settings at their running values

    def as_dict(self) -> dict[str, Any]:
        return {"manual": self.manual.as_dict(), "ike": self.ike.as_dict(),
                "policies_changed": self.policies_changed, "live": list(self.live),
                "restart_needed": list(self.restart)}


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(getattr(value, "value", value))


def _restart_needed(old: Config, new: Config) -> tuple[list[str], Config]:
    messages = []
    kept_gateway = {}
    for key in RESTART_GATEWAY_KEYS:
        before, after = getattr(old.gateway, key), getattr(new.gateway, key)
        if before != after:
            messages.append(f"gateway.{key}: {_shown(before)} -> {_shown(after)} needs a restart; "
                            f"still running with {_shown(before)}")
            kept_gateway[key] = before
    kept_top = {}
    for key in RESTART_TOP_KEYS:
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            shown = f"{_shown(before)} -> {_shown(after)}" if key == "instance" else "changed"
            messages.append(f"{key}: {shown} needs a restart; the running gateway keeps the old value")
            kept_top[key] = before
    effective = replace(new, gateway=replace(new.gateway, **kept_gateway), **kept_top)
    return messages, effective


def plan(old: Config, new: Config) -> Plan:
    """How to go from the running configuration `old` to `new`."""
    restart, effective = _restart_needed(old, new)
    manual = diff({name: (out, inb) for name, out, inb in old.manual_sas()},
                  {name: (out, inb) for name, out, inb in new.manual_sas()})
    ike = diff({c.name: c for c in old.ike_connections()}, {c.name: c for c in new.ike_connections()})
    live = [key for key in ("default_action", "encap_port")
            if getattr(old.gateway, key) != getattr(new.gateway, key)]
    if old.local_addresses() != new.local_addresses():
        live.append("local_addrs")
    live += [key for key in LIVE_TOP_KEYS if getattr(old, key) != getattr(new, key)]
    return Plan(manual=manual, ike=ike, policies_changed=old.policies() != new.policies(), live=tuple(live),
                restart=tuple(restart), effective=effective)
