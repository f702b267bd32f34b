"""A tiny deterministic PRNG (xorshift32): the node core never imports `random`.

MicroPython builds differ in what `random` offers (the WASI build has none), and a seeded
generator makes a simulated fleet reproducible.
"""


class XorShift32:
    __slots__ = ("state",)

    def __init__(self, seed):
        self.state = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next_u32(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def random(self):
        """A float in [0, 1). 24 bits: an ESP32's single-precision float would round a
        32-bit value near 2**32 up to exactly 1.0 (and log(1 - 1.0) fails)."""
        return (self.next_u32() >> 8) / 16777216.0

    def uniform(self, low, high):
        return low + (high - low) * self.random()
