"""The de-duplication window: exact answers inside it, bounded memory, honest gap counts."""

from __future__ import annotations

from shoal.services.relay.dedup import DUPLICATE, NEW, STALE, SeqWindow


def test_in_order_sequence_is_all_new_with_no_gaps() -> None:
    w = SeqWindow(64)
    assert all(w.check(s) == NEW for s in range(1000))
    assert w.missing == 0


def test_repeat_inside_the_window_is_a_duplicate() -> None:
    w = SeqWindow(64)
    for s in range(100):
        w.check(s)
    assert w.check(99) == DUPLICATE
    assert w.check(40) == DUPLICATE


def test_older_than_the_window_is_stale() -> None:
    w = SeqWindow(64)
    for s in range(100):
        w.check(s)
    assert w.check(100 - 64) == DUPLICATE  # the oldest slot still inside
    assert w.check(100 - 65) == STALE
    assert w.check(0) == STALE


def test_skipped_numbers_count_as_missing_until_they_arrive() -> None:
    w = SeqWindow(64)
    w.check(0)
    w.check(5)
    assert w.missing == 4
    assert w.check(3) == NEW
    assert w.missing == 3
    assert w.check(3) == DUPLICATE
    assert w.missing == 3


def test_first_message_sets_baseline_and_earlier_arrivals_are_not_gaps() -> None:
    w = SeqWindow(64)
    assert w.check(50) == NEW
    assert w.check(10) == NEW  # a retransmission from before the relay saw the node
    assert w.missing == 0
    assert w.check(11) == NEW
    assert w.missing == 0


def test_a_jump_beyond_the_window_resets_the_bitmap() -> None:
    w = SeqWindow(64)
    w.check(0)
    assert w.check(1000) == NEW
    assert w.missing == 999
    assert w.check(1000) == DUPLICATE
    assert w.mask.bit_length() <= 64


def test_memory_stays_bounded_whatever_the_sequence() -> None:
    w = SeqWindow(128)
    for s in range(0, 200_000, 3):
        w.check(s)
    assert w.mask.bit_length() <= 128
