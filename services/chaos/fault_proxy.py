"""A fault proxy on one service-to-service link: cut it, drop a share of it, or delay it.

A consumer (the liveness monitor, the delegator) reaches a service through two sockets,
and a partition has to take both, so the proxy has two halves:

- the **bus**: an XSUB connected to the service's PUB and an XPUB bound where the consumer
  subscribes; subscriptions go up, data comes down;
- the **control socket**: a ROUTER bound where the consumer asks, and upstream one DEALER
  per requester (requests up, replies down). A shoal service's ctl ROUTER takes exactly
  two frames (identity, request), so a single shared DEALER, as ``zmq.proxy`` uses, would
  give it three (its own envelope around the requester's); a DEALER per requester keeps
  the requester's frames as they were and routes each reply back to the identity that
  asked. The requesters are few (a RelayView, a MembershipView, a CtlClient's retries);
  at most ``max_clients`` DEALERs are kept, the least recently used closed first.

The consumer's config points at the proxy instead of the service (``[liveness]
relay_bus``, ``[delegator] liveness_ctl`` and so on; services/runtime/config.py). The proxy runs in
a thread of the process that owns it (the fault injector) with its own poll loop, and
forwards opaque frames: it never decodes them, so no frame can make it fail.

Faults, one at a time (a new one replaces the current one)::

    proxy.cut(10.0)        # nothing either way for 10 s (None: until heal)
    proxy.drop(0.3, 5.0)   # each message lost with probability 0.3
    proxy.delay(200, 5.0)  # each message held 200 ms
    proxy.heal()

A timed fault ends by itself on the proxy's own timer, so the link heals even if the
caller forgets. ``drop`` and ``delay`` take data, requests and replies; subscriptions obey
only ``cut``: ZeroMQ's subscriptions are reliable (a lost one would silence a topic for
good, which no network does to a TCP connection), and when a cut ends the proxy sends the
subscriptions that changed meanwhile, as ZeroMQ re-sends them when a connection comes back.
Delayed messages wait in a heap bounded by ``max_delayed``; beyond it they are dropped and
counted (``delay_overflow``). A cut also loses what was waiting in the delay heap.

Counters (``counters()``), per direction: ``forwarded_*`` and ``dropped_*`` for
``bus_down`` (data), ``bus_up`` (subscriptions), ``ctl_up`` (requests), ``ctl_down``
(replies); ``delay_overflow``, ``clients_evicted``, ``errors``.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import random
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import zmq

from shoal.services.runtime.security import Security
from shoal.services.runtime.sockets import Sockets

DIRECTIONS = ("bus_down", "bus_up", "ctl_up", "ctl_down")
DRAIN_BUDGET = 512  # messages read from one socket before the loop looks at the others
MAX_POLL_MS = 1000
BUS_HWM = 100_000  # as the services' own bus sockets

FaultKind = Literal["none", "cut", "drop", "delay"]


@dataclass(frozen=True)
class LinkFault:
    kind: FaultKind = "none"
    probability: float = 0.0
    delay_s: float = 0.0
    until: float | None = None  # monotonic; None: until healed


_HEALED = LinkFault()


class FaultProxy:
    """Usage::

    with FaultProxy(bus=(relay.bus, "tcp://127.0.0.1:7801"),
                    ctl=(relay.ctl, "tcp://127.0.0.1:7802"), name="liveness-relay") as p:
        p.cut(5.0)

    ``bus`` and ``ctl`` are (upstream, downstream): the service's endpoint and the one
    the proxy binds for the consumer. Either half may be left out.
    """

    def __init__(
        self,
        *,
        bus: tuple[str, str] | None = None,
        ctl: tuple[str, str] | None = None,
        name: str = "link",
        max_delayed: int = 10_000,
        max_clients: int = 256,
        seed: int | None = None,
        security: Security | None = None,
    ) -> None:
        if bus is None and ctl is None:
            raise ValueError("a fault proxy needs a bus or a ctl half")
        self.name = name
        # Curve on both halves: its bound sockets let in the cluster's keys (ZAP), and it
        # connects upstream with its own (a service key: what it forwards is the views'
        # reads); None: the keys registered for the endpoints (security.for_endpoint).
        self.security = security
        self.bus = bus
        self.ctl = ctl
        self.max_delayed = max_delayed
        self.max_clients = max_clients
        self._rng = random.Random(seed)
        self._fault = _HEALED
        self._lock = threading.Lock()
        # Every key exists from the start: another thread can copy the dict at any time.
        self._counters: dict[str, int] = {
            f"{w}_{d}": 0 for w in ("forwarded", "dropped") for d in DIRECTIONS
        }
        self._counters.update(delay_overflow=0, clients_evicted=0, errors=0)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> FaultProxy:
        """Bind and start forwarding; raises what binding raised (BindError)."""
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"fault proxy {self.name} did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise self._error
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- faults (any thread) ----------------------------------------------------------------

    def cut(self, duration_s: float | None = None) -> float:
        """Nothing gets through either way; returns the monotonic time it took effect."""
        return self._set(LinkFault("cut"), duration_s)

    def drop(self, probability: float, duration_s: float | None = None) -> float:
        """Each message (data, request, reply) is lost with ``probability``."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability {probability} is not in [0, 1]")
        return self._set(LinkFault("drop", probability=probability), duration_s)

    def delay(self, ms: float, duration_s: float | None = None) -> float:
        """Each message (data, request, reply) is held ``ms`` milliseconds."""
        if ms < 0:
            raise ValueError(f"delay {ms} ms is negative")
        return self._set(LinkFault("delay", delay_s=ms / 1000), duration_s)

    def heal(self) -> float:
        """Back to forwarding everything at once (what is delayed still arrives late)."""
        with self._lock:
            self._fault = _HEALED
        self._wake()
        return time.monotonic()

    def _set(self, fault: LinkFault, duration_s: float | None) -> float:
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration {duration_s} s must be > 0 (None: until healed)")
        now = time.monotonic()
        until = now + duration_s if duration_s is not None else None
        with self._lock:
            self._fault = LinkFault(fault.kind, fault.probability, fault.delay_s, until)
        self._wake()
        return now

    @property
    def fault(self) -> LinkFault:
        return self._fault

    def state(self) -> dict[str, Any]:
        f = self._fault
        left = None if f.until is None else max(0.0, round(f.until - time.monotonic(), 3))
        return {
            "fault": f.kind,
            "probability": f.probability,
            "delay_ms": f.delay_s * 1000,
            "left_s": left,
        }

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def dropped(self) -> int:
        """Messages dropped in every direction (by a fault or an overflow)."""
        c = self._counters
        return sum(c[f"dropped_{d}"] for d in DIRECTIONS)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # --- the loop (its own thread) ----------------------------------------------------------

    def _run(self) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sockets = Sockets(self._ctx, self.security, self._counters)
        try:
            try:
                self._setup()
            except BaseException as err:
                self._error = err
                return
            finally:
                self._ready.set()
            self._loop()
        finally:
            self._sockets.close_all()
            self._ctx.term()

    def _setup(self) -> None:
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self._handlers: dict[Any, Any] = {}
        self._delayed: list[tuple[float, int, str, bytes | None, list[bytes]]] = []
        self._seq = itertools.count()
        self._seen = _HEALED
        self._wanted: set[bytes] = set()  # topics the subscribers below want
        self._upstream: set[bytes] = set()  # topics subscribed upstream
        self._clients: OrderedDict[bytes, zmq.Socket[Any]] = OrderedDict()
        if self.bus is not None:
            up, down = self.bus
            # Bind before connecting: a downstream port in use fails before anything else.
            self._xpub = self._sockets.bind(zmq.XPUB, down, hwm=BUS_HWM)
            self._xsub = self._sockets.connect(zmq.XSUB, up, hwm=BUS_HWM)
            self._watch(self._xpub, self._from_subscribers)
            self._watch(self._xsub, self._from_publisher)
        if self.ctl is not None:
            self._router = self._sockets.bind(zmq.ROUTER, self.ctl[1])
            self._watch(self._router, self._from_requesters)

    def _watch(self, sock: zmq.Socket[Any], handler: Any) -> None:
        self._poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = handler

    def _loop(self) -> None:
        while not self._stopping.is_set():
            events = self._poller.poll(self._timeout_ms())
            self._transition()
            for sock, _ in events:
                handler = self._handlers.get(sock)
                try:
                    if handler is not None:
                        handler(sock)
                    else:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                except zmq.ZMQError:
                    self._counters["errors"] += 1
            self._release_due()

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        waits = [MAX_POLL_MS / 1000]
        if self._delayed:
            waits.append(self._delayed[0][0] - now)
        if self._fault.until is not None:
            waits.append(self._fault.until - now)
        return max(0, int(min(waits) * 1000) + 1)

    def _transition(self) -> None:
        """A timed fault that ran out ends here; a change of fault takes its effects."""
        now = time.monotonic()
        with self._lock:
            f = self._fault
            if f.until is not None and now >= f.until:
                self._fault = f = _HEALED
        was, self._seen = self._seen, f
        if f is not was and f.kind == "cut" and self._delayed:
            for _due, _n, direction, _who, _frames in self._delayed:
                self._counters[f"dropped_{direction}"] += 1
            self._delayed.clear()
        # Subscriptions that changed while cut (however short the cut) go up now.
        if f.kind != "cut" and self._wanted != self._upstream:
            self._resubscribe()

    def _current(self) -> LinkFault:
        f = self._fault
        if f.until is not None and time.monotonic() >= f.until:
            self._transition()
            f = self._fault
        return f

    def _cut_now(self) -> bool:
        return self._current().kind == "cut"

    def _pass(self) -> float | None:
        """None: drop this message; else how long to hold it (0: send now)."""
        f = self._current()
        if f.kind == "cut":
            return None
        if f.kind == "drop" and self._rng.random() < f.probability:
            return None
        return f.delay_s if f.kind == "delay" else 0.0

    def _forward(self, direction: str, who: bytes | None, frames: list[bytes]) -> None:
        hold = self._pass()
        if hold is None:
            self._counters[f"dropped_{direction}"] += 1
        elif hold > 0:
            if len(self._delayed) >= self.max_delayed:
                self._counters["delay_overflow"] += 1
                self._counters[f"dropped_{direction}"] += 1
                return
            due = time.monotonic() + hold
            heapq.heappush(self._delayed, (due, next(self._seq), direction, who, frames))
        else:
            self._send(direction, who, frames)

    def _release_due(self) -> None:
        self._transition()  # a cut that began meanwhile loses what was waiting
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _due, _n, direction, who, frames = heapq.heappop(self._delayed)
            self._send(direction, who, frames)

    def _send(self, direction: str, who: bytes | None, frames: list[bytes]) -> None:
        try:
            if direction == "bus_down":
                self._xpub.send_multipart(frames, zmq.NOBLOCK)
            elif direction == "ctl_up":
                assert who is not None
                self._client(who).send_multipart(frames, zmq.NOBLOCK)
            elif direction == "ctl_down":
                assert who is not None
                self._router.send_multipart([who, *frames], zmq.NOBLOCK)
            else:
                self._xsub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._counters[f"dropped_{direction}"] += 1  # the next hop's queue is full
            return
        except zmq.ZMQError:
            self._counters["errors"] += 1
            self._counters[f"dropped_{direction}"] += 1
            return
        self._counters[f"forwarded_{direction}"] += 1

    # --- the bus ----------------------------------------------------------------------------

    def _from_publisher(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._forward("bus_down", None, frames)

    def _from_subscribers(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            first = frames[0] if frames else b""
            sub = len(frames) == 1 and first[:1] in (b"\x00", b"\x01")
            if sub:
                topic = first[1:]
                if first[:1] == b"\x01":
                    self._wanted.add(topic)
                else:
                    self._wanted.discard(topic)
            if self._cut_now():
                self._counters["dropped_bus_up"] += 1
                continue
            if sub:
                if first[:1] == b"\x01":
                    self._upstream.add(first[1:])
                else:
                    self._upstream.discard(first[1:])
            # Subscriptions are never dropped or delayed but by a cut (see the module).
            self._send("bus_up", None, frames)

    def _resubscribe(self) -> None:
        """After a cut: upstream learns what the subscribers below want now."""
        if self.bus is None:
            return
        for topic in sorted(self._wanted - self._upstream):
            self._send("bus_up", None, [b"\x01" + topic])
        for topic in sorted(self._upstream - self._wanted):
            self._send("bus_up", None, [b"\x00" + topic])
        self._upstream = set(self._wanted)

    # --- the control socket -----------------------------------------------------------------

    def _from_requesters(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                self._counters["errors"] += 1
                continue
            self._forward("ctl_up", frames[0], frames[1:])

    def _client(self, who: bytes) -> zmq.Socket[Any]:
        """The DEALER that speaks upstream for requester ``who`` (most recently used last)."""
        dealer = self._clients.get(who)
        if dealer is not None:
            self._clients.move_to_end(who)
            return dealer
        while len(self._clients) >= self.max_clients:
            _old, evicted = self._clients.popitem(last=False)
            self._poller.unregister(evicted)
            self._handlers.pop(evicted, None)
            self._sockets.close(evicted)
            self._counters["clients_evicted"] += 1
        assert self.ctl is not None
        dealer = self._sockets.connect(zmq.DEALER, self.ctl[0])
        self._clients[who] = dealer
        self._watch(dealer, functools.partial(self._from_service, who=who))
        return dealer

    def _from_service(self, sock: zmq.Socket[Any], who: bytes) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._forward("ctl_down", who, frames)
