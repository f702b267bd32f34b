"""JSON-lines structured logs: one object per line on stderr, so the supervisor can merge them.

Usage::

    log = JsonLog("relay")
    log.info("started", ingest="tcp://127.0.0.1:7700")
    # {"ts":"2026-11-23T23:59:01.123Z","svc":"relay","level":"info","event":"started",...}
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Any, TextIO

import msgspec

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_encoder = msgspec.json.Encoder()


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def humanize(line: str) -> str:
    """A JSON log line as a person reads it on a terminal; other lines unchanged.

    {"ts":"...T23:59:01.123Z","svc":"relay","level":"info","event":"started","pid":7}
    -> 23:59:01.123 info  started pid=7
    """
    if not line.startswith("{"):
        return line
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return line
    if not isinstance(record, dict) or "event" not in record:
        return line
    ts = str(record.pop("ts", ""))[11:23]
    record.pop("svc", None)
    level = str(record.pop("level", ""))
    event = record.pop("event")
    fields = " ".join(
        f"{k}={v if isinstance(v, str | int | float) else _encoder.encode(v).decode()}"
        for k, v in record.items()
    )
    return f"{ts} {level:<5} {event} {fields}".rstrip()


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class JsonLog:
    def __init__(self, service: str, level: str = "info", stream: TextIO | None = None) -> None:
        self.service = service
        self.threshold = LEVELS.get(level, 20)
        self.stream = stream

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": _utc_now(), "svc": self.service, "level": level, "event": event}
        record.update(fields)
        try:
            line = _encoder.encode(record).decode()
        except (TypeError, msgspec.EncodeError):
            line = _encoder.encode({**record, **{k: repr(v) for k, v in fields.items()}}).decode()
        stream = self.stream or sys.stderr
        if isatty(stream) and os.environ.get("SHOAL_LOG_FORMAT") != "json":
            line = f"{self.service:<10}| {humanize(line)}"
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr (parent gone) must not take the service down

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


class Summary:
    """Counts noisy events (rejects) and logs what changed at most once per interval."""

    def __init__(self, log: JsonLog, event: str) -> None:
        self.log = log
        self.event = event
        self.pending: Counter[str] = Counter()
        self.example: dict[str, str] = {}

    def add(self, key: str, example: str = "") -> bool:
        """Count one; True when it is the first of its key since the last flush."""
        first = key not in self.pending
        self.pending[key] += 1
        if example and key not in self.example:
            self.example[key] = example[:200]
        return first

    def flush(self) -> None:
        if self.pending:
            self.log.warning(self.event, counts=dict(self.pending), examples=self.example)
            self.pending.clear()
            self.example = {}
