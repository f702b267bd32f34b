"""The node core: numbers messages, samples metrics, and delivers them through a flaky link.

Interfaces it needs (one implementation on the ESP32, one in the simulator):

- hal.sample(now_ms) -> dict with cpu_pct, queue_depth, queue_capacity, load_factor and,
  when known, free_heap and rssi;
- hal.rand() -> float in [0, 1) (backoff jitter);
- transport.send(msg: dict) -> bool: hand one message to the link; False if the link is
  down now (the message stays buffered).

The caller drives it: ``tick(now_ms)`` often (every 10-50 ms), ``on_ack(boot_id, first,
last)`` for every ack entry the relay sends back. ``now_ms`` is a non-wrapping millisecond
clock.

Tasks (optional): with an ``engine`` (engine.py: the task queue and its CPU) the node runs
tasks, and its telemetry reports the engine's figures (cpu_pct, queue_depth,
queue_capacity, load_factor, tasks_running, delegated_out, delegated_in, overloaded) while
free_heap and rssi still come from hal.sample(). With a ``delegation`` (delegation.py,
which holds the engine) it also offers and takes delegated tasks; messages from the
delegator go to ``on_task_message(msg, now_ms)``. ``tick`` advances the engine (and with it
the overload detector) and then the delegation's timers. Without either, nothing changes.

Delivery: every message except heartbeats goes into a bounded ring and stays there until
the relay acks that very seq (acks are selective ranges, so a message lost in flight is never
covered by the ack of a later one). The link is UP (send at once), DOWN (wait a backoff with
full jitter), or PROBING (the oldest unacked message was sent as a probe; its ack brings the
link UP and everything else follows in order). When the oldest unacked message waits longer
than ack_timeout_ms, the link goes DOWN and everything unacked is sent again on the next
UP. The relay de-duplicates, so a repeat costs nothing.

Heartbeats are proof of life *now*: when no new message was sent for heartbeat_interval_ms
(resends do not count: a resend may be a duplicate the relay does not republish), the node
numbers a heartbeat (the next seq, like every message) and hands it straight to the
transport, in every link state. It is never buffered and never resent, and it never moves
the link state: if the transport refuses it, it is counted in heartbeats_skipped and the
next one is tried an interval later. Its ack finds nothing in the ring. So the relay sees seq
holes where heartbeats were refused or lost, and the ring's seqs have holes too.
"""

from .backoff import Backoff
from .ring import ACKED, RESEND, UNSENT, Ring

PROTOCOL_VERSION = 1

UP = "up"
DOWN = "down"
PROBING = "probing"

DEFAULTS = {
    "telemetry_interval_ms": 1000,
    "heartbeat_interval_ms": 250,
    "ring_capacity": 512,
    "ack_timeout_ms": 1500,
    "backoff_min_ms": 100,
    "backoff_max_ms": 5000,
    "fw": "shoal-node/0.1",
    "queue_capacity": 0,  # announced in the hello; 0 when the node takes no tasks
}


