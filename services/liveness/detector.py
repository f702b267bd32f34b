"""A per-node accrual failure detector on the monitor's own receive times.

phi-accrual (Hayashibara et al., as Akka and Cassandra use it): keep the last N intervals
between a node's arrivals; model the next interval as normal with the window's mean (plus an
acceptable pause) and spread (with a floor); then

    phi(silence) = -log10 P(a live node stays silent this long)

Two thresholds on phi give two verdicts: suspect (cheap, reversible) and dead (act). The
thresholds are turned into silences once per arrival (``suspect_after_s``,
``dead_after_s``), so checking 1,000 nodes is 1,000 subtractions, not 1,000 erfc calls.

Why the floor and the pause: a window of steady 250 ms heartbeats has a spread of a few
ms, and a pure phi detector would call a node dead after two lost messages. The floor
(``min_std_fraction`` of the expected interval) and the pause (``pause_intervals`` of it)
say how much loss and jitter are normal; a node whose intervals really spread (a lossy
link) gets wider thresholds from its own statistics.

Usage::

    d = Detector(settings, now=0.0)
    d.heard(0.25); d.heard(0.50)
    d.silence(now) >= d.dead_after_s  # verdict
    d.phi(now)                       # evidence
"""

from __future__ import annotations

import math
from statistics import NormalDist

from shoal.protocol.messages import Evidence
from shoal.services.runtime.config import LivenessConfig

PHI_MAX = 99.0
# Intervals shorter than this fraction of the expected interval are one arrival seen
# twice (a resend burst, a telemetry message just after a heartbeat), not a sample.
COALESCE_FRACTION = 0.25


def z_for_phi(phi: float) -> float:
    """The normal quantile whose upper tail is 10**-phi."""
    return -NormalDist().inv_cdf(10.0**-phi)


class Thresholds:
    """The settings every node's detector shares, with the z values computed once."""

    def __init__(self, cfg: LivenessConfig) -> None:
        self.cfg = cfg
        self.window = cfg.window
        self.min_samples = cfg.min_samples
        self.default_interval_s = cfg.default_interval_ms / 1000
        self.pause_intervals = cfg.pause_intervals
        self.min_std_fraction = cfg.min_std_fraction
        self.z_suspect = z_for_phi(cfg.phi_suspect)
        self.z_dead = z_for_phi(cfg.phi_dead)


class Detector:
    """The arrival history of one node, and the silences at which it is suspect and dead."""

    __slots__ = (
        "announced_s",
        "base_s",
        "dead_after_s",
        "intervals",
        "last",
        "next_slot",
        "overdue_after_s",
        "settings",
        "skip_next",
        "spread_s",
        "sum_s",
        "sumsq_s",
        "suspect_after_s",
    )

    def __init__(self, settings: Thresholds, now: float, announced_ms: int | None = None) -> None:
        self.settings = settings
        self.announced_s = announced_ms / 1000 if announced_ms else None
        self.intervals: list[float] = []
        self.next_slot = 0
        self.sum_s = 0.0
        self.sumsq_s = 0.0
        self.last = now
        self.skip_next = False
        self.base_s = self.spread_s = self.suspect_after_s = self.dead_after_s = 0.0
        self.overdue_after_s = 0.0
        self._update()

    # --- evidence in -------------------------------------------------------------------

    def heard(self, now: float) -> None:
        """The node was heard at ``now`` (monotonic seconds)."""
        interval = now - self.last
        if interval <= 0:
            return  # the same arrival (one bus frame carries several of its records)
        if interval < COALESCE_FRACTION * self.expected_s():
            self.last = now
            return
        self.last = now
        if self.skip_next:
            self.skip_next = False
            return
        if interval >= self.dead_after_s:
            return  # an outage, not how the node normally behaves
        self._add(interval)
        self._update()

    def announce(self, interval_ms: int) -> None:
        """The node said (hello) how often it speaks when idle."""
        self.announced_s = interval_ms / 1000
        self._update()

    def restart_clock(self, now: float) -> None:
        """Count silence from ``now`` (the observer was degraded until then); the interval
        that spans the outage is not a sample."""
        if now > self.last:
            self.last = now
            self.skip_next = True

    def begin_at(self, now: float) -> None:
        """Start timing afresh at ``now`` (a new boot); the gap before it is not a sample."""
        self.last = now
        self.skip_next = False

    def _add(self, interval: float) -> None:
        ivs = self.intervals
        if len(ivs) < self.settings.window:
            ivs.append(interval)
        else:
            old = ivs[self.next_slot]
            ivs[self.next_slot] = interval
            self.next_slot = (self.next_slot + 1) % len(ivs)
            if self.next_slot == 0:
                # Once per window, sum afresh: running float sums drift over days.
                self.sum_s = sum(ivs)
                self.sumsq_s = sum(i * i for i in ivs)
                return
            self.sum_s -= old
            self.sumsq_s -= old * old
        self.sum_s += interval
        self.sumsq_s += interval * interval

    # --- statistics --------------------------------------------------------------------

    def samples(self) -> int:
        return len(self.intervals)

    def mean_s(self) -> float:
        n = len(self.intervals)
        if n < self.settings.min_samples:
            return self.expected_s()
        return self.sum_s / n

    def std_s(self) -> float:
        n = len(self.intervals)
        if n < 2:
            return 0.0
        mean = self.sum_s / n
        return math.sqrt(max(0.0, self.sumsq_s / n - mean * mean))

    def expected_s(self) -> float:
        """The interval the node announced; else its learned mean; else the prior."""
        if self.announced_s is not None:
            return self.announced_s
        n = len(self.intervals)
        if n >= self.settings.min_samples:
            return self.sum_s / n
        return self.settings.default_interval_s

    def _update(self) -> None:
        s = self.settings
        expected = self.expected_s()
        mean = self.mean_s()
        self.base_s = mean + s.pause_intervals * expected
        # One whole interval late: what the monitor's mass-silence check counts. Well before
        # suspect, so a fleet-wide blackout is recognised before its first node is judged.
        self.overdue_after_s = mean + expected
        self.spread_s = max(self.std_s(), s.min_std_fraction * expected)
        self.suspect_after_s = self.base_s + s.z_suspect * self.spread_s
        self.dead_after_s = self.base_s + s.z_dead * self.spread_s

    # --- verdict inputs ----------------------------------------------------------------

    def silence(self, now: float) -> float:
        return now - self.last

    def phi(self, now: float) -> float:
        z = (self.silence(now) - self.base_s) / self.spread_s
        tail = 0.5 * math.erfc(z / math.sqrt(2.0))
        if tail <= 0.0:
            return PHI_MAX
        return min(PHI_MAX, -math.log10(tail))

    def evidence(self, now: float) -> Evidence:
        return Evidence(
            silence_ms=int(self.silence(now) * 1000),
            phi=round(self.phi(now), 2),
            mean_ms=round(self.mean_s() * 1000, 1),
            std_ms=round(self.std_s() * 1000, 1),
            samples=len(self.intervals),
            expected_ms=int(self.expected_s() * 1000),
            suspect_after_ms=int(self.suspect_after_s * 1000),
            dead_after_ms=int(self.dead_after_s * 1000),
        )
