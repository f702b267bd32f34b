"""Client side of the control protocol: DEALER, request ids, timeouts, retries with jitter.

Usage::

    with CtlClient("tcp://127.0.0.1:7702") as relay:
        snap = relay.call("snapshot", result_type=RelaySnapshot)
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, TypeVar

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Reply, Request

from .chunks import Reassembly
from .security import Security
from .sockets import Sockets

T = TypeVar("T")


class CtlUnavailable(Exception):
    """No reply within the timeout after every retry: the service is down or unreachable."""


class CtlFailed(Exception):
    """The service answered with an error."""


class CtlRefused(CtlFailed):
    """The service refused this client's key: at the handshake (not in its allowlist, or
    the wrong role for that socket), or the request (beyond the key's role)."""


class CtlClient:
    """``security``: the keys it connects with; None: those registered for the endpoint,
    else the process's (runtime/security.py)."""

    def __init__(
        self,
        endpoint: str,
        *,
        ctx: zmq.Context[Any] | None = None,
        security: Security | None = None,
        key: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ctx: zmq.Context[Any] = ctx or zmq.Context.instance()
        self.sockets = Sockets(self.ctx, security)
        self.key = key
        self._ids = itertools.count(random.randrange(1, 2**31))
        self._sock: zmq.Socket[Any] | None = None
        self._events: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            # A handshake the server refuses is otherwise only a silence: watch for it,
            # from before the connect (libzmq does not retry it: its one event).
            sock = self.sockets.client(zmq.DEALER, self.endpoint, key=self.key)
            self._events = self.sockets.monitor(sock, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _refused(self) -> bool:
        """Whether the server refused our handshake (ZAP said no)."""
        events, refused = self._events, False
        if events is not None:
            while events.poll(0):
                events.recv_multipart()
                refused = True
        return refused

    def _reset(self) -> None:
        # A fresh socket drops replies to abandoned requests and reconnects at once.
        if self._sock is not None:
            if self._events is not None:
                self.sockets.close(self._events)
                self._events = None
            self.sockets.close(self._sock)
            self._sock = None

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        result_type: type[T] | Any = Any,
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_s: float = 0.1,
    ) -> T:
        """Send op; wait for its reply; retry (new socket, exponential backoff, full jitter).

        A chunked reply (docs/protocol.md §7.3) is read to its end with op ``chunk``."""
        reply = self._exchange(op, args, timeout_s, retries, backoff_s)
        result: bytes | msgspec.Raw = reply.result
        if reply.size:
            parts = Reassembly(reply.blob, reply.size, msgspec.msgpack.decode(result, type=bytes))
            while not parts.complete:
                more = self._exchange("chunk", parts.next_args(), timeout_s, retries, backoff_s)
                parts.add(msgspec.msgpack.decode(more.result, type=bytes))
            result = bytes(parts.data)
        return msgspec.msgpack.decode(result, type=result_type)  # type: ignore[no-any-return]

    def _exchange(
        self,
        op: str,
        args: dict[str, Any] | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
    ) -> Reply:
        """One request and its ok reply; CtlFailed on an error reply, CtlUnavailable on none."""
        for attempt in range(retries + 1):
            req_id = next(self._ids)
            sock = self._socket()
            deadline = time.monotonic() + timeout_s
            frame = codec.encode(Request(id=req_id, op=op, args=args or {}))
            if not self._send(sock, frame, deadline):
                deadline = 0.0  # never sent: the refusal check below says why
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if self._events is not None:
                poller.register(self._events, zmq.POLLIN)
            while (left := deadline - time.monotonic()) > 0:
                ready = dict(poller.poll(int(left * 1000) + 1))
                if sock not in ready:
                    break  # nothing, or the handshake was refused: said below
                reply = codec.decode_reply(sock.recv())
                if reply.id != req_id:
                    continue  # a late answer to an earlier attempt
                if not reply.ok:
                    if reply.error.startswith("refused: "):
                        raise CtlRefused(reply.error)
                    raise CtlFailed(reply.error)
                return reply
            if self._refused():
                self._reset()
                raise CtlRefused(
                    f"refused: {self.endpoint} does not accept this key (not in its "
                    "allowlist, or not a key of a role that socket takes: shoal keys list)"
                )
            self._reset()
            if attempt < retries:
                time.sleep(random.uniform(0, backoff_s * 2**attempt))
        raise CtlUnavailable(f"no reply from {self.endpoint} to '{op}'")

    def _send(self, sock: zmq.Socket[Any], frame: bytes, deadline: float) -> bool:
        """Send without blocking past the deadline. A DEALER whose only connection was
        refused at the handshake has no peer left (libzmq does not reconnect it), and a
        blocking send would then wait for ever (seen beside a CPU hog: the refusal came
        between the connect and the send)."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        if self._events is not None:
            poller.register(self._events, zmq.POLLIN)
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = dict(poller.poll(int(left * 1000) + 1))
            if self._events is not None and self._events in ready:
                return False  # refused: no peer will come

    def close(self) -> None:
        self.sockets.close_all()
        self._sock = None

    def __enter__(self) -> CtlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def ask_all(
    endpoints: dict[str, str],
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout_s: float = 0.5,
    security: Security | None = None,
) -> dict[str, Any]:
    """One request to each service at once; {name: result} of those that answered in
    timeout_s (a service down costs the wait once, not once per service)."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sockets = Sockets(ctx, security)
    poller = zmq.Poller()
    pending: dict[zmq.Socket[Any], tuple[str, int]] = {}
    out: dict[str, Any] = {}
    try:
        for n, (name, endpoint) in enumerate(endpoints.items(), start=1):
            try:
                sock = sockets.connect(zmq.DEALER, endpoint)
            except Exception:  # no keys for it, a bad endpoint: no answer
                continue
            sock.send(codec.encode(Request(id=n, op=op, args=args or {})))
            poller.register(sock, zmq.POLLIN)
            pending[sock] = (name, n)
        deadline = time.monotonic() + timeout_s
        while pending and (left := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(left * 1000) + 1):
                name, req_id = pending[sock]
                try:
                    reply = codec.decode_reply(sock.recv())
                except codec.Rejected:
                    continue
                if reply.id != req_id:
                    continue
                poller.unregister(sock)
                del pending[sock]
                if reply.ok:
                    out[name] = msgspec.msgpack.decode(reply.result)
    finally:
        sockets.close_all()
    return out
