"""Hostile input for the fuzz and stress tests: valid frames of every family of
docs/protocol.md (as builtins), hostile values, and hypothesis strategies that make one
field of a valid frame hostile, damage a frame, or build bad bytes from nothing.

A raw value (deep nesting, a huge declared length, NaN in float32, 2**64-1, a str that is
not UTF-8) is spliced into the encoded frame where ``HOLE`` was: no encoder would write it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

# --- valid frames of every family, as builtins (one field of them is made hostile) -----

TASK = {
    "task_id": "esp-01.439041101.7", "kind": "sha256", "cost_ms": 120, "arg": 3,
    "payload": "esp-01.439041101.7", "origin": "esp-01", "created_ms": 81234,
}  # fmt: skip
NODE = {"v": 1, "node_id": "esp-01", "boot_id": 439041101, "seq": 42, "ts_ms": 123456}
TELEMETRY = {
    **NODE, "kind": "telemetry", "cpu_pct": 37.5, "queue_depth": 3, "queue_capacity": 16,
    "load_factor": 0.62, "free_heap": 81234, "rssi": -61, "fw": "1.2.0", "overloaded": False,
    "tasks_running": 1, "delegated_out": 2, "delegated_in": 3,
}  # fmt: skip
HELLO = {**NODE, "kind": "hello", "fw": "1.2.0", "hb_interval_ms": 250, "queue_capacity": 16}
FROM_NODE = {"v": 1, "node_id": "esp-01", "boot_id": 439041101}
WILL = {"v": 1, "node_id": "esp-01", "boot_id": 439041101, "seq": 1}
EVIDENCE = {
    "silence_ms": 1400, "phi": 9.5, "mean_ms": 250.0, "std_ms": 12.5, "samples": 40,
    "expected_ms": 250, "suspect_after_ms": 700, "dead_after_ms": 1390,
}  # fmt: skip
INGEST = [
    TELEMETRY,
    HELLO,
    {**NODE, "kind": "heartbeat"},
    {**NODE, "kind": "goodbye", "reason": "shutdown"},
    {"v": 1, "kind": "batch", "records": [HELLO, TELEMETRY, {**NODE, "kind": "heartbeat"}]},
]
REQUEST = [
    {"kind": "req", "id": 17, "op": "status", "args": {"node_id": "esp-01", "latest": 5}, "v": 1}
]
REPLY = [{"kind": "rep", "id": 17, "ok": True, "result": {"pid": 1}, "error": "", "v": 1}]
ACK = [{"kind": "ack", "acks": [["esp-01", 439041101, 0, 4], ["esp-02", 1, 7, 7]], "v": 1}]
BUS = [
    {"kind": "records", "v": 1, "pub": 7, "pseq": 1, "records": [TELEMETRY, HELLO]},
    {
        "kind": "svc_beat",
        "v": 1,
        "pub": 7,
        "pseq": 2,
        "service": "relay",
        "pid": 10,
        "uptime_s": 1.5,
        "interval_ms": 500,
        "counters": {"accepted": 3},
        "pseqs": {"rec": 1},
        "loop_lag_ms": 0.5,
    },
    {
        "kind": "membership",
        "v": 1,
        "pub": 7,
        "pseq": 4,
        "events": [
            {
                "node_id": "esp-01",
                "boot_id": 5,
                "event": "dead",
                "state": "dead",
                "prev": "suspect",
                "reason": "silent",
                "evidence": EVIDENCE,
                "downtime_ms": None,
            }
        ],
    },
    {"kind": "observer", "v": 1, "pub": 7, "pseq": 3, "healthy": False, "reasons": ["bus_gap"]},
]
NODE_TASKS = [
    {"kind": "offer", **FROM_NODE, "msg_id": 4, "tasks": [TASK, {**TASK, "task_id": "t2"}]},
    {
        "kind": "assign_reply",
        **FROM_NODE,
        "task_id": TASK["task_id"],
        "epoch": 1,
        "accepted": True,
        "reason": "",
    },
    {"kind": "renew", **FROM_NODE, "leases": [[TASK["task_id"], 1]], "queued": 5, "capacity": 16},
    {
        "kind": "result",
        **FROM_NODE,
        "task_id": TASK["task_id"],
        "epoch": 1,
        "ok": True,
        "output": "684e",
        "error": "",
        "duration_ms": 131,
    },
    {"kind": "completed_ack", **FROM_NODE, "task_id": TASK["task_id"]},
]
DELEGATOR_TASKS = [
    {"kind": "taken", "node_id": "esp-01", "msg_id": 4, "taken": ["t"], "refused": [["u", "x"]]},
    {"kind": "assign", "node_id": "esp-02", "task": TASK, "epoch": 1, "lease_ms": 3000, "v": 1},
    {"kind": "result_ack", "node_id": "esp-02", "task_id": "t", "epoch": 1, "status": "committed"},
    {"kind": "completed", "node_id": "esp-01", "task_id": "t", "ok": True, "executor": "esp-02"},
]
TEMPLATES = INGEST + REQUEST + REPLY + ACK + BUS + NODE_TASKS + DELEGATOR_TASKS + [WILL]

# --- hostile values -----------------------------------------------------------------------

HOLE = "@@HOLE@@"  # stands for a raw value spliced into the encoded frame
MP_HOLE = msgspec.msgpack.encode(HOLE)
JS_HOLE = msgspec.json.encode(HOLE)

IDS = [
    "", "a" * 33, "a" * 10_000, "ESP-01", "Esp-01", "é", "节点", "\U0001f41f", "../../etc",
    "esp-01\n", "\nesp-01", "-esp", "esp 01", "esp_01", "\x00", "esp-01\x00", "a/b", "+", "#",
    "shim", "\u202eesp",
]  # fmt: skip
NUMBERS = [
    2**63, 2**63 - 1, -(2**63), 2**64 - 1, -1, 0, 1, 2**53, 2**53 - 1, 2**32, 2**32 - 1,
    -0.0, 0.5, 1e308, -1e308, 5e-324, 100.000001,
]  # fmt: skip
WRONG_TYPES: list[Any] = [
    None, True, False, "", "1", [], {}, [1, 2], {"a": 1}, {"": None}, b"\x00bin", 1.5,
]  # fmt: skip

HUGE_HEADERS = [
    b"\xdb\xff\xff\xff\xff",  # str32 of 2**32-1 bytes
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 items
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xda\xff\xff",  # str16
    b"\xdc\xff\xff",  # array16
    b"\xde\xff\xff",  # map16
]
MP_RAW = [
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # float64 NaN
    b"\xca\x7f\xc0\x00\x00",  # float32 NaN
    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # +inf
    b"\xcb\xff\xf0\x00\x00\x00\x00\x00\x00",  # -inf
    b"\xcb\x80\x00\x00\x00\x00\x00\x00\x00",  # -0.0
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 2**64-1
    b"\xcf\x80\x00\x00\x00\x00\x00\x00\x00",  # uint64 2**63
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 -2**63
    b"\xd0\xff",  # int8 -1
    b"\xc0",  # nil
    b"\xc1",  # never used
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp32
    b"\xc7\x0c\xff\x00\x00\x00\x00\x7f\xff\xff\xff\xff\xff\xff\xff",  # timestamp96, huge
    b"\xd4\x01\x00",  # fixext1
    b"\xa2\xff\xfe",  # a str that is not UTF-8
    b"\xa3\xed\xa0\x80",  # a UTF-8-encoded lone surrogate
]
JS_RAW = [
    b"NaN", b"Infinity", b"-Infinity", b"-0.0", b"1e999", b"-1e999", b"18446744073709551616",
    b"9223372036854775808", b"-9223372036854775809", b"1" * 400, b"1.0", b"1e3", b"true",
    b"null", b'"\\ud800"', b'"\xff\xfe"', b'"\\u0000"', b"[1,]", b"{", b'"unterminated',
]  # fmt: skip


def deep_msgpack(depth: int, maps: bool) -> bytes:
    return (b"\x81\xa1a" if maps else b"\x91") * depth + b"\x01"


def deep_json(depth: int, maps: bool) -> bytes:
    if maps:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"1" + b"]" * depth


depths = st.integers(100, 5000)
python_values = (
    st.sampled_from(IDS + NUMBERS + WRONG_TYPES)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=80)
)


@st.composite
def raw_values(draw: st.DrawFn, json: bool) -> bytes:
    """A hostile value as encoded bytes, to splice where a field's value was."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return (deep_json if json else deep_msgpack)(draw(depths), draw(st.booleans()))
    if choice == 1 and not json:
        return draw(st.sampled_from(HUGE_HEADERS)) + draw(st.binary(max_size=8))
    if choice == 2:
        return draw(st.sampled_from(JS_RAW if json else MP_RAW))
    value = draw(python_values)
    try:
        return msgspec.json.encode(value) if json else msgspec.msgpack.encode(value)
    except (msgspec.EncodeError, OverflowError, ValueError):
        return JS_RAW[0] if json else MP_RAW[0]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested structure a value can be replaced or added."""
    found = [prefix]
    if isinstance(value, dict):
        # An unknown field, and a key that is itself hostile (spliced like a value): a
        # key that is not UTF-8 once made msgspec raise UnicodeDecodeError.
        found += [(*prefix, "unknown_field"), (*prefix, HOLE)]
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value.get(head), rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


def templates(family: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly the decoder's own family; sometimes another's (a wrong kind, wrong fields)."""
    return st.sampled_from(family) | st.sampled_from(family) | st.sampled_from(TEMPLATES)


