"""Loopback ports for the clusters that tests, benchmarks and the fault injector start:
never the same port twice, in one process or across processes, and never one the kernel
may hand to somebody else meanwhile.

Why not bind port 0 and close it: the kernel picks such a port from the ephemeral range,
the same range it picks the source port of every outgoing connection from. Between
choosing a port and the service binding it, a ZeroMQ connect elsewhere on the machine
could take it (a chaos run's relay crash-looped on ``bind_failed`` that way), and two
choosers could be given the same one. So ports come from below the ephemeral range
(``net.ipv4.ip_local_port_range``), where the kernel never picks on its own, in blocks of
``BLOCK`` ports: a process claims a block by holding an exclusive ``flock`` on a file named
after it (in the temp dir), which the kernel drops when the process ends, however it ends.
Within its blocks a process hands out each port once, after checking that it binds.

Usage::

    port = next_port()          # this process's chooser
    endpoint = tcp()            # "tcp://127.0.0.1:PORT"
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
from pathlib import Path

BLOCK = 64
LOCK_DIR = Path(tempfile.gettempdir()) / "shoal-ports"
FALLBACK_EPHEMERAL = (32768, 60999)  # Linux's default, when /proc does not say
LOWEST = 10000  # below: the well-known and registered ports many daemons use


class PortsExhausted(RuntimeError):
    """Every block is held by a live process or every port in them is taken."""


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return FALLBACK_EPHEMERAL


def port_range() -> range:
    """Where ports are chosen: below the ephemeral range, else above it."""
    lo, hi = ephemeral_range()
    if lo - LOWEST >= 16 * BLOCK:
        return range(LOWEST, lo)
    return range(hi + 1, 65536)


def _binds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortChooser:
    """Hands out loopback ports from the blocks it holds; each at most once."""

    def __init__(self, ports: range | None = None, lock_dir: Path = LOCK_DIR) -> None:
        self.ports = ports if ports is not None else port_range()
        self.lock_dir = lock_dir
        self._lock = threading.Lock()
        self._held: list[int] = []  # fds of the block files this chooser holds
        self._pending: list[int] = []  # ports of the current block not handed out yet
        self._next_block = (os.getpid() * 7) % self.blocks  # processes start apart
        self._tried = 0

    @property
    def blocks(self) -> int:
        return max(1, len(self.ports) // BLOCK)

    def next_port(self) -> int:
        with self._lock:
            while True:
                while self._pending:
                    port = self._pending.pop(0)
                    if _binds(port):
                        return port
                self._claim_block()

    def _claim_block(self) -> None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        while self._tried < self.blocks:
            index = self._next_block
            self._next_block = (self._next_block + 1) % self.blocks
            self._tried += 1
            first = self.ports.start + index * BLOCK
            fd = os.open(self.lock_dir / f"{first}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another live process holds it
                os.close(fd)
                continue
            self._held.append(fd)
            self._tried = 0  # own blocks are locked too: the walk skips them
            self._pending = list(range(first, min(first + BLOCK, self.ports.stop)))
            return
        self._tried = 0  # a later call walks the blocks again: a holder may have ended
        raise PortsExhausted(
            f"no free block of {BLOCK} ports left in {self.ports.start}-{self.ports.stop - 1}"
        )

    def close(self) -> None:
        """Give the blocks back (a process's are given back when it ends anyway)."""
        with self._lock:
            for fd in self._held:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._held.clear()
            self._pending.clear()


_chooser: PortChooser | None = None
_chooser_pid = -1
_chooser_lock = threading.Lock()


def next_port() -> int:
    """A loopback port no other caller in this process or another has been given."""
    global _chooser, _chooser_pid
    with _chooser_lock:
        # A forked child gets a chooser of its own: the parent's blocks and pending ports
        # are the parent's.
        if _chooser is None or _chooser_pid != os.getpid():
            _chooser, _chooser_pid = PortChooser(), os.getpid()
        chooser = _chooser
    return chooser.next_port()


def tcp(port: int | None = None) -> str:
    return f"tcp://127.0.0.1:{port or next_port()}"
