"""Anti-replay window and ESN inference (xdpsec/esp/replay.py), as tables of arrivals in the style of
WireGuard's selftest/counter.c, plus a model-based property test."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec.abi import Drop, DropReason
from xdpsec.esp.replay import ReplayWindow

T, F = True, False
LAST32 = (1 << 32) - 1


def arrive(window: ReplayWindow, seq_low: int) -> int | None:
    """One packet whose ICV verifies: the full sequence number it was accepted as, or None if dropped."""
    try:
        seq = window.check(seq_low)
    except Drop as drop:
        assert drop.reason == DropReason.REPLAY
        return None
    window.update(seq)
    return seq


# (window size, [(seq arriving, accepted?)]) without ESN: every accepted number is the number itself.
TABLES = {
    "first packets, zero, duplicates": (32, [
        (0, F),  # RFC 4303 §3.3.3: the first packet is 1; 0 never appears
        (1, T), (1, F), (2, T), (4, T), (3, T), (3, F), (4, F), (2, F), (0, F),
    ]),
    "exact window edge": (32, [
        (1, T), (40, T),
        (9, T),  # 40 - 9 = 31: the oldest number the window still covers
        (8, F),  # 40 - 8 = 32: just left of it
        (9, F), (39, T), (39, F), (10, T), (41, T),
        (10, F),  # a duplicate still inside the window after it moved by one
        (9, F),  # 9 fell out of the window when 41 arrived
    ]),
    "far jump forgets everything": (64, [
        (1, T), (2, T), (1000000, T), (2, F), (999936, F), (999937, T), (999999, T), (999999, F),
        (1000000, F), (1000001, T),
    ]),
    "jump by exactly the window": (64, [
        (10, T), (74, T),  # shifted by 64: 10 is now 64 behind, outside
        (10, F), (11, T), (73, T), (11, F),
    ]),
    "out-of-order burst fills the bitmap": (32, [
        *((n, T) for n in range(32, 0, -1)), *((n, F) for n in range(1, 33)), (33, T), (1, F), (2, F), (34, T),
    ]),
    "top of the 32-bit space": (32, [
        (LAST32 - 1, T), (LAST32, T), (LAST32, F), (LAST32 - 1, F), (LAST32 - 31, T), (LAST32 - 32, F),
    ]),
    "large window 4096": (4096, [
        (5000, T), (905, T), (904, F), (905, F), (4999, T),
        (9095, T),  # 5000 is now exactly 4095 behind, 4999 just left of the window
        (4999, F), (5000, F), (5001, T), (1 << 31, T), ((1 << 31) - 4095, T), ((1 << 31) - 4096, F),
    ]),
    "largest window 65536": (65536, [
        (70000, T), (4465, T), (4464, F), (69999, T), (69999, F), (135536, T), (70000, F), (70001, T),
    ]),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_window_table(name):
    size, arrivals = TABLES[name]
    window = ReplayWindow(size, esn=False)
    for step, (seq, accepted) in enumerate(arrivals):
        assert (arrive(window, seq) == seq) is accepted, f"{name}: step {step}, seq {seq}"


# ESN (RFC 4303 appendix A2.2): (window size, [(low 32 bits arriving, full number accepted as, or None)]).
ESN_TABLES = {
    "low bits wrap into the next subspace": (64, [
        (1, 1), (0x80000000, 0x80000000), (0xFFFFFFF0, 0xFFFFFFF0),
        (5, (1 << 32) + 5),  # below the window (case A): the next subspace
        (0xFFFFFFF8, 0xFFFFFFF8),  # window now straddles the wrap (case B): the previous subspace, 13 behind
        (0xFFFFFFF0, None),  # duplicate from before the wrap
        (0xFFFFFFC6, 0xFFFFFFC6),  # exactly 63 behind (1<<32)+5: the window's left edge
        (5, None), (0, (1 << 32)), (0, None), (6, (1 << 32) + 6),
    ]),
    "left of a straddling window is the far future": (64, [
        (1, 1), (0x80000000, 0x80000000), (0xFFFFFFF0, 0xFFFFFFF0), (5, (1 << 32) + 5),
        # 64 behind (1<<32)+5 is 0xFFFFFFC5: below the wrapped left edge, so it reads as subspace 1 (A2.2 case
        # B); its ICV, computed by the sender with high bits 0, will then fail and drop it.
        (0xFFFFFFC5, (1 << 32) + 0xFFFFFFC5),
    ]),
    "a fresh SA has no previous subspace": (64, [
        (LAST32, None),  # would be subspace -1
        (LAST32 - 62, None),
        (LAST32 - 63, LAST32 - 63),  # far enough from 0 to be read as a jump within subspace 0
    ]),
    "full zero is never valid but low zero is": (32, [
        (0, None), (1, 1), (0xFFFFFFFF - 100, 0xFFFFFFFF - 100), (0, 1 << 32),
    ]),
}


@pytest.mark.parametrize("name", list(ESN_TABLES))
def test_esn_table(name):
    size, arrivals = ESN_TABLES[name]
    window = ReplayWindow(size, esn=True)
    for step, (seq_low, expected) in enumerate(arrivals):
        assert arrive(window, seq_low) == expected, f"{name}: step {step}, seq_low {seq_low:#x}"


def test_many_wraps_with_esn():
    window = ReplayWindow(128, esn=True)
    seq = 1
    for _ in range(5):
        for step in (LAST32 // 3, LAST32 // 3, LAST32 // 3, 100):
            seq += step
            assert arrive(window, seq & LAST32) == seq
    assert window.top == seq > 4 << 32


def test_check_does_not_move_the_window():
    """A packet whose ICV fails is only checked, never recorded: the genuine packet still gets through."""
    window = ReplayWindow(32, esn=False)
    assert window.check(7) == 7
    assert window.check(7) == 7
    assert window.top == 0
    assert arrive(window, 7) == 7


def test_late_update_after_the_window_moved_is_ignored():
    window = ReplayWindow(32, esn=False)
    early = window.check(5)
    arrive(window, 1000)  # a later packet verifies first and moves the window far right
    window.update(early)  # must not set a bit for a number 995 behind (and must not raise)
    assert arrive(window, 969) == 969  # 31 behind: the window's oldest slot was not touched
    assert arrive(window, 5) is None


def test_disabled_window_accepts_duplicates_but_never_zero():
    window = ReplayWindow(0, esn=False)
    assert [arrive(window, n) for n in (3, 3, 1, 0, 2)] == [3, 3, 1, None, 2]


def test_disabled_window_still_infers_esn():
    window = ReplayWindow(0, esn=True)
    assert arrive(window, 0xFFFFFF00) is None  # nearest to 0 is subspace -1: half the space is "behind"
    assert arrive(window, 0x7FFFFF00) == 0x7FFFFF00
    assert arrive(window, 0xFFFFFF00) == 0xFFFFFF00
    assert arrive(window, 0x10) == (1 << 32) + 0x10
    assert arrive(window, 0xFFFFFF00) == 0xFFFFFF00  # replay allowed, but placed in the right subspace


@pytest.mark.parametrize("size", [-1, 1, 31, (1 << 20) + 1])
def test_unsupported_sizes_are_refused(size):
    with pytest.raises(ValueError):
        ReplayWindow(size, esn=False)


@given(size=st.sampled_from([32, 64, 100, 1024, 4096]),
       arrivals=st.lists(st.integers(0, 5000), max_size=200))
def test_matches_a_set_model(size, arrivals):
    """Accept iff nonzero, never seen, and within `size` of the highest number seen so far."""
    window, seen, top = ReplayWindow(size, esn=False), set(), 0
    for seq in arrivals:
        expected = seq != 0 and seq not in seen and seq > top - size
        assert (arrive(window, seq) == seq) is expected
        if expected:
            seen.add(seq)
            top = max(top, seq)


def test_restore_treats_everything_up_to_top_as_seen():
    """After a worker restart nothing at or below the recorded top may be accepted again, newer numbers may."""
    w = ReplayWindow(64, esn=False)
    w.restore(1000)
    for seq in (1000, 999, 937, 1):
        with pytest.raises(Drop):
            w.check(seq)
    assert w.check(1001) == 1001
    w.update(1001)
    with pytest.raises(Drop):
        w.check(1000)
