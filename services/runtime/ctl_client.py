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
from .sockets import Sockets

T = TypeVar("T")


class CtlUnavailable(Exception):
    """No reply within the timeout after every retry: the service is down or unreachable."""


class CtlFailed(Exception):
    """The service answered with an error."""


class CtlClient:
    def __init__(self, endpoint: str, *, ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self.ctx: zmq.Context[Any] = ctx or zmq.Context.instance()
        self.sockets = Sockets(self.ctx)
        self._ids = itertools.count(random.randrange(1, 2**31))
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            self._sock = self.sockets.connect(zmq.DEALER, self.endpoint)
        return self._sock

    def _reset(self) -> None:
        # A fresh socket drops replies to abandoned requests and reconnects at once.
        if self._sock is not None:
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
            sock.send(codec.encode(Request(id=req_id, op=op, args=args or {})))
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                    break
                reply = codec.decode_reply(sock.recv())
                if reply.id != req_id:
                    continue  # a late answer to an earlier attempt
                if not reply.ok:
                    raise CtlFailed(reply.error)
                return reply
            self._reset()
            if attempt < retries:
                time.sleep(random.uniform(0, backoff_s * 2**attempt))
        raise CtlUnavailable(f"no reply from {self.endpoint} to '{op}'")

    def close(self) -> None:
        self.sockets.close_all()
        self._sock = None

    def __enter__(self) -> CtlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
