"""The node's side of task delegation (protocol/tasks.py): offers, assignments, results.

``Delegation(engine, link, settings, now_ms)``; ``link.send(msg_dict) -> bool`` reaches the
delegator (a DEALER in the simulator, MQTT on a board); False when the link is down now.
Messages are dicts exactly as protocol/tasks.py encodes them (tuples are lists). The caller
advances the engine, then calls ``tick(now_ms)``; ``on_message(msg, now_ms)`` for every
message from the delegator (returns False for one it ignored: malformed, not for this node,
or unknown; counted in ``bad_msgs`` / ``misrouted``; it never raises).

Rules:

- Offer: while overloaded (overload.py) and past the cool-down, with no offer in flight,
  offer the local tasks at the tail of the queue beyond leave_fill x capacity (up to
  offer_max; never a delegated-in task) as one ``offer`` with a new msg_id. They are held,
  not run, until ``taken`` (they leave: the ledger owns them) or refused (they run here).
  No answer within offer_timeout_ms: the same offer (same msg_id, same tasks) again, the
  wait doubling; after offer_tries sends, the tasks are given back and run here.
- Degraded mode: an offer the link refused or nobody answered means the delegator is
  unreachable. The node keeps running everything locally (the queue stays bounded; arrivals
  beyond it are shed, as without delegation); the wait before the next offer doubles, up
  to offer_backoff_max_ms, and each such offer carries a single task (a probe: little is
  held back from the CPU while nobody answers). The first message from the delegator ends
  it: full offers resume after the usual cool-down.
- A "taken" for an older offer (answered after its tasks were given back): the tasks it
  names that still wait here leave (the ledger owns them); any already run here ran twice
  (delivery is at least once; ``taken_late_ran`` counts them).
- Assign: a task done here recently (the result memory) gets its result again, under the
  assign's epoch if newer, with no re-execution; one queued or running here is accepted
  again (its epoch raised to the assign's if newer); otherwise it is accepted when the node
  is not overloaded, its fill is below accept_fill and the result memory has a slot for it;
  else refused ("overloaded" or "full").
- A delegated-in task done: its ``result`` goes at once and again every result_retry_ms
  until a ``result_ack`` with that task_id and epoch (whatever the status). The memory
  keeps the last result_memory results (acked ones are evicted first).
- ``renew`` every renew_interval_ms, with or without leases: [task_id, epoch] of the
  delegated-in tasks queued or running, the queue depth and capacity.
- ``completed`` (a task this node offered, done elsewhere): counted once. The node knows
  which of its tasks it handed over and are not completed yet (the outstanding set, at most
  outstanding_max ids): the first completed of one of those counts (completed_remote), any
  later one is a repeat, however long after. (A memory of the last N completed ids was not
  enough: a hot origin completes dozens a second, and a resend after a lost ack outlived
  it.) A task of this boot not in the set is a repeat, or one whose "taken" came after it
  ran here; one of an earlier boot is counted apart. Always answered ``completed_ack``.
"""

from .engine import LOCAL
from .overload import Overload

PROTOCOL_VERSION = 1

DEFAULTS = {
    "offer_max": 32,  # protocol limits.MAX_OFFER_TASKS
    "offer_timeout_ms": 500,
    "offer_tries": 3,
    "offer_backoff_max_ms": 8000,
    "accept_fill": 0.5,
    "result_retry_ms": 1000,
    "result_memory": 32,
    "outstanding_max": 256,
    "renew_interval_ms": 1000,
}

STAT_KEYS = (
    "offers",
    "offers_resent",
    "offer_timeouts",
    "refused",
    "taken_late",
    "taken_late_ran",
    "accepted",
    "assign_refused",
    "assign_repeated",
    "results_sent",
    "results_acked",
    "results_dropped",
    "completed_remote",
    "completed_other",
    "completed_repeat",
    "renews",
    "link_refused",
    "bad_msgs",
    "misrouted",
)

