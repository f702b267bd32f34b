"""The task engine: a bounded queue of tasks, one CPU serving it in simulated time, a workload.

Tasks are dicts in the wire form of protocol/tasks.py's Task (task_id, kind, cost_ms, arg,
payload, origin, created_ms). The queue holds entries ``[task, epoch, held]``:

- epoch: LOCAL (0) for the node's own tasks, the delegator's epoch (>= 1) for a task
  delegated in;
- held: FREE (-1), or the msg_id of the offer holding the task: a held task is not run; it
  leaves when the delegator takes it, or becomes FREE again (given back).

The CPU does ``speed`` ms of work per ms and serves the oldest FREE entry, one at a time
(``current``, out of the queue while it runs). When a task's cost_ms of work is done, its
handler runs for real (handlers.py) and ``on_done(entry, ok, output, error, duration_ms,
now_ms)`` is called. The queue (waiting + running) holds ``queue_capacity`` tasks; a local
arrival beyond that is refused and counted (``shed``: it never existed, nothing was lost).

``throttle(share, now_ms)``: from then on another load (a CPU hog) takes ``share`` (0..1)
of the CPU: tasks get speed x (1 - share), so a task of cost c takes c / (1 - share) times
its usual time (at 1 nothing progresses, nothing starts); the share taken counts as busy
in cpu_pct, and the load factor is measured against the capacity left. ``flood(n,
now_ms)``: n local arrivals at once (a burst from outside), counted and shed as any.

Local arrivals are a Poisson process at ``rate_hz``; each costs uniform(0.5, 1.5) x
task_cost_ms and gets the id "<node_id>.<boot_id>.<n>" (unique cluster-wide: a boot_id is
never reused by a node). Its kind is drawn from ``mix``, with an arg proportional to its cost.

Metrics. Every ``sample_ms`` (250) a window closes: the work offered in it (local arrivals,
shed ones included, and delegated tasks accepted) divided by the work the CPU could do in
it is the raw load factor, smoothed by an exponential moving average of time constant
``load_tau_ms`` (default: 5 s, or 50 task costs if longer): ``load_factor``, 1.0 = exactly at capacity. ``on_sample(now_ms,
load_factor, fill)`` is called then (the overload detector). ``metrics(now_ms)`` reports
cpu_pct over the time since the previous call (telemetry's window).

Times are kept relative to ``base_ms``, which moves at every window: an ESP32's
single-precision floats would lose the milliseconds of an absolute clock in hours.

Accounting of local tasks (``unaccounted()`` is 0 at every instant: no task is lost):

    created == shed + done_local + taken + queued_local + held

created: arrivals; shed: refused at arrival (queue full); done_local: ran here to completion;
taken: removed because the delegator's ledger took them; queued_local: waiting or running
here, not held; held: in an offer not answered yet. Delegated-in tasks:
``delegated_in == executed_delegated + queued_delegated``.
"""

import math

from .handlers import run as run_handler

LOCAL = 0
FREE = -1
NEVER = 1e18  # the next arrival when rate_hz is 0

DEFAULTS = {
    "queue_capacity": 16,
    "rate_hz": 0.0,
    "task_cost_ms": 100.0,
    "speed": 1.0,
    "sample_ms": 250,
    # Time constant of the load factor's moving average; 0: max(5 s, 50 task costs), so
    # that it averages at least ~50 tasks whatever their size (overload.py says why).
    "load_tau_ms": 0,
    # Kinds of local tasks and their weights.
    "mix": (("sha256", 4), ("compute", 4), ("io_wait", 2)),
}

COST_MAX_MS = 60000  # protocol limits.TASK_COST_MAX_MS
LOAD_FACTOR_MAX = 1000.0

STAT_KEYS = (
    "created",
    "shed",
    "done_local",
    "failed",
    "offered",
    "taken",
    "given_back",
    "delegated_in",
    "executed_delegated",
)


