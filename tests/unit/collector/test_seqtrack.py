"""Tests for collector.seqtrack: applied, duplicate, dropped and lost seqs, in any order."""

from __future__ import annotations

import random
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.seqtrack import SeqTrack, covered, uncovered_count


def deliver(
    track: SeqTrack, seq: int, outbox_low: int, dropped: Iterable[tuple[int, int]] = ()
) -> tuple[bool, int, int]:
    """What FleetState.apply_batch does with one batch: offer, then settle when it is new."""
    if not track.offer(seq):
        return False, 0, 0
    new_dropped, new_lost = track.settle(outbox_low or seq, dropped)
    return True, new_dropped, new_lost


def test_in_order_offers_advance_upto() -> None:
    track = SeqTrack()
    for seq in range(1, 6):
        assert deliver(track, seq, seq) == (True, 0, 0)
        assert (track.upto, track.above, track.highest) == (seq, [], seq)
    assert (track.lost, track.dropped, track.duplicates) == (0, 0, 0)


def test_duplicates_are_counted_and_change_nothing() -> None:
    track = SeqTrack()
    deliver(track, 1, 1)
    deliver(track, 3, 1)
    assert not track.offer(1)  # at or below upto
    assert not track.offer(3)  # above upto
    assert track.offer(2)
    assert not track.offer(2)
    assert (track.upto, track.above, track.duplicates) == (3, [], 3)


def test_current_first_then_backlog() -> None:
    track = SeqTrack()
    for seq in (1, 2, 3):
        deliver(track, seq, seq)
    # 4..9 waited in the outbox during an outage; 10 goes out first after the reconnect.
    assert deliver(track, 10, 4) == (True, 0, 0)
    assert (track.upto, track.above, track.highest) == (3, [(10, 10)], 10)
    for seq in range(4, 10):
        assert deliver(track, seq, seq) == (True, 0, 0)
    assert (track.upto, track.above, track.highest, track.lost) == (10, [], 10, 0)


def test_outbox_low_above_a_gap_counts_exactly_the_unapplied_seqs_below_it() -> None:
    track = SeqTrack()
    for seq in (1, 2, 4, 6, 9):
        track.offer(seq)
    assert (track.upto, track.above) == (2, [(4, 4), (6, 6), (9, 9)])
    # The agent no longer holds anything below 7: 3 and 5 are lost; 7 and 8 it still holds.
    assert track.settle(7, []) == (0, 2)
    assert (track.upto, track.above, track.lost, track.dropped) == (6, [(9, 9)], 2, 0)
    # Settling again with the same report finds nothing new.
    assert track.settle(7, []) == (0, 0)
    assert track.lost == 2


def test_outbox_low_at_or_below_upto_changes_nothing() -> None:
    track = SeqTrack()
    for seq in (1, 2, 3):
        track.offer(seq)
    assert track.settle(2, []) == (0, 0)
    assert track.settle(0, []) == (0, 0)
    assert (track.upto, track.lost) == (3, 0)


def test_declared_drops_are_dropped_not_lost() -> None:
    track = SeqTrack()
    deliver(track, 1, 1)
    assert deliver(track, 5, 5, [(2, 4)]) == (True, 3, 0)
    assert (track.upto, track.above, track.dropped, track.lost) == (5, [], 3, 0)


def test_a_drop_reported_twice_is_counted_once() -> None:
    track = SeqTrack()
    deliver(track, 1, 1)
    # Dropped 3..4, reported while 2 (the agent still holds it) has not arrived yet.
    assert deliver(track, 5, 2, [(3, 4)]) == (True, 2, 0)
    assert (track.upto, track.above) == (1, [(3, 5)])
    assert deliver(track, 6, 2, [(3, 4)]) == (True, 0, 0)
    assert deliver(track, 7, 2, [(3, 4), (8, 8)]) == (True, 1, 0)  # only 8 is new
    assert deliver(track, 2, 2, [(3, 4), (8, 8)]) == (True, 0, 0)
    assert (track.upto, track.above, track.dropped, track.lost) == (8, [], 3, 0)
    # Once settled below upto, a late report of the same drops counts nothing.
    assert track.settle(10, [(3, 4), (8, 8)]) == (0, 1)  # 9 was never applied: lost
    assert (track.dropped, track.lost) == (3, 1)


