"""A millisecond clock that never wraps, for the node core's now_ms.

time.ticks_ms() wraps (at 2**30 on the ESP32: about 12.4 days), so it cannot be compared
directly; ticks_diff() gives the signed distance between two readings as long as they are
less than half a period (about 6.2 days) apart. Calling now() often (the main loop does,
every 20 ms) and adding up those distances gives a plain int that only grows. MicroPython
ints are arbitrary precision, so the sum never overflows either.
"""

import time


class MonotonicMs:
    __slots__ = ("_diff", "_last", "_now", "_ticks")

    def __init__(self, ticks_ms=None, ticks_diff=None, start_ms=0):
        # Injectable so a test can drive the clock across a wrap.
        self._ticks = ticks_ms or time.ticks_ms
        self._diff = ticks_diff or time.ticks_diff
        self._last = self._ticks()
        self._now = start_ms

    def now(self):
        t = self._ticks()
        d = self._diff(t, self._last)
        self._last = t
        if d > 0:  # a negative step cannot happen with ticks_ms; never go backwards anyway
            self._now += d
        return self._now
