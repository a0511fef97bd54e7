"""Inbound anti-replay window and extended sequence number inference (RFC 4303 §3.4.3 and appendix A).

The window remembers the highest authenticated sequence number `top` (full 64 bits) and a bitmap of the
`size` numbers ending at it: bit i set means `top - i` was received. A Python int is the bitmap, so sliding
is one shift whatever the size. Processing follows RFC 4303 §3.4.3: `check` before the ICV is verified
(cheap rejection of duplicates and of packets left of the window), `update` only after it verified, so a
forged packet can never move the window.

With ESN only the low 32 bits travel; `check` rebuilds the high 32 bits from `top` as appendix A2.2 says,
and the ICV (which covers them) then confirms or refutes the guess.
"""

from __future__ import annotations

from xdpsec.abi import Drop, DropReason

SEQ_SPACE = 1 << 32
ESN_SPACE = 1 << 64
#: Largest window we accept (bitmap of 128 KiB as an int): far beyond any reordering an SA sees.
MAX_WINDOW = 1 << 20
#: RFC 4303 §3.4.3: "a minimum window size of 32 packets MUST be supported".
MIN_WINDOW = 32
#: Without a window (anti-replay disabled) ESN inference still needs one; take the nearest full number to
#: `top` within half the low-order space, the widest window the appendix A2.2 rule can express.
INFERENCE_WINDOW = 1 << 31


class ReplayWindow:
    """Anti-replay state of one inbound SA. `size` 0 disables replay rejection but keeps ESN inference."""

    __slots__ = ("size", "esn", "top", "_bits", "_mask")

    def __init__(self, size: int, esn: bool):
        if size != 0 and not MIN_WINDOW <= size <= MAX_WINDOW:
            raise ValueError(f"replay window {size} outside {MIN_WINDOW}..{MAX_WINDOW} (or 0 to disable)")
        self.size = size
        self.esn = esn
        self.top = 0  # highest authenticated sequence number; 0 = none yet (the first packet is 1)
        self._bits = 0
        self._mask = (1 << size) - 1

    def check(self, seq_low: int) -> int:
        """The full sequence number of a packet carrying `seq_low`, or `Drop(REPLAY)` if it must be dropped."""
        seq = self._infer(seq_low) if self.esn else seq_low
        # RFC 4303 §3.3.3: the counter starts at 0 and the first packet sent carries 1; 0 never appears.
        if seq <= 0 or seq >= ESN_SPACE:
            raise Drop(DropReason.REPLAY)
        if self.size == 0 or seq > self.top:
            return seq
        behind = self.top - seq
        if behind >= self.size or (self._bits >> behind) & 1:
            raise Drop(DropReason.REPLAY)  # left of the window, or a duplicate
        return seq

    def update(self, seq: int) -> None:
        """Record `seq` (a value `check` returned) once its packet's ICV has verified."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1 & self._mask
            self.top = seq
            return
        behind = self.top - seq
        if behind < self.size:  # the window may have moved past it since `check`
            self._bits |= 1 << behind

    def restore(self, top: int) -> None:
        """Resume after a restart: `top` was the highest authenticated number, and everything up to it counts
        as seen. Packets the old window still had room for are refused: a lost one is better than a replayed one."""
        if top > self.top:
            self.top = top
            self._bits = self._mask

    def _infer(self, seq_low: int) -> int:
        """RFC 4303 appendix A2.2: place `seq_low` in the 2^32 subspace that keeps it nearest the window."""
        window = self.size or INFERENCE_WINDOW
        top_hi, top_lo = divmod(self.top, SEQ_SPACE)
        bottom = top_lo - window + 1  # low 32 bits of the window's left edge, before wrapping
        if bottom >= 0:
            # Case A: the window lies within one subspace; anything below it is from the next subspace.
            hi = top_hi if seq_low >= bottom else top_hi + 1
        else:
            # Case B: the window straddles a wrap; numbers above its wrapped left edge are from the previous one.
            hi = top_hi - 1 if seq_low >= bottom + SEQ_SPACE else top_hi
        return hi * SEQ_SPACE + seq_low