@st.composite
def hostile_field_frames(draw: st.DrawFn, json: bool, family: list[dict[str, Any]]) -> bytes:
    """A valid frame with one field (or a new one) made hostile."""
    template = draw(templates(family))
    path = draw(st.sampled_from(paths(template)))
    if draw(st.booleans()):
        raw = draw(raw_values(json))
        frame = encode(replaced(template, path, HOLE), json)
        return frame.replace(JS_HOLE if json else MP_HOLE, raw)
    frame = encode(replaced(template, path, draw(python_values)), json)
    return frame if frame else encode(template, json)


def encode(value: Any, json: bool) -> bytes:
    try:
        return msgspec.json.encode(value) if json else msgspec.msgpack.encode(value)
    except (msgspec.EncodeError, OverflowError, ValueError):
        return b""


@st.composite
def damaged_frames(draw: st.DrawFn, json: bool, family: list[dict[str, Any]]) -> bytes:
    """A valid frame truncated, or with some bytes changed, or with bytes after it."""
    frame = encode(draw(templates(family)), json)
    how = draw(st.integers(0, 2))
    if how == 0:
        return frame[: draw(st.integers(0, len(frame) - 1))]
    if how == 1:
        data = bytearray(frame)
        for pos, byte in draw(st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)))):
            data[pos % len(data)] = byte
        return bytes(data)
    return frame + draw(st.binary(min_size=1, max_size=16))


@st.composite
def bare_frames(draw: st.DrawFn, json: bool) -> bytes:
    """Deep nesting, huge declared lengths or garbage, with nothing around them."""
    how = draw(st.integers(0, 2))
    if how == 0:
        return (deep_json if json else deep_msgpack)(draw(depths), draw(st.booleans()))
    if how == 1:
        return draw(st.sampled_from(HUGE_HEADERS)) + draw(st.binary(max_size=16))
    return draw(st.binary(max_size=512))


def frames(json: bool, family: list[dict[str, Any]] = TEMPLATES) -> st.SearchStrategy[bytes]:
    return hostile_field_frames(json, family) | damaged_frames(json, family) | bare_frames(json)


def retarget(value: Any, names: dict[str, str]) -> Any:
    """A template with its node ids (and the task ids made of them) renamed."""
    if isinstance(value, dict):
        return {k: retarget(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [retarget(v, names) for v in value]
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
    return value
