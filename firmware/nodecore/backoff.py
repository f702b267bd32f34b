"""Exponential backoff with full jitter (AWS architecture blog, 2015): spreads reconnects.

delay = uniform(0, min(max_ms, min_ms * 2**attempt)); a fleet that lost its relay at the
same instant does not come back in lockstep.
"""


class Backoff:
    __slots__ = ("attempt", "max_ms", "min_ms", "rand")

    def __init__(self, min_ms, max_ms, rand):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.rand = rand  # a callable returning a float in [0, 1)
        self.attempt = 0

    def next_delay_ms(self):
        cap = self.min_ms << self.attempt if self.attempt < 24 else self.max_ms
        if cap > self.max_ms:
            cap = self.max_ms
        self.attempt += 1
        return int(self.rand() * cap)

    def reset(self):
        self.attempt = 0
