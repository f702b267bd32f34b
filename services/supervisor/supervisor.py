"""A small process manager for a local shoal cluster: start, watch, restart, stop in order.

Why our own rather than supervisord, honcho or circus: we need restart-with-backoff, one
merged and prefixed output stream, an ordered stop, and a ZeroMQ control socket the fault
injector can drive (``ps``, ``signal``, ``restart``, ``stop``).

Long on purpose: one asyncio state machine per child (spawn, watch, back off, stop) and
the ctl that drives them share the children's state.

Each child runs in its own session (so a terminal Ctrl-C reaches only the supervisor, which
then stops the children in reverse order) with ``SHOAL_SUPERVISED=1`` and
``SHOAL_SUPERVISOR_PID`` set, which the service runtime uses to die with its parent.

Usage::

    specs = [
        ProcessSpec("relay", [sys.executable, "-m", "shoal.services.cli", "run", "relay"]),
        ProcessSpec("sim", [sys.executable, "-m", "shoal.services.cli", "run", "sim"]),
    ]
    run_supervisor(specs, load_config().supervisor)   # blocks until Ctrl-C / SIGTERM

    # from another process (the fault injector, the CLI):
    supervisor_request("tcp://127.0.0.1:7790", "signal", {"name": "relay", "signal": "KILL"})
    supervisor_request("tcp://127.0.0.1:7790", "ps")
    # [{"name": "relay", "pid": 4242, "state": "running", "restarts": 1, ...}, ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import msgspec
import zmq
import zmq.asyncio

from shoal.protocol import codec
from shoal.protocol.messages import Reply, ServiceStatus
from shoal.services.runtime import security as sec
from shoal.services.runtime.config import SupervisorConfig
from shoal.services.runtime.log import JsonLog, humanize, isatty
from shoal.services.runtime.roles import needed
from shoal.services.runtime.security import Gate, Security, may_role
from shoal.services.runtime.service import EXIT_BIND_FAILED, EXIT_CONFIG, start_error_of
from shoal.services.runtime.sockets import Sockets

# A line longer than this is written out in pieces: one runaway line must neither block
# the reader nor grow a buffer without bound.
MAX_LINE_BYTES = 64 * 1024
# After a child exits, how long to wait for the rest of its output (a crash traceback)
# before we log the exit and close its pipes. Only a grandchild holding the pipe open
# makes us wait this long.
DRAIN_AFTER_EXIT_S = 0.2
PREFIX_WIDTH = 10
# A child that exits EXIT_BIND_FAILED this many times in a row is not started again: a
# port held by another cluster stays held. EXIT_CONFIG is never retried.
BIND_FAILED_TRIES = 3
REASON_CHARS = 300  # of a child's last error line, kept as the reason it failed

SIGNALS = {
    "KILL": signal.SIGKILL,
    "TERM": signal.SIGTERM,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
}


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised program. Start order is list order; stop order is the reverse."""

    name: str  # also the output prefix
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ
    restart: bool = True


