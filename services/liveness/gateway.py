"""Is the MQTT path up? The broker and the shim are observers for the boards behind them.

A board's messages reach the relay only through the broker and the shim, so while either
is down every board falls silent at once and that silence says nothing about the boards.
The shim's heartbeat on its bus (a ServiceBeat with ``broker_connected``, sent at once when
that changes) tells this monitor which of the two it can trust. The path is down when:

- the shim's heartbeat is missing for ``relay_silent_beats`` of the services' intervals
  (shim dead, hung, or its bus cut), or it has never been heard while boards are known
  (without boards, a cluster with no shim is not an outage);
- the shim says it is not connected to the broker (broker dead, or the link cut);
- the shim restarted (a new instance id): it lost its board table and asks every board
  for a rebirth, which takes a moment.

A beat merely late (``LATE_BEATS`` of the shim's interval, 100 ms) already holds the
boards' verdicts, without counting an outage: a board's suspect threshold (~0.85 s at
250 ms heartbeats, so ~0.6 s after the shim's last beat at worst) comes before the shim
counts as silent (``relay_silent_beats`` of the services' 500 ms beat, 1 s), and a shim
killed just after its beat had its boards suspected first (shim-restart, seed 1, on a busy
CI machine). A hold costs a real board's verdict at most the time the beat is late.

While it is down, nodes whose hello said ``via`` = "mqtt" get no suspect or dead verdict;
when it is back, their silences count from then, plus ``gateway_grace_ms`` to reconnect
(boards back off, the shim resubscribes). A real power cut during a healthy path is
judged by heartbeats as for any node.
"""

from __future__ import annotations

from shoal.protocol.messages import ServiceBeat

# A shim beat this many intervals old is late: the boards' silence may be the shim's.
LATE_BEATS = 2.5


class GatewayHealth:
    __slots__ = (
        "boards_known",
        "broker_connected",
        "grace_s",
        "heard",
        "held",
        "interval_s",
        "pub",
        "restarted",
        "silent_after_s",
        "suspended",
        "suspended_until",
        "was_down",
    )

    def __init__(self, silent_after_s: float, grace_s: float) -> None:
        self.silent_after_s = silent_after_s  # in absolute time: the shim beats faster
        self.grace_s = grace_s
        self.heard = 0.0  # monotonic time of the shim's last heartbeat (0: never)
        self.interval_s = 0.5
        self.pub = 0
        self.broker_connected = False
        self.restarted = False  # a new shim instance since the last check
        self.was_down = False
        self.suspended_until = 0.0  # boards get no verdict before this (the grace)
        self.suspended = False  # as of the last check (the monitor's, for its log lines)
        self.held = False  # the beat was late at the last check
        self.boards_known = False  # a hello via "mqtt" of a board this shim carries was seen

    def beat(self, frame: ServiceBeat, now: float) -> None:
        if self.pub and frame.pub != self.pub:
            self.restarted = True
        self.pub = frame.pub
        self.heard = now
        self.interval_s = frame.interval_ms / 1000
        self.broker_connected = bool(frame.counters.get("broker_connected", 0))

    def down_reason(self, now: float, boards_known: bool) -> str:
        """Why the path cannot be trusted now ("" if it can)."""
        if not self.heard:
            # No shim in this cluster, or its bus not joined yet while boards already speak.
            return "shim never heard" if boards_known else ""
        if now - self.heard > self.silent_after_s:
            return f"shim silent {now - self.heard:.2f}s"
        if not self.broker_connected:
            return "shim not connected to the broker"
        if self.restarted:
            return "shim restarted"
        return ""

    def late(self, now: float) -> bool:
        """Whether the shim's heartbeat is overdue (not yet silent): hold board verdicts."""
        return bool(self.heard) and now - self.heard > LATE_BEATS * self.interval_s

    def check(self, now: float, boards_known: bool) -> tuple[bool, str, bool]:
        """(boards suspended now, why, just recovered). Call once per liveness check."""
        reason = self.down_reason(now, boards_known)
        self.restarted = False
        if reason:
            self.was_down = True
            self.suspended_until = now + self.grace_s
            return True, reason, False
        recovered = self.was_down
        self.was_down = False
        return now < self.suspended_until, "reconnect grace" if recovered else "", recovered
