"""The Security Policy Database (RFC 4301 §4.4.1): policies and the matcher.

The XDP classifier (xdpsec/bpf/include/spd.h) holds the same ordered list in a BPF array and applies the same rule:
the first policy in priority order whose selectors all match decides. This module is the reference for those
semantics and the source of the rows written into the maps.

Order: `ordered()` sorts policies by priority (lower wins, ties keep configuration order) and numbers them
1..n; `lookup()` then takes the first match. Automatic priorities follow strongSwan's kernel-netlink
formula (`auto_priority`) so that more specific selectors come first and `pass` shunts beat IPsec policies,
exactly as a swanctl user expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from xdpsec.abi import Action, PolicyDir
from xdpsec.sa import ANY_PORT, Flow, IPNetwork, PortRange


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


def matches(policy: Policy, flow: Flow) -> bool:
    """Do all selectors of `policy` match `flow` (RFC 4301 §4.4.1.1)? The direction is the caller's business.

    Port ranges are compared even when unrestricted (0..65535 contains every port), so a non-first fragment
    (ports 0) only matches policies that do not restrict ports; for ICMP the source "port" is the type.
    """
    return (flow.src.version == policy.src.version
            and flow.src in policy.src
            and flow.dst in policy.dst
            and (policy.proto == 0 or policy.proto == flow.proto)
            and flow.sport in policy.sports
            and flow.dport in policy.dports)


def lookup(policies: Sequence[Policy], direction: PolicyDir, flow: Flow) -> Policy | None:
    """The first policy of `direction` in list order that matches `flow`, or None (the gateway default).

    `policies` must already be in priority order (see `ordered`); the XDP classifier walks the same list.
    """
    for policy in policies:
        if policy.direction == direction and matches(policy, flow):
            return policy
    return None


def _range_covers(outer: PortRange, inner: PortRange) -> bool:
    return outer.lo <= inner.lo and inner.hi <= outer.hi


def covers(outer: Policy, inner: Policy) -> bool:
    """Does every flow that matches `inner` also match `outer` (same direction assumed)?"""
    return (outer.src.version == inner.src.version
            and inner.src.subnet_of(outer.src)  # type: ignore[arg-type]
            and inner.dst.subnet_of(outer.dst)  # type: ignore[arg-type]
            and (outer.proto == 0 or outer.proto == inner.proto)
            and _range_covers(outer.sports, inner.sports)
            and _range_covers(outer.dports, inner.dports))


#: strongSwan's kernel-netlink base; `pass` policies sit one base below the others, so they always win.
PRIO_BASE = 200_000


def _port_mask_bits(ports: PortRange) -> int:
    """Bits a port range pins down: 16 for one port, 0 for any (the XFRM port mask strongSwan counts)."""
    return 16 - (ports.hi - ports.lo).bit_length()


def auto_priority(policy: Policy) -> int:
    """strongSwan's automatic policy priority (kernel_netlink_ipsec.c get_priority); lower wins.

    Per prefix bit of source and destination -512, a protocol -256, per pinned port bit -4, on top of
    PRIO_BASE for BYPASS (swanctl `pass` shunts, POLICY_PRIORITY_PASS) or 2*PRIO_BASE for everything else.
    So a /32 beats a /24 whatever the ports, and a pass shunt beats any IPsec or drop policy.
    """
    base = PRIO_BASE if policy.action == Action.BYPASS else 2 * PRIO_BASE
    return (base
            - 512 * (policy.src.prefixlen + policy.dst.prefixlen)
            - (256 if policy.proto else 0)
            - 4 * (_port_mask_bits(policy.sports) + _port_mask_bits(policy.dports)))


def ordered(policies: Iterable[Policy]) -> list[Policy]:
    """The policies sorted by priority (stable: ties keep their order) and numbered 1..n."""
    by_priority = sorted(policies, key=lambda p: p.priority)
    return [replace(p, id=i) for i, p in enumerate(by_priority, start=1)]
