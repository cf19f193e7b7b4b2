"""Per-agent seq bookkeeping: duplicates, drops and losses, as pure data.

Everything at or below ``upto`` is settled: applied, declared dropped by the agent, or lost.
``above`` holds the ranges settled above ``upto`` (current data overtakes the backlog after an
outage, so batches arrive out of order). A seq below the agent's ``outbox_low`` that was never
applied and never declared dropped is lost, and only that.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from outpost.wire import merge_ranges

__all__ = ["SeqTrack", "covered", "uncovered_count"]


def covered(seq: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges)


def uncovered_count(lo: int, hi: int, ranges: Iterable[tuple[int, int]]) -> int:
    """How many seqs in ``lo..hi`` no range covers (ranges merged, disjoint)."""
    if hi < lo:
        return 0
    total = hi - lo + 1
    for a, b in ranges:
        a, b = max(a, lo), min(b, hi)
        if a <= b:
            total -= b - a + 1
    return total


def _subtract(lo: int, hi: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``lo..hi`` that ``ranges`` (merged, sorted) do not cover."""
    out: list[tuple[int, int]] = []
    cur = lo
    for a, b in ranges:
        if b < cur or a > hi:
            continue
        if a > cur:
            out.append((cur, min(a - 1, hi)))
        cur = max(cur, b + 1)
        if cur > hi:
            break
    if cur <= hi:
        out.append((cur, hi))
    return out


class SeqTrack(msgspec.Struct):
    upto: int = 0
    above: list[tuple[int, int]] = msgspec.field(default_factory=list)
    lost: int = 0
    dropped: int = 0
    duplicates: int = 0
    highest: int = 0

    @classmethod
    def first_seen(cls, seq: int, outbox_low: int) -> SeqTrack:
        """Start tracking at what the agent still holds: what it no longer holds was settled
        with an earlier collector (or before the agent was ever seen)."""
        low = outbox_low if 0 < outbox_low <= seq else seq
        return cls(upto=low - 1, highest=low - 1)

    def seen(self, seq: int) -> bool:
        return seq <= self.upto or (bool(self.above) and covered(seq, self.above))

    def offer(self, seq: int) -> bool:
        """Record ``seq`` as applied; False (and counted) when it already was."""
        if seq == self.upto + 1 and not self.above:  # the usual case: the next seq, in order
            self.upto = seq
            if seq > self.highest:
                self.highest = seq
            return True
        if self.seen(seq):
            self.duplicates += 1
            return False
        self.above = merge_ranges([*self.above, (seq, seq)])
        self.highest = max(self.highest, seq)
        self._advance()
        return True

    def settle(self, outbox_low: int, dropped: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """Apply an agent's report; returns (newly dropped, newly lost)."""
        new_dropped = 0
        for lo, hi in dropped:
            lo = max(lo, self.upto + 1)
            if hi < lo:
                continue
            gaps = _subtract(lo, hi, self.above)
            if gaps:
                new_dropped += sum(b - a + 1 for a, b in gaps)
                self.above = merge_ranges([*self.above, *gaps])
        new_lost = 0
        if outbox_low - 1 > self.upto:
            new_lost = uncovered_count(self.upto + 1, outbox_low - 1, self.above)
            self.upto = outbox_low - 1
            self.above = [(max(a, self.upto + 1), b) for a, b in self.above if b > self.upto]
        self._advance()
        self.highest = max(self.highest, self.upto)
        self.dropped += new_dropped
        self.lost += new_lost
        return new_dropped, new_lost

    def _advance(self) -> None:
        while self.above and self.above[0][0] <= self.upto + 1:
            self.upto = max(self.upto, self.above[0][1])
            self.above.pop(0)
