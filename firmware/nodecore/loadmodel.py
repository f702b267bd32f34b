"""A node's CPU and task queue, simulated: tasks arrive, wait, and are served one at a time.

Arrivals are a Poisson process (arrival_rate_hz); each task costs about task_cost_ms of work
(uniform between half and one and a half times that); the CPU does `speed` ms of work per ms,
so it serves speed * 1000 / task_cost_ms tasks a second at most (the service rate); the
queue holds queue_capacity tasks and refuses more (counted). A sample reports, over the time since the previous sample:

- cpu_pct: the share of time the CPU was busy;
- queue_depth: tasks waiting or running now;
- load_factor: work offered / work the CPU can do (1.0 = exactly at capacity), smoothed
  over samples. Above 1 the queue grows; below 1 it drains.

The same model runs on a board (driven by the board's clock) and in the simulated fleet.
"""

import math

# Smoothing of load_factor between samples: half the weight on the newest window.
LOAD_EWMA_ALPHA = 0.5


class SimulatedLoad:
    __slots__ = (
        "arrival_rate_hz",
        "base_ms",
        "busy_ms",
        "capacity_scale",
        "completed",
        "current_left_ms",
        "last_ms",
        "load_factor",
        "next_arrival_ms",
        "offered_ms",
        "queue",
        "queue_capacity",
        "rand",
        "refused",
        "sample_ms",
        "speed",
        "task_cost_ms",
    )

    def __init__(self, rand, arrival_rate_hz, task_cost_ms, queue_capacity, now_ms=0, speed=1.0):
        self.rand = rand
        self.speed = speed
        self.arrival_rate_hz = arrival_rate_hz
        self.task_cost_ms = task_cost_ms
        self.queue_capacity = queue_capacity
        self.capacity_scale = 1.0  # < 1 while a CPU hog steals cycles
        self.queue = []  # costs (ms) of waiting tasks
        self.current_left_ms = 0.0  # work left on the task being served
        # Times are kept relative to base_ms, which moves at every sample: an ESP32's
        # single-precision floats would lose the milliseconds of an absolute clock in hours.
        self.base_ms = now_ms
        self.last_ms = 0.0
        self.sample_ms = 0.0
        self.busy_ms = 0.0
        self.offered_ms = 0.0
        self.load_factor = 0.0
        self.completed = 0
        self.refused = 0
        self.next_arrival_ms = self._interarrival_ms()

    def _interarrival_ms(self):
        if self.arrival_rate_hz <= 0:
            return 1e18
        return -math.log(1.0 - self.rand()) * 1000.0 / self.arrival_rate_hz

    def _task_cost(self):
        return self.task_cost_ms * (0.5 + self.rand())

    def set_arrival_rate(self, hz, now_ms):
        self.advance(now_ms)
        self.arrival_rate_hz = hz
        self.next_arrival_ms = (now_ms - self.base_ms) + self._interarrival_ms()

    def submit(self, cost_ms):
        """Queue one task; False (and counted) when the queue is full."""
        self.offered_ms += cost_ms
        if len(self.queue) >= self.queue_capacity:
            self.refused += 1
            return False
        self.queue.append(cost_ms)
        return True

    def advance(self, now_ms):
        """Run the model up to now_ms: arrivals in order, CPU serving the queue between them."""
        t = now_ms - self.base_ms
        while self.next_arrival_ms <= t:
            self._serve_until(self.next_arrival_ms)
            self.submit(self._task_cost())
            self.next_arrival_ms += self._interarrival_ms()
        self._serve_until(t)

    def _serve_until(self, t_ms):
        span = t_ms - self.last_ms
        if span <= 0:
            return
        self.last_ms = t_ms
        budget = span * self.capacity_scale * self.speed  # work-ms the CPU can do in this span
        while budget > 0:
            if self.current_left_ms <= 0:
                if not self.queue:
                    break
                self.current_left_ms = self.queue.pop(0)
            work = self.current_left_ms if self.current_left_ms < budget else budget
            self.current_left_ms -= work
            budget -= work
            self.busy_ms += work / self.speed
            if self.current_left_ms <= 0:
                self.completed += 1
        # Time stolen by a hog counts as busy CPU too.
        self.busy_ms += span * (1.0 - self.capacity_scale)

    def depth(self):
        return len(self.queue) + (1 if self.current_left_ms > 0 else 0)

    def sample(self, now_ms):
        """Advance to now_ms and report (cpu_pct, queue_depth, load_factor) since last sample."""
        self.advance(now_ms)
        t = now_ms - self.base_ms
        window = t - self.sample_ms
        if window <= 0:
            return 0.0, self.depth(), self.load_factor
        cpu = 100.0 * self.busy_ms / window
        offered = (
            self.offered_ms / (window * self.capacity_scale * self.speed)
            if self.capacity_scale > 0
            else 1000.0
        )
        if offered > 1000.0:
            offered = 1000.0
        self.load_factor = LOAD_EWMA_ALPHA * offered + (1 - LOAD_EWMA_ALPHA) * self.load_factor
        self.busy_ms = 0.0
        self.offered_ms = 0.0
        # Rebase: the next window starts at 0 again.
        self.base_ms = now_ms
        self.last_ms -= t
        self.next_arrival_ms -= t
        self.sample_ms = 0.0
        return (cpu if cpu < 100.0 else 100.0), self.depth(), self.load_factor