class CtlError(Exception):
    """A refused control request: the message is sent back as Reply.error."""


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Splits a child's stdout/stderr into lines and reports its exit.

    We use a protocol rather than Process.wait(): on Python 3.11, wait() only returns once
    the pipes are closed too, so a grandchild holding stdout would hide a crash.
    """

    def __init__(self, emit: Callable[[bytes], None], loop: asyncio.AbstractEventLoop) -> None:
        self.emit = emit
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buffers: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self._buffers.setdefault(fd, bytearray())
        buf += data
        if b"\n" in data:
            *lines, rest = bytes(buf).split(b"\n")
            for line in lines:
                self.emit(line)
            buf[:] = rest
        while len(buf) > MAX_LINE_BYTES:
            self.emit(bytes(buf[:MAX_LINE_BYTES]))
            del buf[:MAX_LINE_BYTES]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        buf = self._buffers.get(fd)
        if buf:
            self.emit(bytes(buf))  # a last line without its newline
            buf.clear()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Child:
    """Run-time state of one ProcessSpec."""

    def __init__(self, spec: ProcessSpec, backoff_s: float) -> None:
        self.spec = spec
        self.state = "stopped"
        self.transport: asyncio.SubprocessTransport | None = None
        self.protocol: _ChildProtocol | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.last_exit: int | None = None
        self.backoff_s = backoff_s
        self.restart_now = False  # set by the "restart" op: no backoff for this one
        self.bind_failures = 0  # EXIT_BIND_FAILED exits in a row
        self.last_error: str | None = None  # its last config_error / bind_failed / error: line
        self.reason: str | None = None  # why it is "failed" (not started again)
        self.wake = asyncio.Event()  # cuts a backoff sleep short (restart, stop)
        self.lock = asyncio.Lock()  # held while spawning, so stop never misses a new child
        self.keeper: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return self.transport is not None and self.transport.get_returncode() is None


class Supervisor:
    """Starts the specs in order, restarts what dies, serves ctl, stops in reverse order."""

    def __init__(
        self,
        specs: list[ProcessSpec],
        config: SupervisorConfig,
        *,
        out: TextIO | None = None,
        log: JsonLog | None = None,
        security: Security | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate process names in {names}")
        self.specs = list(specs)
        self.config = config
        self.out = out if out is not None else sys.stdout
        self.log = log or JsonLog("supervisor")
        # Its ctl is a Curve server like every service's: signal, restart and stop need
        # an operator's key (roles.py), ps a reader's.
        self.security = security or sec.for_endpoint(config.ctl)
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.gate = Gate(self.security, self.counters)
        self._children: list[_Child] = []
        self._by_name: dict[str, _Child] = {}
        self._stopping = False
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        # JSON lines for pipes and files (machines read them), plain text for a person.
        self._pretty = isatty(self.out) and os.environ.get("SHOAL_LOG_FORMAT") != "json"
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self._op_ping,
            "status": self._op_status,
            "ps": self._op_ps,
            "signal": self._op_signal,
            "restart": self._op_restart,
            "stop": self._op_stop,
        }

    # --- public ---------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> int:
        """Start every process, serve until a stop is requested, stop them all; returns 0."""
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._children = [_Child(spec, self.config.restart_backoff_min_s) for spec in self.specs]
        self._by_name = {child.spec.name: child for child in self._children}
        # Publish the loop before reading the flag: a request_stop racing with us is seen
        # by one side or the other (see request_stop).
        self._loop = loop
        if self._stop_requested.is_set():
            self._stop_event.set()

        ctx = zmq.asyncio.Context()
        sockets = Sockets(ctx, self.security, self.counters, self.log)
        serve: asyncio.Task[None] | None = None
        try:
            # Bind first: a busy ctl port fails the start before any child is spawned.
            ctl = cast(zmq.asyncio.Socket, sockets.bind(zmq.ROUTER, self.config.ctl))
            self.gate.attach(self.security)
            if install_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, self._on_signal, signum)
            serve = asyncio.create_task(self._serve_ctl(ctl))
            self.log.info(
                "started", pid=os.getpid(), ctl=self.config.ctl, names=list(self._by_name)
            )
            for child in self._children:  # in order: each is spawned before the next
                if self._stopping or self._stop_event.is_set():
                    break
                async with child.lock:
                    await self._spawn(child)
                child.keeper = asyncio.create_task(self._keep(child))
            await self._stop_event.wait()
            await self._stop_all()
        finally:
            if install_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
            if serve is not None:
                serve.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serve
            self._kill_all()  # only does anything if we got here by an exception
            for task in [*self._tasks, *(c.keeper for c in self._children if c.keeper)]:
                task.cancel()
            sockets.close_all()
            ctx.term()
            self._loop = None
        self.log.info("stopped")
        return 0

    def request_stop(self) -> None:
        """Ask run() to stop everything; safe from any thread, and before run() starts."""
        self._stop_requested.set()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed: nothing to stop
                loop.call_soon_threadsafe(self._begin_stop)

    # --- process lifecycle --------------------------------------------------------------

    async def _spawn(self, child: _Child) -> bool:
        """Start one child; on failure (no such program...) log it and leave it dead."""
        loop = asyncio.get_running_loop()
        spec = child.spec
        # PYTHONUNBUFFERED: a Python child writing to a pipe would otherwise hold its
        # output back until exit, which defeats a live merged log.
        env = {"PYTHONUNBUFFERED": "1", **os.environ, **spec.env}
        env["SHOAL_SUPERVISED"] = "1"
        env["SHOAL_SUPERVISOR_PID"] = str(os.getpid())
        protocol = _ChildProtocol(lambda line: self._output(child, line), loop)
        child.started_at = time.monotonic()
        child.last_error = None
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: protocol,
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # Ctrl-C goes to us only; killpg reaches its children
            )
        except (OSError, ValueError) as err:
            child.transport = child.protocol = None
            child.pid = None
            child.state = "backoff"
            self.log.error("spawn_failed", name=spec.name, argv=spec.argv, error=str(err))
            return False
        child.transport, child.protocol = transport, protocol
        child.pid = transport.get_pid()
        child.state = "running"
        self.log.info("spawned", name=spec.name, pid=child.pid, restarts=child.restarts)
        return True

    async def _keep(self, child: _Child) -> None:
        """Watch one child for its whole life: wait for exit, back off, start it again."""
        while True:
            if child.protocol is not None:
                await child.protocol.exited
                await self._reap(child)
            if self._stopping:
                return
            reason = None if child.restart_now else self._fatal(child)
            delay = None if reason is not None else self._next_delay(child)
            self.log.warning(
                "exited",
                name=child.spec.name,
                pid=child.pid,
                returncode=child.last_exit,
                delay=delay,
                restarts=child.restarts,
            )
            child.state = "stopped" if delay is None else "backoff"
            if reason is not None:
                self._fail(child, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wake.wait(), delay)
            child.wake.clear()
            async with child.lock:
                if self._stopping:
                    return
                child.restart_now = False
                child.reason = None
                child.restarts += 1
                await self._spawn(child)

    def _fatal(self, child: _Child) -> str | None:
        """Why a child that has just exited must not be started again, or None."""
        code = child.last_exit
        child.bind_failures = child.bind_failures + 1 if code == EXIT_BIND_FAILED else 0
        detail = child.last_error or "see its log"
        if code == EXIT_CONFIG:
            return f"configuration error (exit {code}): {detail}"
        if child.bind_failures >= BIND_FAILED_TRIES:
            return f"could not bind {child.bind_failures} times in a row (exit {code}): {detail}"
        return None

    def _fail(self, child: _Child, reason: str) -> None:
        """Leave it down, and say so once: restarting would only fail the same way."""
        child.state = "failed"
        child.reason = reason
        self.log.error(
            "failed",
            name=child.spec.name,
            returncode=child.last_exit,
            reason=reason,
            hint="not restarted: fix it, then restart it (ctl op restart) or start again",
        )

    async def _reap(self, child: _Child) -> None:
        """Collect the exit of a child that has just died, and what is left of its output."""
        transport, protocol = child.transport, child.protocol
        assert transport is not None and protocol is not None
        await asyncio.wait({protocol.closed}, timeout=DRAIN_AFTER_EXIT_S)
        child.last_exit = transport.get_returncode()
        # Anything the child left behind in its process group (it was the session leader)
        # goes with it; a leftover grandchild would hold the service's ports.
        if child.pid is not None:
            _signal_group(child.pid, signal.SIGKILL)
        transport.close()
        child.transport = child.protocol = None

    def _next_delay(self, child: _Child) -> float | None:
        """Seconds before the next start; None: do not restart."""
        if child.restart_now:
            return 0.0
        if not child.spec.restart:
            return None
        cfg = self.config
        if time.monotonic() - child.started_at >= cfg.stable_after_s:
            child.backoff_s = cfg.restart_backoff_min_s  # it had recovered: forgive the past
        delay = child.backoff_s
        child.backoff_s = min(delay * 2, cfg.restart_backoff_max_s)
        return delay

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM the child's group, wait up to stop_timeout_s, then SIGKILL it."""
        transport, protocol, pid = child.transport, child.protocol, child.pid
        if transport is None or protocol is None or pid is None or not child.alive():
            return
        _signal_group(pid, signal.SIGTERM)
        _signal_group(pid, signal.SIGCONT)  # a paused child cannot act on SIGTERM
        done, _ = await asyncio.wait({protocol.exited}, timeout=self.config.stop_timeout_s)
        if not done:
            self.log.warning(
                "stop_timeout", name=child.spec.name, pid=pid, timeout_s=self.config.stop_timeout_s
            )
            _signal_group(pid, signal.SIGKILL)
            await protocol.exited

    def _begin_stop(self) -> None:
        self._stop_requested.set()
        if self._stop_event is not None:
            self._stop_event.set()

    async def _stop_all(self) -> None:
        self._stopping = True
        self.log.info("stopping")
        for child in self._children:
            child.wake.set()  # keepers asleep in a backoff return at once
        for child in reversed(self._children):
            async with child.lock:  # a spawn in flight completes, so we stop what it started
                pass
            await self._terminate(child)
            if child.keeper is not None:
                # The keeper reaps the exit (output drained, group swept) and returns.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.keeper, DRAIN_AFTER_EXIT_S + 1.0)
            if child.transport is not None:  # never had a keeper: reap here
                await self._reap(child)
            if child.state in ("running", "paused"):  # the keeper leaves these as they were
                self.log.info(
                    "child_stopped", name=child.spec.name, pid=child.pid, returncode=child.last_exit
                )
            child.state = "stopped"

    def _kill_all(self) -> None:
        for child in self._children:
            if child.pid is not None and child.alive():
                _signal_group(child.pid, signal.SIGKILL)

    def _on_signal(self, signum: int) -> None:
        if self._stopping and signum == signal.SIGINT:
            self.log.warning("kill_all", signal="SIGINT")  # a second Ctrl-C: no more waiting
            self._kill_all()
            return
        self.log.info("stop_requested", signal=signal.Signals(signum).name)
        self._begin_stop()

    def _output(self, child: _Child, line: bytes) -> None:
        error = start_error_of(line)
        if error is not None:
            child.last_error = error[:REASON_CHARS]
        self._write_line(child.spec.name, line)

    def _write_line(self, name: str, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if self._pretty:
            text = humanize(text)
        try:
            self.out.write(f"{name:<{PREFIX_WIDTH}}| {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop the supervisor from supervising

    # --- control socket -----------------------------------------------------------------

    async def _serve_ctl(self, ctl: zmq.asyncio.Socket) -> None:
        while True:
            frames = await ctl.recv_multipart(copy=False)
            try:
                self.gate.changed()  # a request is rare: the allowlist is looked at for each
                reply = self._answer(frames)
            except Exception as err:  # a bad request must never stop the serving loop
                self.log.error("ctl_error", error=repr(err))
                reply = Reply(id=0, ok=False, error=f"internal error: {err!r}")
            if reply is not None and len(frames) >= 2:
                with contextlib.suppress(zmq.ZMQError):
                    await ctl.send_multipart([frames[0].bytes, codec.encode(reply)], zmq.NOBLOCK)

    def _answer(self, frames: list[zmq.Frame]) -> Reply | None:
        if len(frames) != 2:
            return Reply(id=0, ok=False, error="malformed: expected one frame")
        key = self.gate.key(frames[1])  # None: its key left the allowlist
        try:
            req = codec.decode_request(frames[1].bytes)
        except codec.Rejected as rej:
            return (
                None if key is None else Reply(id=0, ok=False, error=f"{rej.reason}: {rej.detail}")
            )
        if key is None:
            return Reply(id=req.id, ok=False, error="refused: this key is revoked")
        handler = self._ops.get(req.op)
        if handler is None:
            known = ", ".join(sorted(self._ops))
            return Reply(id=req.id, ok=False, error=f"unknown op '{req.op}' (known: {known})")
        if not may_role(key, "supervisor", req.op):
            self.gate.refuse("role", f"{key.name} ({key.role}): supervisor {req.op}")
            self.log.warning("refused", key=key.name, role=key.role, op=req.op)
            need = needed("supervisor", req.op)
            error = f"refused: '{req.op}' needs {need} key, not {key.role} key '{key.name}'"
            return Reply(id=req.id, ok=False, error=error)
        try:
            result = handler(req.args)
        except CtlError as err:
            return Reply(id=req.id, ok=False, error=str(err))
        return Reply(id=req.id, ok=True, result=msgspec.Raw(codec.encode(result)))

    def _child_arg(self, args: dict[str, Any]) -> _Child:
        name = args.get("name")
        if not isinstance(name, str):
            raise CtlError("missing argument 'name' (a process name)")
        child = self._by_name.get(name)
        if child is None:
            known = ", ".join(self._by_name)
            raise CtlError(f"unknown process '{name}' (known: {known})")
        return child

    def _op_ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"service": "supervisor", "pid": os.getpid(), "pub": 0}

    def _op_status(self, _args: dict[str, Any]) -> ServiceStatus:
        counters = {f"restarts_{c.spec.name}": c.restarts for c in self._children}
        counters.update(self.counters)
        return ServiceStatus(
            service="supervisor",
            pid=os.getpid(),
            pub=0,
            uptime_s=round(time.monotonic() - self._started, 3),
            counters=counters,
            endpoints={"ctl": self.config.ctl},
        )

    def _op_ps(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for child in self._children:
            up = child.state in ("running", "paused")
            rows.append(
                {
                    "name": child.spec.name,
                    "pid": child.pid if up else None,
                    "state": child.state,
                    "restarts": child.restarts,
                    "uptime_s": round(now - child.started_at, 3) if up else 0.0,
                    "last_exit": child.last_exit,
                    "reason": child.reason,
                }
            )
        return rows

    def _op_signal(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._child_arg(args)
        sig_name = args.get("signal")
        if not isinstance(sig_name, str):
            raise CtlError(f"missing argument 'signal' (one of {', '.join(SIGNALS)})")
        sig = SIGNALS.get(sig_name.upper().removeprefix("SIG"))
        if sig is None:
            raise CtlError(f"unsupported signal '{sig_name}' (one of {', '.join(SIGNALS)})")
        if self._stopping:
            raise CtlError("the supervisor is stopping")
        if child.pid is None or not child.alive():
            raise CtlError(f"process '{child.spec.name}' is not running (state {child.state})")
        # The whole group: a paused service is paused with its helpers, a killed one too.
        _signal_group(child.pid, sig)
        if sig == signal.SIGSTOP:
            child.state = "paused"  # a stopped process does not exit: nothing to restart
        elif sig == signal.SIGCONT:
            child.state = "running"
        self.log.info("signalled", name=child.spec.name, pid=child.pid, signal=sig.name)
        return {"name": child.spec.name, "pid": child.pid, "signal": sig.name}

    def _op_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._child_arg(args)
        if self._stopping:
            raise CtlError("the supervisor is stopping")
        child.restart_now = True
        child.bind_failures = 0  # an operator's restart: the tries start again
        pid = child.pid if child.alive() else None
        if pid is not None:
            # The keeper sees the exit and starts it again with no backoff.
            self._background(self._terminate(child))
        else:
            child.wake.set()  # in backoff or stopped: start it now
        self.log.info("restart_requested", name=child.spec.name, pid=pid)
        return {"name": child.spec.name, "pid": pid}

    def _op_stop(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.log.info("stop_requested", via="ctl")
        # The stop runs in run() after this reply has been sent.
        self._begin_stop()
        return {"stopping": True}

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # keep a reference: the loop holds only weak ones
        task.add_done_callback(self._tasks.discard)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_supervisor(
    specs: list[ProcessSpec],
    config: SupervisorConfig,
    *,
    install_signals: bool = True,
    out: TextIO | None = None,
    log: JsonLog | None = None,
    security: Security | None = None,
) -> int:
    """Run a Supervisor in this thread until it is stopped; returns its exit code."""
    supervisor = Supervisor(specs, config, out=out, log=log, security=security)
    return asyncio.run(supervisor.run(install_signals=install_signals))


def supervisor_request(
    endpoint: str, op: str, args: dict[str, Any] | None = None, timeout_s: float = 2.0
) -> Any:
    """Send one control request and return its decoded result (blocking, no asyncio).

    Raises RuntimeError with the supervisor's message when it refuses the request, and
    TimeoutError when no reply comes within timeout_s.
    """
    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    try:
        with CtlClient(endpoint) as client:
            return client.call(op, args, timeout_s=timeout_s, retries=0)
    except CtlFailed as err:
        raise RuntimeError(str(err)) from None
    except CtlUnavailable:
        raise TimeoutError(f"no reply from the supervisor at {endpoint} in {timeout_s} s") from None
