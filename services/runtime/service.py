"""The service runtime every shoal service is built on.

A service is a small class with a lifecycle: ``setup`` binds its sockets and registers
handlers and timers, ``run`` polls until SIGTERM / Ctrl-C / ``stop()``, then the runtime
stops it in order: ``on_stop`` first (stop taking new work, flush), then every socket is
closed, then the ZeroMQ context is ended.

Every service also gets, for free: a control socket (ROUTER) answering ``ping`` and
``status`` and whatever ops it adds, each request checked against its key's role
(roles.py), a heartbeat of its own on its bus, per-publisher sequence numbers, counters,
JSON-lines logs, and its keys followed as the keys directory changes (security.py).

Long on purpose: a service is one loop (sockets, timers, calls from other threads) and
what every service answers on it (ctl, heartbeats, keys); split, each part would reach
into the loop's state.

Usage::

    class Echo(Service):
        name = "echo"

        def setup(self) -> None:
            self.pull = self.sockets.bind(zmq.PULL, "tcp://127.0.0.1:9000")
            self.on_readable(self.pull, self.drain)

        def drain(self) -> None:
            ...

    Echo(load_config()).run()
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import heapq
import itertools
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Reply, ServiceBeat, ServiceStatus

from .chunks import (
    CHUNK_DATA_BYTES,
    CTL_CHUNK_BYTES,
    RESULT_MAX_BYTES,
    BlobGone,
    ChunkArgs,
    ChunkStore,
)
from .config import ConfigError, ShoalConfig
from .log import JsonLog, Summary
from .metrics import MetricsEndpoint, counter_families
from .roles import needed
from .security import CTL_SOCKETS, Gate, Security, may_role
from .sockets import BindError, Sockets

# Exit codes of a service that cannot start. The supervisor restarts neither for long:
# a port taken is tried again a few times (another cluster may be stopping), a
# configuration that cannot work is not tried again at all.
EXIT_BIND_FAILED = 2  # its endpoint is taken (EADDRINUSE)
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): a key, an endpoint or a file it names is wrong
# bind() errors that say the address itself is wrong, not that someone holds it; each
# with what it most likely means.
BAD_ADDRESS_HINTS = {
    errno.EADDRNOTAVAIL: "not an address of this machine",
    errno.ENODEV: "no such interface or address here",
    errno.EINVAL: "not an address libzmq can bind",
    errno.EPROTONOSUPPORT: "a transport libzmq does not support",
    errno.EACCES: "a privileged port, or an ipc path this user may not create",
    errno.ENOENT: "the ipc path's directory does not exist",
    errno.ENAMETOOLONG: "the ipc path is too long",
}

# How many frames one handler call drains before the loop looks at other sockets and
# timers: large enough to batch, small enough to stay fair.
DRAIN_BUDGET = 512
# Longest the loop sleeps when no timer is due.
MAX_POLL_MS = 1000

CtlHandler = Callable[[dict[str, Any]], Any]


def received(sock: zmq.Socket[Any]) -> Iterator[bytes]:
    """The frames waiting on sock, at most DRAIN_BUDGET of them, without blocking."""
    for _ in range(DRAIN_BUDGET):
        try:
            yield sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def received_multipart(sock: zmq.Socket[Any]) -> Iterator[list[bytes]]:
    """The multipart messages waiting on sock, at most DRAIN_BUDGET, without blocking."""
    for _ in range(DRAIN_BUDGET):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def received_frames(sock: zmq.Socket[Any]) -> Iterator[list[zmq.Frame]]:
    """received_multipart's messages as zmq.Frames (copy=False): what a frame's ZMTP
    properties (its sender's User-Id) are read from."""
    for _ in range(DRAIN_BUDGET):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return


class _Timer:
    __slots__ = ("callback", "cancelled", "due", "interval")

    def __init__(self, due: float, interval: float | None, callback: Callable[[], None]) -> None:
        self.due = due
        self.interval = interval
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class CtlError(Exception):
    """Raised by a ctl handler: the message goes back to the caller as the error."""


A = TypeVar("A")


def parse_args(args: dict[str, Any], type_: type[A]) -> A:
    """A request's args as a typed Struct; a wrong or missing arg is a CtlError naming it."""
    try:
        return msgspec.convert(args, type_)
    except msgspec.ValidationError as err:
        raise CtlError(f"bad arguments: {err}") from None


class Service:
    """Base class of every shoal service."""

    name: ClassVar[str] = "service"
    # The client key it connects with (keys.py); None: its name.
    key_name: ClassVar[str | None] = None

    def __init__(
        self,
        config: ShoalConfig,
        *,
        ctx: zmq.Context[Any] | None = None,
        security: Security | None = None,
    ) -> None:
        self.config = config
        self.ctx: zmq.Context[Any] = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.log = JsonLog(self.name, config.runtime.log_level)
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.rejects = Summary(self.log, "rejected")
        # Its own key (its name) and the cluster's server key; who may ask what (gate).
        self.security = security or Security.from_config(config, self.key_name or self.name)
        self.sockets = Sockets(self.ctx, self.security, self.counters, self.log)
        self.gate = Gate(self.security, self.counters, self.rejects)
        self.errors = Summary(self.log, "handler_errors")
        self.pub_id = random.SystemRandom().randrange(1, 2**32)
        self.endpoints: dict[str, str] = {}
        self.started_monotonic = time.monotonic()
        self.bus: zmq.Socket[Any] | None = None  # set by services that publish
        self.heartbeat_ms = config.runtime.heartbeat_interval_ms  # a service may beat faster
        self.ctl_ops: dict[str, CtlHandler] = {
            "ping": self._op_ping,
            "status": self._op_status,
            "chunk": self._op_chunk,
        }
        self._chunks = ChunkStore()
        self.metrics = MetricsEndpoint()  # histograms a subclass adds live in its registry
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._loop_thread: threading.Thread | None = None
        self.loop_lag_ms = 0.0  # how late the last timer ran: the observer's own health
        self.loop_lag_max_ms = 0.0  # the worst since the last heartbeat
        self._pseq: dict[bytes, int] = {}  # per topic: a subscriber of one topic sees no holes
        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_ids = itertools.count()
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._poller = zmq.Poller()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # --- to override ---------------------------------------------------------------------

    def setup(self) -> None:
        """Bind sockets, register handlers and timers."""

    def on_stop(self) -> None:
        """First step of the ordered stop: stop taking work, flush what is in flight."""

    def status_counters(self) -> dict[str, int]:
        return dict(self.counters)

    def extra_metrics(self) -> list[Any]:
        """Prometheus families beyond the status counters (per-node gauges); on the loop."""
        return []

    def on_keys_changed(self) -> None:
        """The allowlist changed (a key added, revoked, or its role or nodes changed): drop
        what a key that may no longer hold it holds (a service's node routes)."""

    # --- building blocks ----------------------------------------------------------------

    def bind(
        self, role: str, kind: int, endpoint: str, *, admit: str = CTL_SOCKETS, **options: Any
    ) -> zmq.Socket[Any]:
        """A socket bound, its endpoint listed under role. ``admit``: the roles of the keys
        it lets in (security.ADMITS): control sockets and buses by default."""
        sock = self.sockets.bind(kind, endpoint, admit=admit, **options)
        self.gate.attach(self.security)
        self.endpoints[role] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def on_readable(self, sock: zmq.Socket[Any], handler: Callable[[], None]) -> None:
        self._handlers[sock] = handler
        self._poller.register(sock, zmq.POLLIN)

    def watch_fd(self, fd: int, handler: Callable[[], None], *, writable: bool = False) -> None:
        """Run handler when a plain file descriptor (a socket another library owns, e.g. an
        MQTT client's) is readable, or also writable while ``writable``; call again to change
        ``writable``. The handler is not told which: it reads and writes what it can."""
        self._handlers[fd] = handler
        self._poller.register(fd, zmq.POLLIN | (zmq.POLLOUT if writable else 0))

    def unwatch(self, sock_or_fd: zmq.Socket[Any] | int) -> None:
        """Stop polling a socket or file descriptor (before it is closed)."""
        if self._handlers.pop(sock_or_fd, None) is not None:
            self._poller.unregister(sock_or_fd)

    def every(self, interval_s: float, callback: Callable[[], None]) -> _Timer:
        return self._add_timer(interval_s, interval_s, callback)

    def after(self, delay_s: float, callback: Callable[[], None]) -> _Timer:
        return self._add_timer(delay_s, None, callback)

    def _add_timer(
        self, delay_s: float, interval: float | None, callback: Callable[[], None]
    ) -> _Timer:
        timer = _Timer(time.monotonic() + delay_s, interval, callback)
        heapq.heappush(self._timers, (timer.due, next(self._timer_ids), timer))
        return timer

    def last_pseq(self, topic: bytes) -> int:
        """The sequence number of the last frame published on topic (0: none yet)."""
        return self._pseq.get(topic, 0)

    def publish(self, topic: bytes, frame_type: type[Any], **fields: Any) -> None:
        """Publish one bus frame, numbered with this publisher's id and the topic's next seq."""
        assert self.bus is not None, "publish needs self.bus"
        pseq = self._pseq[topic] = self._pseq.get(topic, 0) + 1
        frame = frame_type(pub=self.pub_id, pseq=pseq, **fields)
        self.bus.send(codec.encode_bus(topic, frame))

    def serve_ctl(self, endpoint: str) -> None:
        self.ctl = self.bind("ctl", zmq.ROUTER, endpoint)
        self.on_readable(self.ctl, self._drain_ctl)

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    # --- lifecycle ----------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> None:
        """Set up, serve until stopped, then shut down in order."""
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        if install_signals:
            self._install_signals()
        try:
            self.setup()
            if self.bus is not None:
                self.every(self.heartbeat_ms / 1000, self._beat)
            self.every(self.config.runtime.log_summary_interval_s, self._flush_summaries)
            if self.gate.ring is not None:
                self.every(self.security.check_interval_s, self._check_keys)
            # What exists now lives as long as the service: keep the collector off it.
            gc.freeze()
            self._loop_thread = threading.current_thread()
            self._serve_metrics()
            self.log.info("started", pid=os.getpid(), pub=self.pub_id, endpoints=self.endpoints)
            self._ready.set()
            self._loop()
        finally:
            self._shutdown()

    def _serve_metrics(self) -> None:
        listen = getattr(self.config.metrics, self.name, "")
        if not listen:
            return
        try:
            self.metrics.serve(listen, self._metric_families, self.in_loop)
        except OSError as err:
            # Metrics are for watching the service, not for its work: it runs without them.
            self.counters["metrics_bind_failed"] += 1
            self.log.error("metrics_bind_failed", listen=listen, error=err.strerror or str(err))
            return
        self.endpoints["metrics"] = f"http://{self.metrics.address}/metrics"

    def _metric_families(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("shoal_service_up", "1 while the service runs", labels=["service"])
        up.add_metric([self.name], 1)
        uptime = GaugeMetricFamily(
            "shoal_service_uptime_seconds", "since start", labels=["service"]
        )
        uptime.add_metric([self.name], self.uptime_s())
        lag = GaugeMetricFamily(
            "shoal_loop_lag_ms", "how late the last timer ran", labels=["service"]
        )
        lag.add_metric([self.name], self.loop_lag_ms)
        return [
            up,
            uptime,
            lag,
            *counter_families(self.name, self.status_counters()),
            *self.extra_metrics(),
        ]

    def in_loop(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """fn's value, computed on the service's loop (safe from any thread): the loop's
        state is never read while it changes. TimeoutError when the loop is that busy."""
        if threading.current_thread() is self._loop_thread or self._loop_thread is None:
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except Exception as err:
                box["error"] = err
            finally:
                done.set()

        self._calls.append(call)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"c")
        if not done.wait(timeout_s):
            raise TimeoutError(f"{self.name}: the loop did not answer within {timeout_s}s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _flush_summaries(self) -> None:
        self.rejects.flush()
        self.errors.flush()

    def _check_keys(self) -> None:
        """A changed allowlist takes effect now: requests are checked against it from the
        next one on; keys that lost something lose it here; and if a key left (or was
        narrowed) the buses cut their subscribers, which must then pass ZAP again."""
        changed, narrowed = self.gate.changed()
        if not changed:
            return
        self.counters["keys_reloaded"] += 1
        self.on_keys_changed()
        cut = self.sockets.cut_subscribers() if narrowed else 0
        self.log.info(
            "keys_changed", keys=len(self.gate.ring.keys) if self.gate.ring else 0, buses_cut=cut
        )

    def stop(self) -> None:
        """Ask the loop to stop; safe from any thread and from a signal handler."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def handler(signum: int, _frame: Any) -> None:
            if self._stopping.is_set() and signum == signal.SIGINT:
                os._exit(130)  # a second Ctrl-C kills at once
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _loop(self) -> None:
        wake_fd = self._wake_r.fileno()
        while not self._stopping.is_set():
            timeout_ms = MAX_POLL_MS
            if self._timers:
                timeout_ms = max(
                    0, min(MAX_POLL_MS, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
                )
            for sock, _ in self._poller.poll(timeout_ms):
                if sock == wake_fd:
                    self._drain_wake()
                    continue
                handler = self._handlers.get(sock)
                if handler is not None:  # None: an earlier handler of this pass unwatched it
                    self._guarded(handler)
            self._run_due_timers()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            due, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.loop_lag_ms = (now - due) * 1000
            if self.loop_lag_ms > self.loop_lag_max_ms:
                self.loop_lag_max_ms = self.loop_lag_ms
            self._guarded(timer.callback)
            if timer.interval is not None and not timer.cancelled:
                # Schedule from the due time to keep the cadence, but never into the past.
                timer.due = max(due + timer.interval, now)
                heapq.heappush(self._timers, (timer.due, next(self._timer_ids), timer))

    def _guarded(self, fn: Callable[[], None]) -> None:
        """A bug in one handler is logged and counted; the service keeps serving."""
        try:
            fn()
        except Exception as err:
            self.handler_error(getattr(fn, "__name__", repr(fn)), err)

    def handler_error(self, where: str, err: BaseException) -> None:
        """Count an unexpected error; log the first of its kind per interval at once, and
        the rest as a summary (a stream of bad frames must not become a stream of lines)."""
        self.counters["handler_errors"] += 1
        key = f"{where}: {type(err).__name__}"
        if self.errors.add(key, repr(err)):
            self.log.error("handler_error", handler=where, error=repr(err))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._calls:
            self._calls.popleft()()  # each call catches its own errors

    def _shutdown(self) -> None:
        try:
            if self._ready.is_set():  # a setup that failed half way has nothing to flush
                self.on_stop()
        except Exception as err:  # the rest of the stop must happen all the same
            self.log.error("stop_error", error=repr(err))
        self._flush_summaries()
        self.metrics.close()
        self.sockets.close_all()
        if self._own_ctx:
            self.ctx.term()
        self._wake_r.close()
        self._wake_w.close()
        self.log.info("stopped", uptime_s=round(self.uptime_s(), 3))

    # --- heartbeat and control ----------------------------------------------------------

    def beat_now(self) -> None:
        """Publish the heartbeat now, not at the next tick: a state its subscribers act
        on has changed (the shim's broker connection)."""
        if self.bus is not None:
            self._beat()

    def _beat(self) -> None:
        self.publish(
            codec.TOPIC_SERVICE_BEAT,
            ServiceBeat,
            service=self.name,
            pid=os.getpid(),
            uptime_s=round(self.uptime_s(), 3),
            interval_ms=self.heartbeat_ms,
            counters=self.status_counters(),
            loop_lag_ms=round(self.loop_lag_max_ms, 1),
            pseqs={
                topic.decode(): n
                for topic, n in self._pseq.items()
                if topic != codec.TOPIC_SERVICE_BEAT
            },
        )
        self.loop_lag_max_ms = 0.0

    def _drain_ctl(self) -> None:
        for frames in received_frames(self.ctl):
            try:
                self._answer(frames)
            except Exception as err:  # one request's failure never costs the others
                self.handler_error("ctl", err)

    def _answer(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            self.counters["ctl_malformed"] += 1
            self.rejects.add("ctl_malformed", f"{len(frames)} frames")
            if len(frames) > 2:
                error = "malformed: expected one frame"
                self._reply(frames[0].bytes, Reply(id=0, ok=False, error=error))
            return
        identity, frame = frames[0].bytes, frames[1]
        key = self.gate.key(frame)  # None: its key left the allowlist after the handshake
        try:
            req = codec.decode_request(frame.bytes)
        except codec.Rejected as rej:
            if key is None:
                return
            self.counters[f"ctl_reject_{rej.reason}"] += 1
            self.rejects.add(f"ctl_{rej.reason}", rej.detail)
            self._reply(identity, Reply(id=0, ok=False, error=f"{rej.reason}: {rej.detail}"))
            return
        if key is None:
            error = "refused: this key is revoked"
            self._reply(identity, Reply(id=req.id, ok=False, error=error))
            return
        handler = self.ctl_ops.get(req.op)
        if handler is None:
            self.counters["ctl_unknown_op"] += 1
            known = ", ".join(sorted(self.ctl_ops))
            self._reply(
                identity,
                Reply(id=req.id, ok=False, error=f"unknown op '{req.op}' (known: {known})"),
            )
            return
        if not may_role(key, self.name, req.op):
            self.gate.refuse("role", f"{key.name} ({key.role}): {self.name} {req.op}")
            need = needed(self.name, req.op)
            error = f"refused: '{req.op}' needs {need} key, not {key.role} key '{key.name}'"
            self._reply(identity, Reply(id=req.id, ok=False, error=error))
            return
        self.counters["ctl_requests"] += 1
        try:
            result = codec.encode(handler(req.args))
        except CtlError as err:
            self._reply(identity, Reply(id=req.id, ok=False, error=str(err)))
            return
        except Exception as err:
            self.handler_error(f"ctl {req.op}", err)
            self._reply(identity, Reply(id=req.id, ok=False, error=f"internal error: {err!r}"))
            return
        self._reply_result(identity, req.id, result)

    def _reply_result(self, identity: bytes, req_id: int, result: bytes) -> None:
        if len(result) <= CTL_CHUNK_BYTES:
            self._reply(identity, Reply(id=req_id, ok=True, result=msgspec.Raw(result)))
            return
        if len(result) > RESULT_MAX_BYTES:
            self.counters["ctl_result_too_large"] += 1
            error = f"result of {len(result)} bytes > {RESULT_MAX_BYTES}: ask for less"
            self._reply(identity, Reply(id=req_id, ok=False, error=error))
            return
        blob = self._chunks.put(result)
        self.counters["ctl_chunked"] += 1
        first = msgspec.Raw(codec.encode(result[:CHUNK_DATA_BYTES]))
        self._reply(identity, Reply(id=req_id, ok=True, result=first, size=len(result), blob=blob))

    def _op_chunk(self, args: dict[str, Any]) -> bytes:
        """The bytes of a chunked result from ``offset`` on, at most CHUNK_DATA_BYTES."""
        want = parse_args(args, ChunkArgs)
        try:
            return self._chunks.chunk(want.blob, want.offset)
        except BlobGone as err:
            raise CtlError(str(err)) from None

    def _reply(self, identity: bytes, reply: Reply) -> None:
        try:
            self.ctl.send_multipart([identity, codec.encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            self.counters["ctl_reply_dropped"] += 1

    def _op_ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"service": self.name, "pid": os.getpid(), "pub": self.pub_id}

    def _op_status(self, _args: dict[str, Any]) -> ServiceStatus:
        return ServiceStatus(
            service=self.name,
            pid=os.getpid(),
            pub=self.pub_id,
            uptime_s=round(self.uptime_s(), 3),
            counters=self.status_counters(),
            endpoints=self.endpoints,
        )


def main_for(service_cls: type[Service], config: ShoalConfig, **kwargs: Any) -> None:
    """Run one service as this process, with signals, until it is stopped (kwargs go to
    its constructor). One that cannot start logs one line saying why and exits EXIT_CONFIG
    or EXIT_BIND_FAILED."""
    exit_with_parent()
    log = JsonLog(service_cls.name, config.runtime.log_level)
    try:
        service = service_cls(
            config, **kwargs
        )  # may raise ConfigError too (a ledger it cannot open)
        log = service.log
        service.run()
    except ConfigError as err:
        log.error("config_error", error=str(err))
        sys.exit(EXIT_CONFIG)
    except BindError as err:
        hint = BAD_ADDRESS_HINTS.get(err.errno)
        if hint is not None:
            log.error("config_error", error=str(err), hint=hint)
            sys.exit(EXIT_CONFIG)
        # A clear line, not a traceback: the usual cause is another cluster running.
        log.error("bind_failed", error=str(err), hint="another shoal running? see `shoal config`")
        sys.exit(EXIT_BIND_FAILED)


def start_error_of(line: bytes) -> str | None:
    """What went wrong, if line is the one a service that cannot start writes (main_for's
    ``config_error`` or ``bind_failed`` record, or the CLI's ``error: ...``); else None.
    The supervisor keeps it as the reason it gave up on the service."""
    if line.startswith(b"error: "):
        return line[len(b"error: ") :].decode("utf-8", "replace").strip()
    if b'"config_error"' not in line and b'"bind_failed"' not in line:
        return None
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(record, dict) or record.get("event") not in ("config_error", "bind_failed"):
        return None
    hint = record.get("hint")
    return f"{record.get('error')}" + (f" ({hint})" if hint else "")


def exit_with_parent() -> None:
    """Under a supervisor, die with it (Linux): no orphan survives a SIGKILLed supervisor."""
    if os.environ.get("SHOAL_SUPERVISED") != "1":
        return
    stop_with_parent(os.environ.get("SHOAL_SUPERVISOR_PID"))


def stop_with_parent(parent_pid: str | None) -> None:
    """SIGTERM this process when its parent dies (Linux prctl), and exit now if parent_pid
    (the parent it was started by) has died already."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if parent_pid and os.getppid() != int(parent_pid):
        os._exit(0)  # the parent died before prctl took effect
