"""Ports for clusters: never the same one twice, in one process or across processes, and
never from the range the kernel hands out for outgoing connections."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from shoal.services.runtime.ports import (
    BLOCK,
    PortChooser,
    PortsExhausted,
    ephemeral_range,
    port_range,
)

PORTS_PER_CLUSTER = 12  # relay 3, liveness 2, delegator 3, sim, supervisor, two proxy links


def test_a_thousand_clusters_worth_of_ports_never_repeat(tmp_path: Path) -> None:
    chooser = PortChooser(lock_dir=tmp_path)
    try:
        ports = [chooser.next_port() for _ in range(1000 * PORTS_PER_CLUSTER)]
    finally:
        chooser.close()
    assert len(set(ports)) == len(ports)


def test_ports_come_from_outside_the_ephemeral_range() -> None:
    lo, hi = ephemeral_range()
    chosen = port_range()
    assert chosen.stop <= lo or chosen.start > hi
    assert len(chosen) >= 16 * BLOCK


def test_a_port_someone_else_bound_is_skipped(tmp_path: Path) -> None:
    chooser = PortChooser(lock_dir=tmp_path)
    first = chooser.next_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first + 1))
        try:
            assert chooser.next_port() == first + 2
        finally:
            chooser.close()


CHILD = """
import sys
from pathlib import Path
from shoal.services.runtime.ports import PortChooser
chooser = PortChooser(lock_dir=Path(sys.argv[1]))
print(" ".join(str(chooser.next_port()) for _ in range(int(sys.argv[2]))), flush=True)
sys.stdin.read()  # hold the blocks until the test has read every child's ports
"""


def test_concurrent_processes_never_share_a_port(tmp_path: Path) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(300 * PORTS_PER_CLUSTER // 6)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)  # the chaos library runs six clusters at once
    ]
    try:
        seen: list[int] = []
        for child in children:
            assert child.stdout is not None
            seen += [int(p) for p in child.stdout.readline().split()]
    finally:
        for child in children:
            child.communicate("", timeout=30)
    assert len(seen) == 6 * (300 * PORTS_PER_CLUSTER // 6)
    assert len(set(seen)) == len(seen)


def test_a_block_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    small = range(port_range().start, port_range().start + BLOCK)  # one block only
    holder = PortChooser(small, lock_dir=tmp_path)
    holder.next_port()
    other = PortChooser(small, lock_dir=tmp_path)
    try:
        other.next_port()
        raise AssertionError("a held block was handed out twice")
    except PortsExhausted as err:
        assert "no free block" in str(err)
    holder.close()
    assert other.next_port() in small
    other.close()
