"""De-duplication on (boot, seq) with a sliding window of fixed width: bounded memory per node.

The window remembers which of the last ``width`` sequence numbers were seen, as bits of one
integer below the highest seq. Anything older than the window is "stale": it cannot be told
from a duplicate, so it is refused rather than risk delivering it twice.
"""

from __future__ import annotations

NEW = 0
DUPLICATE = 1
STALE = 2


class SeqWindow:
    """Per-boot window. ``missing`` counts sequence numbers skipped and not (yet) filled."""

    __slots__ = ("first", "full", "high", "low", "mask", "missing", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.full = (1 << width) - 1
        self.high = -1
        self.first = -1  # the first seq seen: the baseline for counting gaps
        self.low = -1  # the lowest seq accepted (a resend can be older than the first)
        self.mask = 0
        self.missing = 0

    def check(self, seq: int) -> int:
        """Record seq; say whether it is NEW, a DUPLICATE, or STALE."""
        high = self.high
        if seq > high:
            if high < 0:
                # The first message seen of a boot sets the baseline; nothing before it
                # counts as a gap (the relay may have started after the node).
                self.first = self.low = seq
            else:
                self.missing += seq - high - 1
            shift = seq - high
            self.mask = ((self.mask << shift) | 1) & self.full if shift < self.width else 1
            self.high = seq
            return NEW
        back = high - seq
        if back >= self.width:
            return STALE
        bit = 1 << back
        if self.mask & bit:
            return DUPLICATE
        self.mask |= bit
        if seq > self.first:
            self.missing -= 1  # a late arrival fills a gap counted earlier
        elif seq < self.low:
            self.low = seq
        return NEW
