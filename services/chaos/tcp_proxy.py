"""A TCP proxy on the shim's link to the MQTT broker, so a scenario can cut that link alone.

The shim reaches the broker at ``[mqtt] shim_broker`` when it is set (the runner points it
here); boards still reach the broker directly, so a cut takes the broker-to-shim link and
nothing else. Bytes are forwarded opaque, in a thread of the fault injector with its own
select loop; no byte can make it fail.

``cut(seconds)`` resets every connection through it and refuses new ones (accepted, then
closed at once) until ``heal()`` or the timer: what a router that lost its route does to
a TCP connection. The shim notices at once (its socket closes) and reconnects with
backoff, failing until the heal. A silent black hole would test only the keepalive.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

BUFFER = 65536
POLL_S = 0.05


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], listen_port: int, name: str = "tcp") -> None:
        self.upstream = upstream
        self.name = name
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.cut_until: float | None = None  # monotonic; inf: until heal
        self.counters = {"accepted": 0, "refused": 0, "reset": 0, "bytes": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{name}", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        with self._lock:
            self._reset_all()
        self.server.close()

    def cut(self, seconds: float | None = None) -> float:
        """Reset every connection, refuse new ones; returns the monotonic time it took
        effect (as FaultProxy.cut)."""
        with self._lock:
            self.cut_until = float("inf") if seconds is None else time.monotonic() + seconds
            self._reset_all()
        return time.monotonic()

    def heal(self) -> float:
        with self._lock:
            self.cut_until = None
        return time.monotonic()

    def dropped(self) -> int:
        """Connections reset or refused (the sampler's link_dropped counts messages for a
        ZeroMQ proxy; for a TCP link a connection is the unit)."""
        return self.counters["reset"] + self.counters["refused"]

    def is_cut(self) -> bool:
        until = self.cut_until
        if until is not None and time.monotonic() >= until:
            self.cut_until = until = None
        return until is not None

    # --- the loop ---------------------------------------------------------------------------

    def _reset_all(self) -> None:
        for sock in list(self.pairs):
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        peer = self.pairs.pop(sock, None)
        if peer is not None:
            self.pairs.pop(peer, None)
            self.counters["reset"] += 1
        for s in (sock, peer):
            if s is not None:
                with contextlib.suppress(OSError):
                    # RST, not FIN: linger 0, as a lost route looks to the endpoints
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        if self.is_cut():
            self.counters["refused"] += 1
            client.close()
            return
        try:
            up = socket.create_connection(self.upstream, timeout=1.0)
        except OSError:
            self.counters["refused"] += 1
            client.close()
            return
        for s in (client, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pairs[client] = up
        self.pairs[up] = client
        self.counters["accepted"] += 1

    def _pump(self, sock: socket.socket) -> None:
        peer = self.pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(BUFFER)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        try:
            peer.setblocking(True)
            peer.settimeout(1.0)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close(sock)
            return
        self.counters["bytes"] += len(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = [self.server, *self.pairs]
            try:
                readable, _, _ = select.select(socks, [], [], POLL_S)
            except (OSError, ValueError):  # a socket closed by cut() meanwhile
                continue
            with self._lock:
                for sock in readable:
                    if sock is self.server:
                        self._accept()
                    else:
                        self._pump(sock)
