"""Every ZeroMQ socket shoal opens is made here, so security and options live in one place.

CurveZMQ (security.py): a socket bound is a Curve server with the cluster's server key,
its context's ZAP handler admitting the allowlist's keys of the roles the socket takes
(``admit``); a socket connected is a Curve client with this process's own key. With
``[security] curve = false`` a bind to anything but a loopback address is refused.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import MutableMapping
from typing import Any

import zmq

from shoal.protocol import limits

from . import security as sec
from .endpoints import is_local
from .security import ADMITS, CTL_SOCKETS, InsecureBind, Security

# Socket defaults: never block shutdown on unsent frames; refuse frames that are larger
# than any valid message before they are read into memory.
LINGER_MS = 0
DEFAULT_HWM = 10_000
# A bus cut (revocation) binds its endpoint again at once; the old listener's close is
# asynchronous, so the bind is retried this long.
REBIND_TRIES_S = 2.0
_monitor_ids = itertools.count(1)


class BindError(Exception):
    """An endpoint that cannot be bound (in use, bad address); the message names it."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno  # EADDRINUSE: taken (another cluster?); others: a wrong address


class Sockets:
    """Creates, tracks and closes sockets for one service (or one client).

    ``security``: whose keys; None: the keys registered for each endpoint, else the
    process default (security.for_endpoint). ``counters``: where the ZAP handler counts
    the handshakes it refuses (the service's counters)."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        security: Security | None = None,
        counters: MutableMapping[str, int] | None = None,
        log: Any = None,
    ) -> None:
        self.ctx = ctx
        self.security = security
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}
        self.log = log
        self._open: list[zmq.Socket[Any]] = []
        self._zap_held: set[zmq.Socket[Any]] = set()  # curve servers: each holds the ZAP
        self._bound: dict[zmq.Socket[Any], str] = {}  # PUB / XPUB and where: cut on revoke

    def _security(self, endpoint: str) -> Security:
        return self.security if self.security is not None else sec.for_endpoint(endpoint)

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

    def bind(
        self, kind: int, endpoint: str, *, admit: str = CTL_SOCKETS, **options: Any
    ) -> zmq.Socket[Any]:
        """A bound socket. ``admit``: which roles' keys it lets in (security.ADMITS):
        ``shoal-node`` for ingest and tasks, ``shoal-ctl`` (the default) for control
        sockets and buses."""
        security = self._security(endpoint)
        curve = security.curve and not endpoint.startswith("inproc://")
        if curve:
            if admit not in ADMITS:
                raise ValueError(f"admit {admit!r}: one of {', '.join(ADMITS)}")
            _public, secret = security.server_keys()
            options = {**options, "curve_server": 1, "curve_secretkey": secret}
            options["zap_domain"] = admit.encode()
        elif not security.curve and not is_local(endpoint):
            raise InsecureBind(
                f"refusing to bind {endpoint} with Curve off ([security] curve = false): "
                "anyone on the network could drive the cluster; turn Curve on, or bind "
                "127.0.0.1"
            )
        sock = self.make(kind, **_ipv6(endpoint, options))
        if curve:
            sec.acquire_zap(self.ctx, security.keyring(), self.counters, self.log)
            self._zap_held.add(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as err:
            self.close(sock)
            raise BindError(f"cannot bind {endpoint}: {err.strerror}", err.errno or 0) from None
        if kind in (zmq.PUB, zmq.XPUB):
            self._bound[sock] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def connect(
        self, kind: int, endpoint: str, *, key: str | None = None, **options: Any
    ) -> zmq.Socket[Any]:
        """A connected socket; ``key``: another client key of the same keys directory
        than this process's own (a test's node key)."""
        sock = self.client(kind, endpoint, key=key, **options)
        sock.connect(endpoint)
        return sock

    def client(
        self, kind: int, endpoint: str, *, key: str | None = None, **options: Any
    ) -> zmq.Socket[Any]:
        """A socket set up to connect to ``endpoint`` (its Curve keys), not connected yet:
        for a caller that must monitor it first (a refused handshake is the connection's
        only event, since libzmq does not reconnect it)."""
        security = self._security(endpoint)
        if key is not None:
            security = security.named(key)
        if security.curve and not endpoint.startswith("inproc://"):
            server, public, secret = security.client_keys()
            options = {
                **options,
                "curve_serverkey": server,
                "curve_publickey": public,
                "curve_secretkey": secret,
            }
        return self.make(kind, **_ipv6(endpoint, options))

    def cut_subscribers(self) -> int:
        """Close every connection of the buses bound here (unbind, bind again): their
        subscribers reconnect, each with a new handshake, which a revoked key fails.
        How many buses were cut."""
        cut = 0
        for sock, endpoint in list(self._bound.items()):
            try:
                sock.unbind(endpoint)
            except zmq.ZMQError:
                continue
            deadline = time.monotonic() + REBIND_TRIES_S
            while True:
                try:
                    sock.bind(endpoint)
                    cut += 1
                    break
                except zmq.ZMQError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
        return cut

    def monitor(self, sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
        """A PAIR socket that receives sock's connection events (zmq_socket_monitor).

        Each event is two frames (see ``zmq.utils.monitor.parse_monitor_message``); for
        ``EVENT_DISCONNECTED`` the value is the closed connection's file descriptor. It is
        closed with the other sockets.
        """
        # A name of its own: pyzmq's default names the socket's descriptor, which a socket
        # made right after this one closed may have again, while the old name is still
        # bound (libzmq releases it asynchronously): "Address already in use".
        addr = f"inproc://shoal-monitor-{os.getpid()}-{next(_monitor_ids)}"
        events_sock: zmq.Socket[Any] = sock.get_monitor_socket(events, addr)
        self._open.append(events_sock)
        return events_sock

    def close(self, sock: zmq.Socket[Any]) -> None:
        if sock in self._open:
            self._open.remove(sock)
        self._bound.pop(sock, None)
        sock.close(linger=LINGER_MS)
        if sock in self._zap_held:
            self._zap_held.discard(sock)
            sec.release_zap(self.ctx)

    def close_all(self) -> None:
        for sock in reversed(self._open):
            sock.close(linger=LINGER_MS)
        self._open.clear()
        self._bound.clear()
        for _ in range(len(self._zap_held)):
            sec.release_zap(self.ctx)
        self._zap_held.clear()


def _ipv6(endpoint: str, options: dict[str, Any]) -> dict[str, Any]:
    """libzmq takes "tcp://[::1]:7700" only on a socket with IPV6 set (it says "No such
    device" otherwise); set only there, so every other endpoint resolves as it always did."""
    if endpoint.startswith("tcp://[") and "ipv6" not in options:
        return {**options, "ipv6": 1}
    return options