class NodeCore:
    def __init__(
        self,
        node_id,
        boot_id,
        hal,
        transport,
        settings=None,
        now_ms=0,
        engine=None,
        delegation=None,
    ):
        cfg = dict(DEFAULTS)
        if settings:
            cfg.update(settings)
        if delegation is not None and engine is None:
            engine = delegation.engine
        if engine is not None:
            cfg["queue_capacity"] = engine.capacity
        self.engine = engine
        self.delegation = delegation
        self.cfg = cfg
        self.node_id = node_id
        self.boot_id = boot_id
        self.hal = hal
        self.transport = transport
        self.seq = 0
        self.ring = Ring(cfg["ring_capacity"])
        self.backoff = Backoff(cfg["backoff_min_ms"], cfg["backoff_max_ms"], hal.rand)
        self.state = DOWN
        self.next_attempt_ms = now_ms  # the first probe goes out at once
        self.probe_seq = -1
        self.probe_sent_ms = 0
        self.next_telemetry_ms = now_ms
        self.last_sent_ms = now_ms  # the last first send of a message (resends excluded)
        self.last_beat_ms = now_ms  # the last heartbeat attempt, sent or refused
        self.stats = {
            "sent": 0,
            "resent": 0,
            "acked": 0,
            "reconnects": 0,
            "disconnects": 0,
            "heartbeats_skipped": 0,
        }
        # The first message of every boot is its hello; later reconnects send another.
        self.hello(now_ms)
        self.hello_due = False

    # --- messages -----------------------------------------------------------------------

    def _message(self, kind, now_ms):
        msg = {
            "v": PROTOCOL_VERSION,
            "kind": kind,
            "node_id": self.node_id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts_ms": now_ms,
        }
        self.seq += 1
        return msg

    def reserve_seq(self):
        """Take the next seq for a message someone else sends in our name (the shim's
        goodbye from our MQTT will); it is never used for anything else, so it cannot
        collide with a real message, and the relay sees a hole until the will fires."""
        seq = self.seq
        self.seq += 1
        return seq

    def _enqueue(self, msg):
        self.ring.push(msg["seq"], msg)

    def hello(self, now_ms):
        msg = self._message("hello", now_ms)
        msg["fw"] = self.cfg["fw"]
        msg["hb_interval_ms"] = self.cfg["heartbeat_interval_ms"]
        # From the settings, not hal.sample(): sampling closes the load window early.
        msg["queue_capacity"] = self.cfg["queue_capacity"]
        self._enqueue(msg)

    def telemetry(self, now_ms):
        msg = self._message("telemetry", now_ms)
        sample = self.hal.sample(now_ms)
        eng = self.engine
        if eng is None:
            msg["cpu_pct"] = round(sample["cpu_pct"], 2)
            msg["queue_depth"] = sample["queue_depth"]
            msg["queue_capacity"] = sample["queue_capacity"]
            msg["load_factor"] = round(sample["load_factor"], 4)
        else:
            cpu, depth, capacity, load, running = eng.metrics(now_ms)
            # A board measures its CPU (the main loop's busy time); the simulator models it.
            measured = sample.get("cpu_pct_measured")
            msg["cpu_pct"] = round(cpu if measured is None else measured, 2)
            msg["queue_depth"] = depth
            msg["queue_capacity"] = capacity
            msg["load_factor"] = round(load, 4)
            deleg = self.delegation
            msg["overloaded"] = deleg is not None and deleg.detector.overloaded
            msg["tasks_running"] = running
            msg["delegated_out"] = eng.stats["taken"]
            msg["delegated_in"] = eng.stats["delegated_in"]
        for key in ("free_heap", "rssi"):
            if sample.get(key) is not None:
                msg[key] = sample[key]
        msg["fw"] = self.cfg["fw"]
        self._enqueue(msg)

    def goodbye(self, now_ms, reason="shutdown"):
        """Queue a goodbye and send it now; the caller stops ticking afterwards.

        While the link is UP it goes out with the rest of the buffer, in order. Otherwise
        (a probe not answered yet) it goes straight to the transport too: the node is about
        to stop, so there is no later flush, and the relay de-duplicates a resend.
        """
        msg = self._message("goodbye", now_ms)
        msg["reason"] = reason
        self._enqueue(msg)
        if self.state == UP:
            self._flush(now_ms)
        elif self.transport.send(msg):
            self.stats["sent"] += 1

    def heartbeat(self, now_ms):
        """Number a heartbeat and hand it to the transport now; never buffered or resent."""
        msg = self._message("heartbeat", now_ms)
        self.last_beat_ms = now_ms
        if self.transport.send(msg):
            self.stats["sent"] += 1
            self.last_sent_ms = now_ms
            return True
        self.stats["heartbeats_skipped"] += 1
        return False

    # --- the clock ----------------------------------------------------------------------

    def tick(self, now_ms):
        if self.engine is not None:
            self.engine.advance(now_ms)
            if self.delegation is not None:
                self.delegation.tick(now_ms)
        if now_ms >= self.next_telemetry_ms:
            self.telemetry(now_ms)
            self.next_telemetry_ms = now_ms + self.cfg["telemetry_interval_ms"]
        if self.state == UP:
            self._flush(now_ms)
            oldest = self.ring.oldest()
            if (
                oldest is not None
                and oldest[2] >= 0
                and now_ms - oldest[2] > self.cfg["ack_timeout_ms"]
            ):
                self._link_down(now_ms)
        elif self.state == PROBING:
            if now_ms - self.probe_sent_ms > self.cfg["ack_timeout_ms"]:
                self._link_down(now_ms)
        elif now_ms >= self.next_attempt_ms:
            self._probe(now_ms)
        # After the flush or probe, so a tick that sent something new sends no heartbeat.
        interval = self.cfg["heartbeat_interval_ms"]
        if now_ms - self.last_sent_ms >= interval and now_ms - self.last_beat_ms >= interval:
            self.heartbeat(now_ms)

    def on_task_message(self, msg, now_ms):
        """A message from the delegator (a dict); False if it was ignored (or no tasks)."""
        if self.delegation is None:
            return False
        return self.delegation.on_message(msg, now_ms)

    def on_ack(self, boot_id, first, last, now_ms=0):
        """The relay has handled our messages first..last (of this boot)."""
        if boot_id != self.boot_id:
            return
        self.stats["acked"] += self.ring.ack(first, last)
        if self.state == PROBING and first <= self.probe_seq <= last:
            self.state = UP
            self.backoff.reset()
            self.stats["reconnects"] += 1
            if self.hello_due:
                self.hello(now_ms)
            self.hello_due = True  # the next reconnect announces itself again
            self._flush(now_ms)

    # --- link state ---------------------------------------------------------------------

    def _probe(self, now_ms):
        if not len(self.ring):
            self.hello(now_ms)
            self.hello_due = False
        entry = self.ring.oldest()
        self.probe_seq = entry[0]
        if self._send(entry, now_ms):
            self.state = PROBING
            self.probe_sent_ms = now_ms
        else:
            self._link_down(now_ms)

    def _flush(self, now_ms):
        ring = self.ring
        for i in range(len(ring)):
            entry = ring.entry(i)
            if entry[2] < 0 and entry[2] != ACKED and not self._send(entry, now_ms):
                self._link_down(now_ms)
                return

    def _send(self, entry, now_ms):
        if not self.transport.send(entry[1]):
            return False
        if entry[2] == RESEND:
            self.stats["resent"] += 1
        elif entry[2] == UNSENT:
            self.last_sent_ms = now_ms  # a new message is proof of life; a resend may not be
        self.stats["sent"] += 1
        entry[2] = now_ms
        return True

    def idle(self):
        """Nothing awaits an answer: the link is UP, the ring is empty (every message acked)
        and, with delegation, no offer or result waits for the delegator. A moment when the
        transport can reconnect (its will refresh) without an ack or a reply getting lost."""
        if self.state != UP or len(self.ring):
            return False
        d = self.delegation
        return d is None or (d.offer is None and not d.unacked_results())

    def link_lost(self, now_ms):
        """The transport learned too late that what it took did not leave (a gateway whose
        batch could not be sent): the link is DOWN now, rather than after an ack timeout."""
        self._link_down(now_ms)

    def _link_down(self, now_ms):
        if self.state != DOWN:
            self.stats["disconnects"] += 1
        self.state = DOWN
        # Everything sent but not acked goes again after the reconnect.
        for i in range(len(self.ring)):
            entry = self.ring.entry(i)
            if entry[2] >= 0:
                entry[2] = RESEND
        self.next_attempt_ms = now_ms + self.backoff.next_delay_ms()

    def snapshot(self):
        """Counters for status and tests."""
        out = dict(self.stats)
        out["state"] = self.state
        out["buffered"] = len(self.ring)
        out["dropped"] = self.ring.dropped
        out["seq"] = self.seq
        eng = self.engine
        if eng is not None:
            tasks = dict(eng.stats)
            local, held, delegated = eng.counts()
            tasks["queued_local"] = local
            tasks["held"] = held
            tasks["queued_delegated"] = delegated
            tasks["load_factor"] = round(eng.load_factor, 4)
            if self.delegation is not None:
                tasks["overloaded"] = self.delegation.detector.overloaded
                tasks["degraded"] = self.delegation.degraded
                tasks["unacked_results"] = self.delegation.unacked_results()
            out["tasks"] = tasks
        return out
