"""A TCP relay between clients and one upstream, that a fault can cut: the MQTT links.

Two users: the fault injector puts one on the shim's link to the broker (``[mqtt]
shim_broker``) to cut that link alone; the board emulator puts one between each emulated
board and the broker, which is the board's radio. Bytes are forwarded opaque, in a thread
of the owner's with its own select loop; no byte can make it fail.

Faults:

- ``cut(seconds, hold=False)``: every connection through it is reset (RST at both ends)
  and new ones are refused (accepted, then closed at once) until ``heal()`` or the timer:
  what a router that lost its route does to TCP. The shim notices at once and reconnects
  with backoff, failing until the heal.
- ``cut(..., hold=True)``: the client side is reset and refused as above, but the upstream
  connections are **held**: open, silent, whatever they receive discarded, until the
  upstream closes them. That is a radio gone quiet or a board without power, as the
  broker sees it: no FIN, no RST, nothing, until its keepalive gives up on the client
  (and publishes the will).
- ``hold_on_close(True)``: from now on, a client that closes its end (a board process
  SIGKILLed: the kernel would send a FIN that a real power cut never sends) leaves its
  upstream held rather than closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

BUFFER = 65536
POLL_S = 0.05
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], listen_port: int, name: str = "tcp") -> None:
        self.upstream = upstream
        self.name = name
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.clients: set[socket.socket] = set()  # the client end of each pair
        self.held: set[socket.socket] = set()  # upstream ends kept open and silent
        self.cut_until: float | None = None  # monotonic; inf: until heal
        self.hold = False  # cut with held upstreams
        self._hold_on_close = False
        self.counters = {"accepted": 0, "refused": 0, "reset": 0, "held": 0, "bytes": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{name}", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> TcpProxy:
        return self.__enter__()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        with self._lock:
            for sock in list(self.pairs):
                self._close_pair(sock, hold=False)
            for sock in list(self.held):
                self._drop(sock)
        self.server.close()

    # --- faults -----------------------------------------------------------------------------

    def cut(self, seconds: float | None = None, hold: bool = False) -> float:
        """Reset the clients, refuse new ones (upstreams reset too, or held); returns the
        monotonic time it took effect (as FaultProxy.cut)."""
        with self._lock:
            self.cut_until = float("inf") if seconds is None else time.monotonic() + seconds
            self.hold = hold
            for sock in list(self.clients):
                self._close_pair(sock, hold=hold)
        return time.monotonic()

    def heal(self) -> float:
        with self._lock:
            self.cut_until = None
        return time.monotonic()

    def hold_on_close(self, on: bool) -> None:
        self._hold_on_close = on

    def is_cut(self) -> bool:
        until = self.cut_until
        if until is not None and time.monotonic() >= until:
            self.cut_until = until = None
        return until is not None

    def dropped(self) -> int:
        """Connections reset, refused or held (the sampler's link_dropped counts messages
        for a ZeroMQ proxy; for a TCP link a connection is the unit)."""
        c = self.counters
        return c["reset"] + c["refused"] + c["held"]

    def connections(self) -> int:
        return len(self.clients)

    # --- the loop ---------------------------------------------------------------------------

    @staticmethod
    def _drop(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        with contextlib.suppress(OSError):
            sock.close()

    def _close_pair(self, sock: socket.socket, hold: bool) -> None:
        """Close a pair, from either end; with ``hold`` the upstream end stays open."""
        peer = self.pairs.pop(sock, None)
        if peer is not None:
            self.pairs.pop(peer, None)
        client, up = (sock, peer) if sock in self.clients else (peer, sock)
        if client is not None:
            self.clients.discard(client)
            self._drop(client)
        if up is not None:
            if hold:
                self.held.add(up)
                self.counters["held"] += 1
            else:
                self._drop(up)
                self.counters["reset"] += 1

    def _accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        if self.is_cut():
            self.counters["refused"] += 1
            self._drop(client)
            return
        try:
            up = socket.create_connection(self.upstream, timeout=1.0)
        except OSError:
            self.counters["refused"] += 1
            self._drop(client)
            return
        for s in (client, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pairs[client] = up
        self.pairs[up] = client
        self.clients.add(client)
        self.counters["accepted"] += 1

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(BUFFER)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if sock in self.held:
            if not data:  # the upstream gave up on the silent client at last
                self.held.discard(sock)
                self._drop(sock)
            return  # a held connection forwards nothing
        peer = self.pairs.get(sock)
        if peer is None:
            return
        if not data:
            from_client = sock in self.clients
            self._close_pair(sock, hold=from_client and self._hold_on_close)
            return
        try:
            peer.setblocking(True)
            peer.settimeout(1.0)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close_pair(sock, hold=False)
            return
        self.counters["bytes"] += len(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = [self.server, *self.pairs, *self.held]
            try:
                readable, _, _ = select.select(socks, [], [], POLL_S)
            except (OSError, ValueError):  # a socket closed by cut() meanwhile
                continue
            with self._lock:
                for sock in readable:
                    if sock is self.server:
                        self._accept()
                    elif sock in self.pairs or sock in self.held:
                        self._pump(sock)
