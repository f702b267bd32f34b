"""A load generator standing in for many boards: N MQTT 3.1.1 clients in one asyncio loop.

Each client does what a board does on the wire (docs/protocol.md §11.1): CONNECT with its
node_id as client id and a will of a reserved seq, SUBSCRIBE to its ack topic, a hello
(seq 0; seq 1 is the will's), then one telemetry record every 1/rate_hz s, phases spread
evenly over the period. Incoming packets (acks) are read and counted, not parsed further.
It is not a board: no ring, no resends; what the relay did not get is counted as lost.

It runs as a child process driven over a Pipe:

    -> "ready" (every client has its CONNACK and SUBACK)
    <- "go"                     start publishing
    <- ("abort", [node, ...])   drop those connections without DISCONNECT (the will fires);
    -> {node: monotonic time of the abort}
    <- "stop"                   stop publishing, DISCONNECT the rest
    -> {"sent": {node: [(seq, t_publish), ...]}, "acks": int, "errors": int}

Times are time.monotonic(): CLOCK_MONOTONIC, the same clock in every process here.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

CONNECT_CONCURRENCY = 50  # connections opened at once: a broker's accept queue is finite
KEEPALIVE_S = 60
CONNECT_ATTEMPTS = 3


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, will_topic: str, will: bytes) -> bytes:
    flags = 0x02 | 0x04 | (1 << 3)  # clean session, will, will QoS 1
    body = _str("MQTT") + bytes([4, flags]) + KEEPALIVE_S.to_bytes(2, "big")
    return _packet(0x10, body + _str(client_id) + _str(will_topic) + _str(will))


def subscribe_packet(pid: int, topic: str) -> bytes:
    return _packet(0x82, pid.to_bytes(2, "big") + _str(topic) + b"\x00")


def publish_packet(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _str(topic) + payload)  # QoS 0, no packet id


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


def telemetry(node: str, boot: int, seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "kind": "telemetry",
            "node_id": node,
            "boot_id": boot,
            "seq": seq,
            "cpu_pct": 37.5,
            "queue_depth": 3,
            "queue_capacity": 16,
            "load_factor": 0.62,
            "free_heap": 81234,
            "rssi": -61,
            "fw": "1.2.0",
        },
        separators=(",", ":"),
    ).encode()


class FakeBoard:
    def __init__(self, node: str, boot: int, period_s: float, phase_s: float) -> None:
        self.node, self.boot = node, boot
        self.period_s, self.phase_s = period_s, phase_s
        self.up = f"shoal/v1/{node}/up"
        self.sent: list[tuple[int, float]] = []
        self.acks = 0
        self.errors = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        will = json.dumps({"v": 1, "node_id": self.node, "boot_id": self.boot, "seq": 1})
        self.writer.write(connect_packet(self.node, f"shoal/v1/{self.node}/will", will.encode()))
        self.writer.write(subscribe_packet(1, f"shoal/v1/{self.node}/ack"))
        kind, _ = await read_packet(self.reader)
        if kind != 2:
            raise RuntimeError(f"{self.node}: packet type {kind} before CONNACK")
        while kind != 9:  # SUBACK; a PUBLISH may come first
            kind, _ = await read_packet(self.reader)
            self.acks += kind == 3
        hello = {"v": 1, "kind": "hello", "node_id": self.node, "boot_id": self.boot, "seq": 0}
        hello.update(ts_ms=0, fw="1.2.0", hb_interval_ms=int(self.period_s * 1000))
        hello.update(queue_capacity=16)
        self.writer.write(publish_packet(self.up, json.dumps(hello).encode()))
        self.tasks.append(asyncio.create_task(self._read()))

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                kind, _ = await read_packet(self.reader)
                self.acks += kind == 3
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def start(self, t0: float) -> None:
        self.tasks.append(asyncio.create_task(self._publish(t0)))

    async def _publish(self, t0: float) -> None:
        assert self.writer is not None
        seq, due = 2, t0 + self.phase_s
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.writer.is_closing():
                return
            self.sent.append((seq, time.monotonic()))
            self.writer.write(publish_packet(self.up, telemetry(self.node, self.boot, seq)))
            seq, due = seq + 1, due + self.period_s

    def abort(self) -> float:
        """The connection ends without DISCONNECT (a reset): the broker sends the will."""
        assert self.writer is not None
        for task in self.tasks:
            task.cancel()
        self.writer.transport.abort()
        return time.monotonic()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(b"\xe0\x00")  # DISCONNECT: no will
            self.writer.close()


async def _main(port: int, nodes: list[str], rate_hz: float, conn: Any) -> None:
    period = 1.0 / rate_hz
    boards = [
        FakeBoard(node, 1000 + i, period, period * i / len(nodes)) for i, node in enumerate(nodes)
    ]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(board: FakeBoard) -> None:
        async with gate:
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    return await board.connect(port)
                except (OSError, RuntimeError, asyncio.IncompleteReadError):
                    board.errors += 1  # counted; a broker under a connect storm may refuse
                    if attempt == CONNECT_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    await asyncio.gather(*(connect(b) for b in boards))
    by_node = {b.node: b for b in boards}
    conn.send("ready")
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while True:
        command = await commands.get()
        if command == "go":
            t0 = time.monotonic()
            for b in boards:
                b.start(t0)
        elif isinstance(command, tuple) and command[0] == "abort":
            conn.send({node: by_node[node].abort() for node in command[1]})
        elif command == "stop":
            break
    loop.remove_reader(conn.fileno())
    await asyncio.gather(*(b.close() for b in boards))
    conn.send(
        {
            "sent": {b.node: b.sent for b in boards},
            "acks": sum(b.acks for b in boards),
            "errors": sum(b.errors for b in boards),
        }
    )


def run(port: int, nodes: list[str], rate_hz: float, conn: Any) -> None:
    """The child's entry point (multiprocessing, spawn)."""
    asyncio.run(_main(port, nodes, rate_hz, conn))
