"""The Security Policy Database (RFC 4301 §4.4.1): policies and the matcher.

The XDP classifier (bpf/include/spd.h) holds the same ordered list in a BPF array and applies the same rule:
the first policy in priority order whose selectors all match decides. This module is the reference for those
semantics and the source of the rows written into the maps.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdpsec.abi import Action, PolicyDir
from xdpsec.sa import ANY_PORT, IPNetwork, PortRange


@dataclass(frozen=True)
class Policy:
    """One SPD entry.

    OUT policies match packets about to leave (source in the child's local_ts, destination in remote_ts);
    IN policies match cleartext arriving from the other side (the reverse) and exist so that traffic that
    should have been protected is dropped (RFC 4301 §5.2). `child` names the child ("conn/child") whose current
    outbound SA a PROTECT OUT policy uses; the classifier looks that SA up through one more map, so a rekey
    swaps one entry instead of rewriting policies. Lower `priority` wins; ties keep configuration order.
    """

    id: int
    name: str
    direction: PolicyDir
    action: Action
    priority: int
    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sports: PortRange = ANY_PORT
    dports: PortRange = ANY_PORT
    child: str | None = None