# A result record: [task_id, epoch, ok, output, error, duration_ms, next_send_ms, acked]
R_ID, R_EPOCH, R_OK, R_OUT, R_ERR, R_DUR, R_NEXT, R_ACKED = range(8)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _valid_task(task):
    return (
        isinstance(task, dict)
        and isinstance(task.get("task_id"), str)
        and task["task_id"] != ""
        and isinstance(task.get("kind"), str)
        and _is_int(task.get("cost_ms"))
        and task["cost_ms"] >= 1
        and _is_int(task.get("arg", 0))
        and isinstance(task.get("payload", ""), str)
    )


class Delegation:
    def __init__(self, engine, link, settings=None, now_ms=0):
        cfg = dict(DEFAULTS)
        if settings:
            for key in DEFAULTS:
                if key in settings:
                    cfg[key] = settings[key]
        self.cfg = cfg
        self.engine = engine
        self.link = link
        self.node_id = engine.node_id
        self.boot_id = engine.boot_id
        self.detector = Overload(settings)
        self.leave_fill = self.detector.leave_fill
        engine.on_sample = self._on_sample
        engine.on_done = self._on_done
        self.offer = None  # the offer in flight: [msg_id, msg, next_ms, sends]
        self.msg_id = 0
        self.settled = []  # msg_ids of the last offers answered (a repeated answer is ignored)
        self.degraded = False
        self.backoff_ms = self.detector.cooldown_ms
        self.results = []  # result records, oldest first
        self.outstanding = set()  # ids of our tasks the ledger took, not completed yet
        self.next_renew_ms = now_ms
        self.stats = engine.stats  # one set of counters for the engine and delegation
        for key in STAT_KEYS:
            self.stats[key] = 0

    # --- sending --------------------------------------------------------------------------

    def _msg(self, kind):
        return {
            "v": PROTOCOL_VERSION,
            "kind": kind,
            "node_id": self.node_id,
            "boot_id": self.boot_id,
        }

    def _send(self, msg):
        if self.link.send(msg):
            return True
        self.stats["link_refused"] += 1
        return False

    # --- the clock ------------------------------------------------------------------------

    def _on_sample(self, now_ms, load, fill):
        self.detector.sample(load, fill)

    def tick(self, now_ms):
        offer = self.offer
        if offer is not None and now_ms >= offer[2]:
            self._offer_due(now_ms)
        if self.offer is None and self.detector.may_offer(now_ms):
            self._make_offer(now_ms)
        retry = self.cfg["result_retry_ms"]
        for rec in self.results:
            if not rec[R_ACKED] and now_ms >= rec[R_NEXT]:
                rec[R_NEXT] = now_ms + retry
                self._send_result(rec)
        if now_ms >= self.next_renew_ms:
            self.next_renew_ms = now_ms + self.cfg["renew_interval_ms"]
            self._renew()

    # --- offers ---------------------------------------------------------------------------

    def _make_offer(self, now_ms):
        eng = self.engine
        n = eng.depth() - int(self.leave_fill * eng.capacity)
        if n > self.cfg["offer_max"]:
            n = self.cfg["offer_max"]
        if self.degraded and n > 1:
            n = 1
        if n <= 0:
            return
        msg_id = self.msg_id + 1
        tasks = eng.hold_tail(n, msg_id)
        if not tasks:
            return
        self.msg_id = msg_id
        msg = self._msg("offer")
        msg["msg_id"] = msg_id
        msg["tasks"] = tasks
        self.stats["offers"] += 1
        if self._send(msg):
            self.detector.offered(now_ms)
            self.offer = [msg_id, msg, now_ms + self.cfg["offer_timeout_ms"], 1]
        else:
            self._give_back(msg_id, now_ms)

    def _offer_due(self, now_ms):
        offer = self.offer
        if offer[3] >= self.cfg["offer_tries"]:
            self.stats["offer_timeouts"] += 1
            self._give_back(offer[0], now_ms)
            return
        offer[3] += 1
        offer[2] = now_ms + (self.cfg["offer_timeout_ms"] << (offer[3] - 1))
        self.stats["offers_resent"] += 1
        if not self._send(offer[1]):
            self._give_back(offer[0], now_ms)

    def _give_back(self, msg_id, now_ms):
        """Nobody took the offer: its tasks run here; the delegator is unreachable."""
        self.engine.release(msg_id, ())
        self.offer = None
        self.degraded = True
        self.detector.offered(now_ms, self.backoff_ms)
        self.backoff_ms *= 2
        if self.backoff_ms > self.cfg["offer_backoff_max_ms"]:
            self.backoff_ms = self.cfg["offer_backoff_max_ms"]

    def _delegator_up(self):
        if self.degraded:
            self.degraded = False
            det = self.detector
            self.backoff_ms = det.cooldown_ms
            det.next_offer_ms = det.last_offer_ms + det.cooldown_ms

    # --- messages from the delegator ------------------------------------------------------

    def on_message(self, msg, now_ms):
        try:
            node_id = msg.get("node_id")
            kind = msg.get("kind")
            if not isinstance(node_id, str):
                ok = False
            elif node_id != self.node_id:
                self.stats["misrouted"] += 1
                return False
            elif kind == "taken":
                ok = self._on_taken(msg)
            elif kind == "assign":
                ok = self._on_assign(msg, now_ms)
            elif kind == "result_ack":
                ok = self._on_result_ack(msg)
            elif kind == "completed":
                ok = self._on_completed(msg)
            else:
                ok = False
        except Exception:  # malformed in a way the checks missed: ignore it, never raise
            ok = False
        if not ok:
            self.stats["bad_msgs"] += 1
            return False
        self._delegator_up()
        return True

    def _on_taken(self, msg):
        msg_id = msg.get("msg_id")
        taken = msg.get("taken")
        refused = msg.get("refused", [])
        if not _is_int(msg_id) or not isinstance(taken, list) or not isinstance(refused, list):
            return False
        for task_id in taken:
            if not isinstance(task_id, str):
                return False
        offer = self.offer
        if offer is not None and offer[0] == msg_id:
            # Await the completion of exactly what leaves now (a task already completed
            # while its offer waited for this answer has left already).
            held = [e[0]["task_id"] for e in self.engine.queue if e[2] == msg_id]
            self._taken([t for t in taken if t in held])
            self.offer = None
            self.stats["refused"] += self.engine.release(msg_id, taken)[1]
            self.settled.append(msg_id)
            if len(self.settled) > 8:
                self.settled.pop(0)
            return True
        if msg_id in self.settled or msg_id < 1 or msg_id > self.msg_id:
            return True  # a repeat of an answer applied already, or not an offer of ours
        # The answer to an offer given back meanwhile: the ledger owns what it took. What
        # still waits here leaves; what ran here already ran twice (at least once).
        eng = self.engine
        for task_id in taken:
            if eng.remove_local(task_id):
                self._taken((task_id,))
                self.stats["taken_late"] += 1
            else:
                self.stats["taken_late_ran"] += 1
        return True

    def _taken(self, task_ids):
        """The ledger owns these now: their completion is awaited (once each)."""
        out = self.outstanding
        for task_id in task_ids:
            out.add(task_id)
        while len(out) > self.cfg["outstanding_max"]:
            out.pop()  # never answered (dead-lettered): forget one; rare

    def _on_assign(self, msg, now_ms):
        task = msg.get("task")
        epoch = msg.get("epoch")
        if not _valid_task(task) or not _is_int(epoch) or epoch < 1:
            return False
        task_id = task["task_id"]
        rec = self._result(task_id)
        if rec is not None:
            # Done here already: the same result again, no re-execution.
            if epoch > rec[R_EPOCH]:
                rec[R_EPOCH] = epoch
            rec[R_ACKED] = False
            rec[R_NEXT] = now_ms + self.cfg["result_retry_ms"]
            self.stats["assign_repeated"] += 1
            self._reply(task_id, epoch, True, "")
            self._send_result(rec)
            return True
        eng = self.engine
        entry = eng.find(task_id)
        if entry is not None:
            if entry[1] == LOCAL:
                self._reply(task_id, epoch, False, "own task")
                self.stats["assign_refused"] += 1
                return True
            if epoch > entry[1]:
                entry[1] = epoch
            self.stats["assign_repeated"] += 1
            self._reply(task_id, epoch, True, "")
            return True
        reason = ""
        if self.detector.overloaded:
            reason = "overloaded"
        elif (
            eng.fill() >= self.cfg["accept_fill"]
            or self._unacked() + eng.counts()[2] >= self.cfg["result_memory"]
            or not eng.enqueue(task, epoch)
        ):
            reason = "full"
        if reason:
            self.stats["assign_refused"] += 1
            self._reply(task_id, epoch, False, reason)
        else:
            self.stats["accepted"] += 1
            self._reply(task_id, epoch, True, "")
        return True

    def _reply(self, task_id, epoch, accepted, reason):
        msg = self._msg("assign_reply")
        msg["task_id"] = task_id
        msg["epoch"] = epoch
        msg["accepted"] = accepted
        msg["reason"] = reason
        self._send(msg)

    def _on_result_ack(self, msg):
        task_id = msg.get("task_id")
        epoch = msg.get("epoch")
        if not isinstance(task_id, str) or not _is_int(epoch):
            return False
        rec = self._result(task_id)
        if rec is not None and rec[R_EPOCH] == epoch and not rec[R_ACKED]:
            rec[R_ACKED] = True
            self.stats["results_acked"] += 1
        return True

    def _on_completed(self, msg):
        task_id = msg.get("task_id")
        if not isinstance(task_id, str) or task_id == "":
            return False
        if task_id in self.outstanding:
            self.outstanding.discard(task_id)
            self.stats["completed_remote"] += 1
        elif self.engine.remove_local(task_id):
            # Still held or queued here: the answer that the ledger took it was lost, and
            # it is done already. It leaves now (counted as taken) and completes here.
            self.stats["completed_remote"] += 1
        elif task_id.startswith(self.engine.prefix):
            # Counted already (a resend after a lost ack), or one this node never handed
            # over knowingly (its "taken" came too late: it ran here too).
            self.stats["completed_repeat"] += 1
        else:
            self.stats["completed_other"] += 1  # a task of an earlier boot
        ack = self._msg("completed_ack")
        ack["task_id"] = task_id
        self._send(ack)
        return True

    # --- results --------------------------------------------------------------------------

    def _on_done(self, entry, ok, output, error, duration_ms, now_ms):
        if entry[1] == LOCAL:
            return
        rec = [
            entry[0]["task_id"],
            entry[1],
            ok,
            output,
            error,
            duration_ms,
            now_ms + self.cfg["result_retry_ms"],
            False,
        ]
        results = self.results
        if len(results) >= self.cfg["result_memory"]:
            for i in range(len(results)):
                if results[i][R_ACKED]:
                    results.pop(i)
                    break
            else:
                results.pop(0)  # never acked: the delegator's lease lapses, it reassigns
                self.stats["results_dropped"] += 1
        results.append(rec)
        self._send_result(rec)

    def _send_result(self, rec):
        msg = self._msg("result")
        msg["task_id"] = rec[R_ID]
        msg["epoch"] = rec[R_EPOCH]
        msg["ok"] = rec[R_OK]
        msg["output"] = rec[R_OUT]
        msg["error"] = rec[R_ERR]
        msg["duration_ms"] = rec[R_DUR]
        self.stats["results_sent"] += 1
        self._send(msg)

    def _result(self, task_id):
        for rec in self.results:
            if rec[R_ID] == task_id:
                return rec
        return None

    def _unacked(self):
        n = 0
        for rec in self.results:
            if not rec[R_ACKED]:
                n += 1
        return n

    def _renew(self):
        eng = self.engine
        msg = self._msg("renew")
        msg["leases"] = eng.leases()
        msg["queued"] = eng.depth()
        msg["capacity"] = eng.capacity
        self.stats["renews"] += 1
        self._send(msg)

    # --- state ----------------------------------------------------------------------------

    def unacked_results(self):
        return self._unacked()
