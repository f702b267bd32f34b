"""Overload detection with hysteresis, and the cool-down between offers.

Fed one sample per engine window (every ``sample_ms`` = 250 ms): the smoothed load factor
(offered work / capacity, a moving average over ~5 s, see engine.py) and the
queue fill (tasks queued or running / queue capacity).

- Enter overload when load >= enter_load OR fill >= enter_fill for ``samples`` consecutive
  samples: demand above what the CPU keeps up with, or a backlog building up, for real.
- Leave when load <= leave_load AND fill <= leave_fill for ``samples`` consecutive samples:
  demand well below capacity and the backlog mostly gone.
- After each offer, no other offer for ``cooldown_ms`` (the caller may ask for longer:
  delegation.py backs off while the delegator does not answer).

Defaults and why:

- enter_load 0.9: a queue served at 90% of capacity waits ~5x the task cost on average
  (M/G/1 with these costs) and that wait grows without bound as the load nears 1: hand
  work off before it does.
- leave_load 0.6: the smoothed load factor of a node at 0.9 with ~10 tasks a second has a
  standard deviation of ~0.07-0.1 (measured), so 0.6 is ~3 of them below the enter
  threshold: a node held near 0.9 does not go back and forth. Measured over 10 seeds x 10
  minutes, 16 and 64 slots, task costs 20-500 ms, steady load 0.855, 0.9 and 0.945: at most
  0.5 transitions a minute (with leave_load 0.7 and a 5 s average: up to 1.7). In the
  middle of the band (0.75) a node still changes state about once a minute: the band is
  where either state is right.
- enter_fill 0.5 / leave_fill 0.25: half a queue is a backlog worth offering; an offer
  hands over what lies beyond a quarter, which keeps the CPU busy meanwhile.
- samples 3 (750 ms): one burst of arrivals is not an overload.
- cooldown_ms 1000: one offer's answer (a round trip and a ledger write) comes back well
  within it, and the next offer sees the queue the last one left.

The smoothing (engine.py, load_tau_ms): 5 s, or 50 task costs if longer, so that it
averages ~50 tasks whatever their size. Measured (16 and 64 slots, 100 ms tasks): a node
going from 0.4 to 2x its capacity is overloaded 1-4 s later, to 1.2x 2-8 s later; one that
drops from a long 2x to 0.3 leaves after ~9 s (the average decays, the backlog drains).
"""

DEFAULTS = {
    "enter_load": 0.9,
    "enter_fill": 0.5,
    "leave_load": 0.6,
    "leave_fill": 0.25,
    "samples": 3,
    "cooldown_ms": 1000,
}


class Overload:
    __slots__ = (
        "cooldown_ms",
        "enter_fill",
        "enter_load",
        "last_offer_ms",
        "leave_fill",
        "leave_load",
        "next_offer_ms",
        "overloaded",
        "samples",
        "streak",
        "transitions",
    )

    def __init__(self, settings=None):
        cfg = dict(DEFAULTS)
        if settings:
            for key in DEFAULTS:
                if key in settings:
                    cfg[key] = settings[key]
        self.enter_load = cfg["enter_load"]
        self.enter_fill = cfg["enter_fill"]
        self.leave_load = cfg["leave_load"]
        self.leave_fill = cfg["leave_fill"]
        self.samples = cfg["samples"]
        self.cooldown_ms = cfg["cooldown_ms"]
        self.overloaded = False
        self.streak = 0  # consecutive samples past the threshold of the other state
        self.transitions = 0
        self.next_offer_ms = 0
        self.last_offer_ms = -cfg["cooldown_ms"]

    def sample(self, load, fill):
        """One sample; returns whether the node is overloaded now."""
        if self.overloaded:
            past = load <= self.leave_load and fill <= self.leave_fill
        else:
            past = load >= self.enter_load or fill >= self.enter_fill
        if not past:
            self.streak = 0
            return self.overloaded
        self.streak += 1
        if self.streak >= self.samples:
            self.overloaded = not self.overloaded
            self.streak = 0
            self.transitions += 1
        return self.overloaded

    def may_offer(self, now_ms):
        return self.overloaded and now_ms >= self.next_offer_ms

    def offered(self, now_ms, wait_ms=None):
        """An offer went out (or failed): the next one not before the cool-down (or wait_ms)."""
        self.last_offer_ms = now_ms
        self.next_offer_ms = now_ms + (self.cooldown_ms if wait_ms is None else wait_ms)
