"""What the IKE core tells its shell: SAs that came up or went away, and failures worth reporting.

The shell (coordinator) drains these with `IkeManager.next_event()` and acts: install a child's two SAs in the
data path on `ChildUp`, remove them on `ChildDown`, log the rest. A child may have several pairs installed for
a moment (a rekey's old and new pair, a collision's redundant one): `ChildDown` names one pair by its SPIs. Events carry no secrets except inside
`SAParams`, whose repr() hides its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdpsec.ike.conf import IkeProposal
from xdpsec.ike.keys import IkeKeys
from xdpsec.sa import IPAddress, SAParams


@dataclass(frozen=True)
class IkeUp:
    """An IKE SA is established. `proposal` and `keys` are there for the explicit key export
    (Wireshark's ikev2_decryption_table); they are left out of repr() and comparisons."""

    conn: str
    ispi: int
    rspi: int
    peer: tuple[IPAddress, int]
    local: tuple[IPAddress, int] | None = None
    proposal: IkeProposal | None = field(default=None, repr=False, compare=False)
    keys: IkeKeys | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class IkeDown:
    conn: str
    reason: str


@dataclass(frozen=True)
class ChildUp:
    """Both SAs of a child: install exactly these. `out.spi` is the peer's SPI, `inb.spi` the one we chose.

    `activate_out` False: install both, but keep sending on the pair this one replaces. The responder of a child
    rekey reports its new pair so: its response may still be on its way, and until the initiator has processed
    it the initiator has no inbound SA for the new pair. The initiator's Delete of the old pair (RFC 7296 §2.8:
    create the new SA, then delete the old one) is the first sign that it has; so the data path switches when
    the pair being replaced goes down (its `ChildDown`). strongSwan does the same: a rekey responder's new
    outbound SA stays "registered", not installed, until the old CHILD_SA is deleted (libcharon's
    CHILD_OUTBOUND_REGISTERED; see its tests/suites/test_child_rekey.c).
    """

    conn: str
    child: str
    out: SAParams
    inb: SAParams
    activate_out: bool = True


@dataclass(frozen=True)
class ChildDown:
    conn: str
    child: str
    out_spi: int
    in_spi: int


@dataclass(frozen=True)
class Failure:
    """An exchange failed: `reason` names the notify (e.g. "AUTHENTICATION_FAILED") or says what happened."""

    conn: str
    reason: str


Event = IkeUp | IkeDown | ChildUp | ChildDown | Failure
