"""Every ZeroMQ socket shoal opens is made here, so security and options live in one place.

CurveZMQ will be switched on here (server keys on bind, client keys on connect) without
touching any service.
"""

from __future__ import annotations

from typing import Any

import zmq

from shoal.protocol import limits

# Socket defaults: never block shutdown on unsent frames; refuse frames that are larger
# than any valid message before they are read into memory.
LINGER_MS = 0
DEFAULT_HWM = 10_000


class BindError(Exception):
    """An endpoint that cannot be bound (in use, bad address); the message names it."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno  # EADDRINUSE: taken (another cluster?); others: a wrong address


class Sockets:
    """Creates, tracks and closes sockets for one service (or one client)."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self._open: list[zmq.Socket[Any]] = []

    def make(self, kind: int, *, hwm: int = DEFAULT_HWM, **options: Any) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if kind in (zmq.ROUTER, zmq.PULL, zmq.SUB, zmq.DEALER):
            # libzmq drops (and disconnects) a peer sending a larger message: a hostile
            # client cannot make us allocate more than this per frame.
            sock.setsockopt(zmq.MAXMSGSIZE, max(limits.MAX_FRAME_BYTES * 8, 1 << 20))
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        self._open.append(sock)
        return sock

    def bind(self, kind: int, endpoint: str, **options: Any) -> zmq.Socket[Any]:
        sock = self.make(kind, **_ipv6(endpoint, options))
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as err:
            self.close(sock)
            raise BindError(f"cannot bind {endpoint}: {err.strerror}", err.errno or 0) from None
        return sock

    def connect(self, kind: int, endpoint: str, **options: Any) -> zmq.Socket[Any]:
        sock = self.make(kind, **_ipv6(endpoint, options))
        sock.connect(endpoint)
        return sock

    def monitor(self, sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
        """A PAIR socket that receives sock's connection events (zmq_socket_monitor).

        Each event is two frames (see ``zmq.utils.monitor.parse_monitor_message``); for
        ``EVENT_DISCONNECTED`` the value is the closed connection's file descriptor. It is
        closed with the other sockets.
        """
        events_sock: zmq.Socket[Any] = sock.get_monitor_socket(events)
        self._open.append(events_sock)
        return events_sock

    def close(self, sock: zmq.Socket[Any]) -> None:
        if sock in self._open:
            self._open.remove(sock)
        sock.close(linger=LINGER_MS)

    def close_all(self) -> None:
        for sock in reversed(self._open):
            sock.close(linger=LINGER_MS)
        self._open.clear()


def _ipv6(endpoint: str, options: dict[str, Any]) -> dict[str, Any]:
    """libzmq takes "tcp://[::1]:7700" only on a socket with IPV6 set (it says "No such
    device" otherwise); set only there, so every other endpoint resolves as it always did."""
    if endpoint.startswith("tcp://[") and "ipv6" not in options:
        return {**options, "ipv6": 1}
    return options
