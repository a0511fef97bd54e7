"""When an SA is rekeyed and when it dies: the soft and hard limits of `conf.Lifetime`, applied.

Time limits become two absolute deadlines when an SA comes up: the rekey at `rekey_time - uniform(0, rand_time)`
(the jitter makes two peers with the same configuration unlikely to rekey at once, RFC 7296 §2.8.1) and the
hard end at `life_time`. Byte and packet limits are compared with what the data path reports, checked on a
timer. Without extended sequence numbers a child SA must be rekeyed before its 32-bit sequence number runs out
(RFC 4303 §3.3.3: it MUST NOT cycle), so `SEQ_REKEY`/`SEQ_LIFE` cap the packet limits whatever is configured;
the margin is large enough for a line-rate sender to finish the rekey between two checks.

Pure: the random source is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from xdpsec.ike.conf import Lifetime

#: Without ESN, rekey at 2^32 - 2^30 packets (about 3.2e9): at 10 Mpp/s that leaves 100 s to rekey.
SEQ_REKEY = 2**32 - 2**30
#: ... and delete the SA at 2^32 - 2^24 whatever happened: the data path must never reach the wrap.
SEQ_LIFE = 2**32 - 2**24
#: How often the data path's byte and packet counts are compared with the limits.
USAGE_INTERVAL = 5.0


class Verdict(enum.Enum):
    KEEP = "keep"
    REKEY = "rekey"      # a soft limit is reached
    EXPIRE = "expire"    # a hard limit is reached: delete


def uniform(rng: Callable[[int], bytes]) -> float:
    """A float in [0, 1) from the injected random source (tests pass a seeded one)."""
    return int.from_bytes(rng(4), "big") / 2**32


def deadlines(lt: Lifetime, start: float, rng: Callable[[int], bytes]) -> tuple[float | None, float | None]:
    """(rekey at, expire at) for an SA that came up at `start`; None where no limit applies.

    A rekey that would fall at or after the hard end is dropped: the SA just ends (swanctl behaves alike)."""
    expire = start + lt.life_time if lt.life_time > 0 else None
    if lt.rekey_time <= 0:
        return None, expire
    rekey = start + max(0.0, lt.rekey_time - uniform(rng) * lt.rand_time)
    if expire is not None and rekey >= expire:
        return None, expire
    return rekey, expire


def _limit(configured: int, cap: int | None) -> int | None:
    if cap is None:
        return configured or None
    return min(configured, cap) if configured else cap


def usage_verdict(lt: Lifetime, esn: bool, octets: int, packets: int) -> Verdict:
    """What the byte and packet counts of a child SA call for (hard limits first)."""
    life_packets = _limit(lt.life_packets, None if esn else SEQ_LIFE)
    rekey_packets = _limit(lt.rekey_packets, None if esn else SEQ_REKEY)
    if (lt.life_bytes and octets >= lt.life_bytes) or (life_packets and packets >= life_packets):
        return Verdict.EXPIRE
    if (lt.rekey_bytes and octets >= lt.rekey_bytes) or (rekey_packets and packets >= rekey_packets):
        return Verdict.REKEY
    return Verdict.KEEP
