"""A tiny deterministic PRNG (xorshift32): the node core never imports `random`.

MicroPython builds differ in what `random` offers (the WASI build has none), and a seeded
generator makes a simulated fleet reproducible.

The 32-bit state is kept as two 16-bit halves: on a 32-bit MicroPython every intermediate
then stays a small int (below 2**30), where whole 32-bit values would be big ints, each
shift and mask allocating (~290 bytes of garbage per number drawn, measured).
"""


class XorShift32:
    __slots__ = ("hi", "lo")

    def __init__(self, seed):
        seed = (seed & 0xFFFFFFFF) or 0x9E3779B9
        self.hi = seed >> 16
        self.lo = seed & 0xFFFF

    @property
    def state(self):
        return (self.hi << 16) | self.lo

    def _step(self):
        hi = self.hi
        lo = self.lo
        # x ^= x << 13
        hi ^= ((hi << 13) | (lo >> 3)) & 0xFFFF
        lo ^= (lo << 13) & 0xFFFF
        # x ^= x >> 17
        lo ^= hi >> 1
        # x ^= x << 5
        hi ^= ((hi << 5) | (lo >> 11)) & 0xFFFF
        lo ^= (lo << 5) & 0xFFFF
        self.hi = hi
        self.lo = lo

    def next_u32(self):
        self._step()
        return (self.hi << 16) | self.lo

    def random(self):
        """A float in [0, 1). 24 bits: an ESP32's single-precision float would round a
        32-bit value near 2**32 up to exactly 1.0 (and log(1 - 1.0) fails)."""
        self._step()
        return ((self.hi << 8) | (self.lo >> 8)) / 16777216.0

    def uniform(self, low, high):
        return low + (high - low) * self.random()