def test_a_drop_overlapping_applied_seqs_counts_only_the_gaps() -> None:
    track = SeqTrack()
    for seq in (1, 3, 5):
        track.offer(seq)
    assert track.settle(1, [(2, 6)]) == (3, 0)  # 2, 4 and 6; 3 and 5 were applied
    assert (track.upto, track.dropped) == (6, 3)


def test_first_seen_starts_below_what_the_agent_still_holds() -> None:
    track = SeqTrack.first_seen(10, 7)
    assert (track.upto, track.highest, track.above) == (6, 6, [])
    assert track.offer(10)
    assert track.offer(7)
    assert not track.offer(6)  # settled before this collector saw the agent
    # No outbox_low (0) or a bogus one above seq: start at seq itself.
    assert SeqTrack.first_seen(10, 0).upto == 9
    assert SeqTrack.first_seen(10, 11).upto == 9
    assert SeqTrack.first_seen(1, 1).upto == 0


def test_ranges_helpers() -> None:
    assert covered(3, [(1, 2), (3, 5)])
    assert not covered(6, [(1, 2), (3, 5)])
    assert uncovered_count(1, 10, [(2, 3), (5, 5), (9, 12)]) == 5  # 1, 4, 6, 7, 8
    assert uncovered_count(5, 4, []) == 0
    assert uncovered_count(1, 3, []) == 3


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, set[int], list[int], int]:
    """Seqs 1..n; some dropped by the agent; the rest delivered in any order, some twice."""
    n = draw(st.integers(1, 60))
    dropped = set(draw(st.lists(st.integers(1, n), max_size=n)))
    kept = [seq for seq in range(1, n + 1) if seq not in dropped]
    repeats = draw(st.lists(st.sampled_from(kept), max_size=n)) if kept else []
    order = draw(st.permutations(kept + repeats))
    return n, dropped, order, len(repeats)


def ranges_of(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


@settings(max_examples=300, deadline=None, database=None)
@given(deliveries())
def test_any_order_with_declared_drops_loses_nothing(
    case: tuple[int, set[int], list[int], int],
) -> None:
    n, dropped, order, repeats = case
    track = SeqTrack()
    declared = ranges_of(dropped)  # the agent reports its drops until they are settled
    held = set(range(1, n + 1)) - dropped  # what the agent still holds (not yet delivered)
    for seq in order:
        outbox_low = min(held | {seq})
        held.discard(seq)
        deliver(track, seq, outbox_low, declared)
    if order:
        assert (track.lost, track.dropped, track.duplicates) == (0, len(dropped), repeats)
        assert (track.upto, track.above, track.highest) == (n, [], n)
    else:  # everything dropped, nothing ever arrived to say so
        assert (track.lost, track.dropped, track.duplicates, track.upto) == (0, 0, 0, 0)


def test_shuffled_backlog_with_reports_every_time() -> None:
    """A fixed example of the property, readable on its own."""
    rng = random.Random(7)
    order = list(range(1, 21))
    rng.shuffle(order)
    track = SeqTrack()
    held = set(order)
    for seq in order:
        deliver(track, seq, min(held | {seq}))
        held.discard(seq)
    assert (track.upto, track.lost, track.duplicates) == (20, 0, 0)


def test_in_order_seqs_advance_upto_without_ranges() -> None:
    track = SeqTrack.first_seen(5, 5)
    assert [track.offer(s) for s in (5, 6, 7)] == [True, True, True]
    assert (track.upto, track.above, track.highest, track.duplicates) == (7, [], 7, 0)
    assert not track.offer(7) and not track.offer(3)
    assert track.duplicates == 2
    assert track.offer(9) and track.above == [(9, 9)]  # a gap: kept as a range
    assert track.offer(8) and (track.upto, track.above, track.highest) == (9, [], 9)
