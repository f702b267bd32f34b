"""The live feed's service (tui/feed.py): the sockets and timers in the console's process.

It follows the relay (RelayView) and the monitor (MembershipView), hears the delegator's
heartbeat, and asks without blocking, on DEALER sockets, what no bus carries: the
supervisor's ``ps``, the fleet's ``status``, the OTA service's ``progress``, the
delegator's ``drained`` set and, after a
node is lost, where its tasks went (``moved``). Every answer goes to the LiveFeed, which
keeps the state and builds the snapshots.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Request
from shoal.services.liveness.view import MembershipView
from shoal.services.relay.view import RelayView
from shoal.services.runtime.config import ShoalConfig, relay_links, with_overrides
from shoal.services.runtime.security import Security
from shoal.services.runtime.service import Service, received
from shoal.services.runtime.subscriber import BusSubscriber

from . import derived

if TYPE_CHECKING:
    from .feed import LiveFeed

# How often a new ClusterState is built: the console refreshes at most this often.
BUILD_INTERVAL_S = 0.25
# The supervisor's ps, four times a second: a restart's backoff (0.1 s at first, doubling)
# is shorter than a second, and asked once a second the whole backoff passed as "running"
# with the dead process's last heartbeat, under a second old, as its heartbeat.
PS_INTERVAL_S = 0.25
COUNTS_INTERVAL_S = 1.0  # the fleet's counters, the delegator's drained set, OTA progress


class FeedLink(Service):
    name = "console"

    def __init__(self, config: ShoalConfig, feed: LiveFeed, key: str) -> None:
        # Quiet: the console owns the terminal, and a log line would tear its screen.
        # Its key: an operator's ("console", or [security] key), a reader's when read-only.
        config = with_overrides(config, "runtime", log_level="error")
        super().__init__(config, security=Security.from_config(config, key))
        self.feed = feed

    def setup(self) -> None:
        feed = self.feed
        self.relay = RelayView(self, relay_links(self.config))
        self.relay.on_change = feed._on_records
        self.relay.on_beat = feed._on_relay_beat
        self.members = MembershipView(self, self.config.liveness)
        self.members.on_event = feed._on_member_event
        self.members.on_update = feed._on_membership_frame
        self.members.on_beat = feed._on_beat
        self.delegator = BusSubscriber(
            self,
            self.config.delegator.bus,
            topics=(codec.TOPIC_SERVICE_BEAT,),
            on_frame=lambda _topic, beat: feed._on_delegator_beat(beat),
            name="delegator",
        )
        self.ps_sock = self.sockets.connect(zmq.DEALER, self.config.supervisor.ctl)
        self.on_readable(self.ps_sock, self._on_ps)
        self._ps_ids = itertools.count(1)
        # The fleet's own accounting: tasks its nodes cannot account for (lost on nodes).
        self.sim_sock = self.sockets.connect(zmq.DEALER, self.config.sim.ctl)
        self.on_readable(self.sim_sock, self._on_sim_status)
        # The delegator's drained set, whoever drained: every console shows it on the row.
        self.delegator_sock = self.sockets.connect(zmq.DEALER, self.config.delegator.ctl)
        self.on_readable(self.delegator_sock, self._on_drained)
        # The OTA service's rollout (none without boards): each board's update in its detail.
        self.ota_sock = self.sockets.connect(zmq.DEALER, self.config.ota.ctl)
        self.on_readable(self.ota_sock, self._on_ota)
        self.every(PS_INTERVAL_S, self._ask_ps)
        self.every(COUNTS_INTERVAL_S, self._ask_counts)
        self.every(BUILD_INTERVAL_S, feed._build)
        self._ask_ps()
        self._ask_counts()

    def _ask(self, sock: zmq.Socket[Any], op: str, args: dict[str, Any] | None = None) -> None:
        request = Request(id=next(self._ps_ids), op=op, args=args or {})
        with contextlib.suppress(zmq.Again):
            sock.send(codec.encode(request), zmq.NOBLOCK)

    def _ask_ps(self) -> None:
        self._ask(self.ps_sock, "ps")

    def _ask_counts(self) -> None:
        self._ask(self.sim_sock, "status")
        self._ask(self.delegator_sock, "drained")
        self._ask(self.ota_sock, "progress")

    def _on_ota(self) -> None:
        for progress in _results(self.ota_sock):
            if isinstance(progress, dict) and isinstance(progress.get("nodes"), list):
                self.feed._on_ota(progress)

    def _on_sim_status(self) -> None:
        for status in _results(self.sim_sock):
            if isinstance(status, dict) and isinstance(status.get("counters"), dict):
                self.feed._on_sim_counters(status["counters"])

    def _on_drained(self) -> None:
        """The delegator's replies: its drained set, or where a lost node's tasks are."""
        for reply in _results(self.delegator_sock):
            if not isinstance(reply, dict):
                continue
            if isinstance(reply.get("drained"), list):
                self.feed._on_drained([str(n) for n in reply["drained"]])
            elif isinstance(reply.get("tasks"), list) and isinstance(reply.get("node_id"), str):
                self.feed._on_moved(reply)

    def ask_moved(self, node_id: str, since: float) -> None:
        """Where the tasks taken from ``node_id`` since then are: asked later, in steps."""
        for n, delay in enumerate(derived.MOVED_ASK_AFTER_S):
            args = {"node_id": node_id, "since": since}
            self.after(delay, functools.partial(self._ask, self.delegator_sock, "moved", args))
            if n == len(derived.MOVED_ASK_AFTER_S) - 1:
                self.feed._moved_last_ask[node_id] = time.monotonic() + delay

    def _on_ps(self) -> None:
        for rows in _results(self.ps_sock):
            if isinstance(rows, list):
                self.feed._on_ps(rows)


def _results(sock: zmq.Socket[Any]) -> Iterator[Any]:
    """The decoded results of the ctl replies waiting on sock (errors and junk skipped)."""
    for data in received(sock):
        try:
            reply = codec.decode_reply(data)
            if reply.ok:
                yield msgspec.msgpack.decode(reply.result)
        except (codec.Rejected, msgspec.DecodeError):
            continue