class Engine:
    def __init__(self, node_id, boot_id, rand, settings=None, now_ms=0):
        cfg = dict(DEFAULTS)
        if settings:
            for key in DEFAULTS:
                if key in settings:
                    cfg[key] = settings[key]
        self.node_id = node_id
        self.boot_id = boot_id
        self.prefix = node_id + "." + str(boot_id) + "."
        self.rand = rand
        self.capacity = int(cfg["queue_capacity"])
        self.rate_hz = float(cfg["rate_hz"])
        self.task_cost_ms = float(cfg["task_cost_ms"])
        self.full_speed = float(cfg["speed"])
        self.speed = self.full_speed  # what tasks get: full_speed x (1 - hog)
        self.hog = 0.0  # the share of the CPU another load takes (throttle)
        self.sample_ms = int(cfg["sample_ms"])
        tau = cfg["load_tau_ms"]
        if tau <= 0:
            tau = 50 * self.task_cost_ms
            tau = 5000 if tau < 5000 else tau
        self.alpha = 1.0 - math.exp(-self.sample_ms / tau)
        total = 0
        for pair in cfg["mix"]:
            total += pair[1]
        self.mix = []  # (kind, cumulative share)
        acc = 0
        for pair in cfg["mix"]:
            acc += pair[1]
            self.mix.append((pair[0], acc / total))
        self.queue = []
        self.current = None
        self.left = 0.0  # work (ms) left on the current task
        self.started = 0.0  # when the current task started (relative)
        self.base_ms = now_ms
        self.last = 0.0  # served up to (relative)
        self.win_offered = 0.0  # work offered in this window
        self.tel_busy = 0.0  # busy ms since the last metrics()
        self.tel_start = 0.0
        self.load_factor = 0.0
        self.n = 0
        self.on_done = None
        self.on_sample = None
        self.stats = {}
        for key in STAT_KEYS:
            self.stats[key] = 0
        self.next_arrival = self._interarrival()

    # --- workload -------------------------------------------------------------------------

    def _interarrival(self):
        if self.rate_hz <= 0:
            return NEVER
        return -math.log(1.0 - self.rand()) * 1000.0 / self.rate_hz

    def set_rate(self, hz, now_ms):
        self.advance(now_ms)
        self.rate_hz = float(hz)
        self.next_arrival = (now_ms - self.base_ms) + self._interarrival()

    def _arrive(self, at):
        cost = int(self.task_cost_ms * (0.5 + self.rand()))
        cost = 1 if cost < 1 else (COST_MAX_MS if cost > COST_MAX_MS else cost)
        if not self._admit(cost):
            return
        x = self.rand()
        kind = self.mix[-1][0]
        for pair in self.mix:
            if x < pair[1]:
                kind = pair[0]
                break
        arg = 1 + cost // 50 if kind == "sha256" else cost
        self._append(kind, cost, arg, None, at)

    def _admit(self, cost):
        st = self.stats
        st["created"] += 1
        self.win_offered += cost
        if self.depth() >= self.capacity:
            st["shed"] += 1
            return False
        return True

    def _append(self, kind, cost, arg, payload, at):
        self.n += 1
        task_id = self.prefix + str(self.n)
        if payload is None:
            payload = "" if kind == "io_wait" else task_id
        task = {
            "task_id": task_id,
            "kind": kind,
            "cost_ms": cost,
            "arg": arg,
            "payload": payload,
            "origin": self.node_id,
            "created_ms": self.base_ms + int(at),
        }
        self.queue.append([task, LOCAL, FREE])
        return task_id

    def flood(self, n, now_ms):
        """n local arrivals at once at now_ms, through the normal arrival path: each is
        counted as created, and shed (counted) when the queue is full. Returns how many
        were shed."""
        self.advance(now_ms)
        at = now_ms - self.base_ms
        shed = self.stats["shed"]
        while n > 0 and self.depth() < self.capacity:
            self._arrive(at)
            n -= 1
        if n > 0:
            # Full, and no time passes: _arrive would shed every other one. Counted as it
            # would, at the mean cost, without a draw each (a flood may be 100 000 tasks).
            self._shed(n, int(n * self.task_cost_ms))
        return self.stats["shed"] - shed

    def _shed(self, n, cost):
        """n arrivals of total cost ``cost`` refused: the queue is full."""
        st = self.stats
        st["created"] += n
        st["shed"] += n
        self.win_offered += cost

    def submit(self, kind, cost_ms, arg=0, payload=None):
        """A local task made by the application, at the time of the last advance(): its
        task_id, or None when the queue is full (shed, counted). payload None: the task id
        (io_wait: "")."""
        if not self._admit(cost_ms):
            return None
        return self._append(kind, cost_ms, arg, payload, self.last)

    # --- the CPU --------------------------------------------------------------------------

    def advance(self, now_ms):
        """Run up to now_ms: arrivals in order, the CPU serving between them, windows closing."""
        t = now_ms - self.base_ms
        w = self.sample_ms
        while True:
            stop = t if t < w else w
            while self.next_arrival <= stop:
                at = self.next_arrival
                self._serve_until(at)
                self._arrive(at)
                self.next_arrival = at + self._interarrival()
            self._serve_until(stop)
            if t < w:
                return
            self._close_window()
            t -= w

    def _serve_until(self, t):
        span = t - self.last
        if span <= 0:
            return
        speed = self.speed
        if speed <= 0:  # throttled to nothing: the hog has the whole CPU
            self.tel_busy += span
            self.last = t
            return
        budget = span * speed
        clock = self.last
        while budget > 0:
            cur = self.current
            if cur is None:
                cur = self._next_free()
                if cur is None:
                    break
                self.current = cur
                self.left = float(cur[0]["cost_ms"])
                self.started = clock
            work = self.left if self.left < budget else budget
            self.left -= work
            budget -= work
            clock += work / speed
            if self.left <= 0:
                self.current = None
                self._complete(cur, clock)
        idle = budget / speed
        self.tel_busy += span - idle + idle * self.hog  # the hog's share is busy too
        self.last = t

    def _next_free(self):
        q = self.queue
        for i in range(len(q)):
            if q[i][2] == FREE:
                return q.pop(i)
        return None

    def _complete(self, entry, clock):
        task = entry[0]
        ok, output, error = run_handler(task["kind"], task["arg"], task["payload"])
        st = self.stats
        if not ok:
            st["failed"] += 1
        if entry[1] == LOCAL:
            st["done_local"] += 1
        else:
            st["executed_delegated"] += 1
        if self.on_done is not None:
            duration = int(clock - self.started + 0.5)
            self.on_done(entry, ok, output, error, duration, self.base_ms + int(clock))

    def _close_window(self):
        w = self.sample_ms
        can = w * self.speed
        if can > 0:
            raw = self.win_offered / can
        else:  # no CPU left (throttle(1)): any work offered is too much
            raw = LOAD_FACTOR_MAX if self.win_offered > 0 else 0.0
        if raw > LOAD_FACTOR_MAX:
            raw = LOAD_FACTOR_MAX
        self.load_factor += self.alpha * (raw - self.load_factor)
        self.win_offered = 0.0
        # Rebase: the next window starts at 0 again.
        self.base_ms += w
        self.last -= w
        self.next_arrival -= w
        self.started -= w
        self.tel_start -= w
        if self.on_sample is not None:
            self.on_sample(self.base_ms, self.load_factor, self.fill())

    def throttle(self, share, now_ms):
        """From now_ms another load takes ``share`` of the CPU (0: none, 1: all of it)."""
        self.advance(now_ms)
        share = float(share)
        share = 0.0 if share < 0 else (1.0 if share > 1 else share)
        self.hog = share
        self.speed = self.full_speed * (1.0 - share)

    # --- state ----------------------------------------------------------------------------

    def depth(self):
        return len(self.queue) + (0 if self.current is None else 1)

    def fill(self):
        return self.depth() / self.capacity if self.capacity else 1.0

    def metrics(self, now_ms):
        """(cpu_pct, queue_depth, queue_capacity, load_factor, tasks_running) since the last
        call (cpu_pct) or now (the rest)."""
        self.advance(now_ms)
        t = now_ms - self.base_ms
        span = t - self.tel_start
        cpu = 100.0 * self.tel_busy / span if span > 0 else 0.0
        self.tel_busy = 0.0
        self.tel_start = t
        return (
            cpu if cpu < 100.0 else 100.0,
            self.depth(),
            self.capacity,
            self.load_factor,
            0 if self.current is None else 1,
        )

    def counts(self):
        """(queued_local, held, queued_delegated): local tasks waiting or running and not
        held, local tasks held by an offer, delegated-in tasks waiting or running."""
        local = held = delegated = 0
        cur = self.current
        if cur is not None:
            if cur[1] == LOCAL:
                local = 1
            else:
                delegated = 1
        for e in self.queue:
            if e[1] != LOCAL:
                delegated += 1
            elif e[2] != FREE:
                held += 1
            else:
                local += 1
        return local, held, delegated

    def unaccounted(self):
        """Local tasks neither shed, done, taken, queued nor held: 0, or one was lost."""
        st = self.stats
        local, held, _ = self.counts()
        return st["created"] - st["shed"] - st["done_local"] - st["taken"] - local - held

    def find(self, task_id):
        """The entry (queued or running) of a task, or None."""
        cur = self.current
        if cur is not None and cur[0]["task_id"] == task_id:
            return cur
        for e in self.queue:
            if e[0]["task_id"] == task_id:
                return e
        return None

    def leases(self):
        """[task_id, epoch] of every delegated-in task waiting or running."""
        out = []
        cur = self.current
        if cur is not None and cur[1] != LOCAL:
            out.append([cur[0]["task_id"], cur[1]])
        for e in self.queue:
            if e[1] != LOCAL:
                out.append([e[0]["task_id"], e[1]])
        return out

    # --- delegation -----------------------------------------------------------------------

    def hold_tail(self, n, msg_id):
        """Hold up to n FREE local waiting tasks from the tail of the queue for an offer;
        returns their task dicts, oldest first."""
        out = []
        q = self.queue
        i = len(q) - 1
        while i >= 0 and len(out) < n:
            e = q[i]
            if e[1] == LOCAL and e[2] == FREE:
                e[2] = msg_id
                out.append(e[0])
            i -= 1
        out.reverse()
        self.stats["offered"] += len(out)
        return out

    def release(self, msg_id, taken):
        """Settle an offer: its held tasks named in ``taken`` leave (the ledger owns them),
        the others run here after all. Returns (taken, given back)."""
        kept = []
        n_taken = n_back = 0
        for e in self.queue:
            if e[2] == msg_id and e[1] == LOCAL:
                if e[0]["task_id"] in taken:
                    n_taken += 1
                    continue
                e[2] = FREE
                n_back += 1
            kept.append(e)
        self.queue = kept
        self.stats["taken"] += n_taken
        self.stats["given_back"] += n_back
        return n_taken, n_back

    def remove_local(self, task_id):
        """A late "taken": remove a local task still waiting here (held or not)."""
        q = self.queue
        for i in range(len(q)):
            e = q[i]
            if e[1] == LOCAL and e[0]["task_id"] == task_id:
                q.pop(i)
                self.stats["taken"] += 1
                return True
        return False

    def enqueue(self, task, epoch):
        """Queue a delegated-in task (the caller decided there is room)."""
        if self.depth() >= self.capacity:
            return False
        self.win_offered += task["cost_ms"]
        self.queue.append([task, epoch, FREE])
        self.stats["delegated_in"] += 1
        return True
