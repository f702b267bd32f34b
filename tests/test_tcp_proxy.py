"""The TCP proxy on the shim's broker link: bytes through, a cut resets and refuses, a heal
lets new connections through again (real sockets on loopback)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from shoal.services.runtime.tcp_proxy import TcpProxy
from shoal.services.testing import free_port, wait_for


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on a free port."""
    server = socket.create_server(("127.0.0.1", free_port()))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets us on a cut
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def refused_at_once(port: int) -> bool:
    """A cut proxy accepts and resets at once: the reset may reach the connect itself (a
    busy machine: the RST lands before connect() returns) or the first read."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(16) == b""
    except OSError:  # reset
        return True


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(4096)


def test_bytes_pass_a_cut_resets_and_refuses_and_a_heal_reopens(echo: int) -> None:
    with TcpProxy(("127.0.0.1", echo), free_port()) as proxy:
        assert roundtrip(proxy.port, b"hello") == b"hello"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        held.sendall(b"x")
        assert held.recv(16) == b"x"
        proxy.cut(None)
        with pytest.raises(OSError):  # reset, then nothing more (a closed read is b"")
            if held.recv(16) == b"":
                raise ConnectionResetError
        held.close()
        assert wait_for(lambda: proxy.counters["reset"] >= 1, 2)
        assert refused_at_once(proxy.port)
        assert wait_for(lambda: proxy.counters["refused"] >= 1, 2)
        proxy.heal()
        assert roundtrip(proxy.port, b"again") == b"again"
        assert proxy.dropped() >= 2


def test_a_timed_cut_ends_by_itself(echo: int) -> None:
    with TcpProxy(("127.0.0.1", echo), free_port()) as proxy:
        proxy.cut(0.2)
        assert wait_for(lambda: not proxy.is_cut(), 3)
        assert roundtrip(proxy.port, b"back") == b"back"


def test_a_held_cut_keeps_the_upstream_open_and_silent(echo: int) -> None:
    """Radio off / power cut as the broker sees it: no FIN, no RST."""
    with TcpProxy(("127.0.0.1", echo), free_port()) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            s.sendall(b"a")
            assert s.recv(16) == b"a"
            proxy.cut(None, hold=True)
        assert proxy.counters["held"] == 1 and len(proxy.held) == 1
        proxy.heal()
        proxy.hold_on_close(True)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            s.sendall(b"b")
            assert s.recv(16) == b"b"
        # the client closed its end: its upstream is held, not closed
        assert wait_for(lambda: proxy.counters["held"] == 2, 2)
        assert len(proxy.held) == 2 and proxy.connections() == 0
