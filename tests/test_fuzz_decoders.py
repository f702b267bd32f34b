"""Every decoder fed hostile input (issue 13, "No input loses data", part 5).

Each decoder either returns messages that satisfy every documented limit, or raises its
documented error: ``codec.Rejected`` with a reason in ``codec.REJECT_REASONS`` for the
codec's decoders and the MQTT shim's, and for the raw msgspec decoders of the delegator,
the sim fleet and the shim's delegator side, exactly the exceptions their service catches
(a ValidationError names its reason through ``codec.classify_validation_error``). Never
anything else: an uncaught exception costs a service its whole receive pass.

Input: valid frames of every family (node messages, batches, requests, replies, acks, bus
frames, task messages both ways, wills) in msgpack and JSON, with one field replaced by a
hostile value (deep nesting 100..5,000, a str32/bin32/array32/map32 header claiming
2**32-1 items with a few bytes after it, NaN, inf, -0.0, 2**63, -1, 2**64, ids of every
shape, wrong types), spliced in as raw bytes where the encoder could not write it; and
truncations, byte mutations, bare deep nesting and bare huge headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.protocol import codec, limits
from shoal.protocol.messages import (
    Ack,
    BusFrame,
    Hello,
    NodeRecords,
    Reply,
    Request,
    Telemetry,
)
from shoal.protocol.tasks import (
    AssignReply,
    DelegatorMessage,
    NodeTaskMessage,
    Offer,
    Renew,
    Result,
)
from shoal.services.delegator.service import _decoder as delegator_decoder
from shoal.services.mqtt_shim import tasks as shim_tasks
from shoal.services.mqtt_shim import topics
from shoal.services.sim.fleet import _task_decoder as sim_decoder

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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


# --- what each decoder may return, and raise ----------------------------------------------


def check_rejected(err: BaseException) -> None:
    if isinstance(err, codec.Rejected):
        assert err.reason in codec.REJECT_REASONS, err
        if err.ident is not None:
            assert codec.valid_node_id(err.ident[0]), err.ident
    elif isinstance(err, msgspec.ValidationError):
        assert codec.classify_validation_error(err) in codec.REJECT_REASONS


def check_node_message(rec: Any) -> None:
    """Whatever passes satisfies every documented limit (NaN included: it fails them all)."""
    assert codec.valid_node_id(rec.node_id), rec.node_id
    assert 1 <= rec.boot_id <= limits.BOOT_ID_MAX
    assert 0 <= rec.seq <= limits.SEQ_MAX
    assert 0 <= rec.ts_ms <= limits.TS_MS_MAX
    if isinstance(rec, Telemetry):
        assert 0.0 <= rec.cpu_pct <= limits.CPU_PCT_MAX
        assert 0.0 <= rec.load_factor <= limits.LOAD_FACTOR_MAX
        assert 0 <= rec.queue_depth <= limits.QUEUE_MAX
    if isinstance(rec, Hello):
        assert rec.hb_interval_ms >= limits.HEARTBEAT_INTERVAL_MIN_MS
        assert rec.hb_interval_ms <= limits.HEARTBEAT_INTERVAL_MAX_MS


def check_ingest(result: Any) -> None:
    records, bad = result
    for rec in records:
        check_node_message(rec)
    for rej in bad:
        check_rejected(rej)


def check_request(req: Any) -> None:
    assert isinstance(req, Request)
    assert 0 <= req.id <= limits.SEQ_MAX and len(req.op) <= 64
    assert isinstance(req.args, dict) and all(isinstance(k, str) for k in req.args)


def check_bus(result: Any) -> None:
    topic, frame = result
    assert isinstance(topic, bytes) and codec.TOPIC_SEP not in topic
    assert isinstance(frame, BusFrame)  # type: ignore[arg-type]
    if isinstance(frame, NodeRecords):
        assert all(isinstance(r.node_id, str) for r in frame.records)


def check_node_task(msg: Any) -> None:
    assert isinstance(msg, NodeTaskMessage)  # type: ignore[arg-type]
    assert 1 <= len(msg.node_id) <= limits.NODE_ID_MAX_LEN
    assert 1 <= msg.boot_id <= limits.BOOT_ID_MAX
    if isinstance(msg, Offer):
        assert 1 <= len(msg.tasks) <= limits.MAX_OFFER_TASKS
        assert all(1 <= t.cost_ms <= limits.TASK_COST_MAX_MS for t in msg.tasks)
    if isinstance(msg, AssignReply | Result):
        assert 1 <= msg.epoch <= limits.SEQ_MAX
    if isinstance(msg, Renew):
        assert all(1 <= epoch <= limits.SEQ_MAX for _, epoch in msg.leases)


def check_delegator_message(msg: Any) -> None:
    assert isinstance(msg, DelegatorMessage)  # type: ignore[arg-type]
    assert isinstance(msg.node_id, str)


def check_will(will: Any) -> None:
    assert isinstance(will, topics.Will) and codec.valid_node_id(will.node_id)
    assert 1 <= will.boot_id <= limits.BOOT_ID_MAX and 0 <= will.seq <= limits.SEQ_MAX


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: Callable[[bytes], Any]
    raises: tuple[type[BaseException], ...]  # what its caller catches
    check: Callable[[Any], None]  # what a decoded message must satisfy
    family: list[dict[str, Any]]  # the frames it is meant for
    json: bool = False

    def __repr__(self) -> str:
        return self.name

    def feed(self, data: bytes) -> None:
        try:
            result = self.decode(data)
        except self.raises as err:
            check_rejected(err)
        except BaseException as err:
            raise AssertionError(f"{self.name} raised {err!r} on {data[:200]!r}") from err
        else:
            self.check(result)


REJECTED = (codec.Rejected,)
# What services/delegator/service.py _drain and mqtt_shim/tasks.py TaskBridge.drain catch;
# services/sim/fleet.py _drain_tasks catches codec.MALFORMED (ValidationError is a
# DecodeError).
MSGSPEC_ERRORS = (msgspec.ValidationError, *codec.MALFORMED)
MAX_PAYLOAD = 4096  # the shim's default max_payload
DECODERS = [
    Decoder("decode_ingest", codec.decode_ingest, REJECTED, check_ingest, INGEST),
    Decoder(
        "decode_ingest_json",
        lambda d: codec.decode_ingest(d, json=True),
        REJECTED,
        check_ingest,
        INGEST,
        json=True,
    ),
    Decoder("decode_request", codec.decode_request, REJECTED, check_request, REQUEST),
    Decoder("decode_reply", codec.decode_reply, REJECTED, lambda r: isinstance(r, Reply), REPLY),
    Decoder("decode_ack", codec.decode_ack, REJECTED, lambda a: isinstance(a, Ack), ACK),
    Decoder("decode_bus", lambda d: codec.decode_bus(b"rec|" + d), REJECTED, check_bus, BUS),
    Decoder("delegator", delegator_decoder.decode, MSGSPEC_ERRORS, check_node_task, NODE_TASKS),
    Decoder(
        "sim_tasks", sim_decoder.decode, codec.MALFORMED, check_delegator_message, DELEGATOR_TASKS
    ),
    Decoder(
        "shim_from_delegator",
        shim_tasks._from_delegator.decode,
        MSGSPEC_ERRORS,
        check_delegator_message,
        DELEGATOR_TASKS,
    ),
    Decoder(
        "shim_task_up",
        lambda d: shim_tasks.decode_task_up(d, MAX_PAYLOAD),
        REJECTED,
        check_node_task,
        NODE_TASKS,
        json=True,
    ),
    Decoder(
        "shim_will",
        lambda d: topics.decode_will(d, MAX_PAYLOAD),
        REJECTED,
        check_will,
        [WILL],
        json=True,
    ),
]


@pytest.mark.parametrize("decoder", DECODERS, ids=repr)
@FAST
@given(data=st.data())
def test_every_decoder_returns_valid_messages_or_rejects(decoder: Decoder, data: Any) -> None:
    decoder.feed(data.draw(frames(decoder.json, decoder.family)))


@pytest.mark.parametrize("decoder", DECODERS, ids=repr)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_the_other_encoding_is_refused_like_any_bad_frame(decoder: Decoder, data: Any) -> None:
    decoder.feed(data.draw(frames(not decoder.json, decoder.family)))


@settings(max_examples=60, deadline=None)
@given(st.integers(100, 5000), st.booleans(), st.sampled_from(TEMPLATES))
def test_deep_nesting_inside_every_family_is_refused(depth: int, maps: bool, template: Any) -> None:
    """As the value of every field of a valid frame, in both encodings."""
    for json in (False, True):
        deep = (deep_json if json else deep_msgpack)(depth, maps)
        hole = JS_HOLE if json else MP_HOLE
        for path in paths(template)[1:]:
            frame = encode(replaced(template, path, HOLE), json).replace(hole, deep)
            for decoder in DECODERS:
                if decoder.json == json:
                    decoder.feed(frame)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(HUGE_HEADERS), st.binary(max_size=16), st.sampled_from(TEMPLATES))
def test_huge_declared_lengths_are_refused_without_allocating(
    header: bytes, tail: bytes, template: Any
) -> None:
    for path in paths(template)[1:]:
        frame = encode(replaced(template, path, HOLE), False).replace(MP_HOLE, header + tail)
        for decoder in DECODERS:
            decoder.feed(frame)  # the JSON ones too: these bytes are not JSON


BAD_KEYS = [
    b"\xa2\xff\xfe",  # a str that is not UTF-8
    b"\xae" + b"\x00" * 13 + b"\x80",  # the same, once UnicodeDecodeError from msgspec
    b"\x01",  # an int
    b"\xc0",  # nil
    b"\xc4\x01a",  # bin
    b"\x91\x01",  # an array
    b"\x80",  # a map
    b"\xa4kind",  # a second "kind"
]


def test_hostile_keys_in_every_map_of_every_family() -> None:
    """Map keys that are not UTF-8, not strings, or repeated: in every map, both encodings'
    decoders (the JSON ones see msgpack, which they refuse as well)."""
    for template in TEMPLATES:
        for path in paths(template):
            if path[-1:] != (HOLE,):
                continue
            frame = encode(replaced(template, path, 1), False)
            for key in BAD_KEYS:
                for decoder in DECODERS:
                    decoder.feed(frame.replace(MP_HOLE, key))


def test_nan_inf_and_minus_zero_in_every_float_field() -> None:
    """NaN and infinities fail every range; -0.0 is 0.0, which is in range."""
    floats = [("cpu_pct", TELEMETRY), ("load_factor", TELEMETRY)]
    for field, template in floats:
        for raw in MP_RAW[:5]:
            frame = encode({**template, field: HOLE}, False).replace(MP_HOLE, raw)
            value = msgspec.msgpack.decode(raw)
            if math.isfinite(value):
                [rec], _ = codec.decode_ingest(frame)
                assert getattr(rec, field) == 0.0
            else:
                try:
                    codec.decode_ingest(frame)
                except codec.Rejected as rej:
                    assert rej.reason == "range"
                    assert rej.ident == ("esp-01", 439041101, 42)  # acked: it says who sent it
                else:
                    raise AssertionError(f"{field}={value} accepted")


def test_out_of_range_ints_in_every_int_field_are_range_or_schema() -> None:
    fields = ["boot_id", "seq", "ts_ms", "queue_depth", "queue_capacity", "free_heap", "rssi"]
    for field in fields:
        for value in (2**63, -1, 2**64 - 1, -(2**63)):
            try:
                codec.decode_ingest(msgspec.msgpack.encode({**TELEMETRY, field: value}))
            except codec.Rejected as rej:
                assert rej.reason in ("range", "schema")
            else:
                assert field == "rssi" and value == -1  # the one in range
        frame = msgspec.json.encode({**TELEMETRY, field: 0}).replace(
            f'"{field}":0'.encode(), f'"{field}":{2**64}'.encode()
        )
        try:
            codec.decode_ingest(frame, json=True)
        except codec.Rejected as rej:
            assert rej.reason in ("range", "schema")
        else:
            raise AssertionError(f"{field}=2**64 accepted")


@FAST
@given(st.sampled_from(IDS) | st.text(max_size=40))
def test_node_ids_of_every_shape_pass_only_when_they_match_the_pattern(node_id: str) -> None:
    valid = re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", node_id)  # §3.1, not the code's regex
    for template in (TELEMETRY, HELLO, {**NODE, "kind": "heartbeat"}):
        for json in (False, True):
            frame = encode({**template, "node_id": node_id}, json)
            try:
                records, _ = codec.decode_ingest(frame, json=json)
            except codec.Rejected as rej:
                assert rej.reason in codec.REJECT_REASONS and rej.ident is None
                assert not valid, f"{node_id!r} refused ({rej})"
            else:
                assert valid and records[0].node_id == node_id, f"{node_id!r} accepted"
    frame = encode({"v": 1, "kind": "batch", "records": [{**TELEMETRY, "node_id": node_id}]}, False)
    records, bad = codec.decode_ingest(frame)
    assert bool(records) == bool(valid) and all(r.ident is None for r in bad)


@FAST
@given(
    st.sampled_from(IDS) | st.text(max_size=40),
    st.sampled_from(["up", "will", "task/up", "task/down", "ack", "", "up/x", "//up"]),
    st.sampled_from(["shoal/v1/", "shoal/v2/", "", "/shoal/v1/", "shoal/v1//"]),
)
def test_the_shims_topic_parser_names_a_valid_board_or_nothing(
    node_id: str, channel: str, root: str
) -> None:
    parsed = topics.parse(root + node_id + "/" + channel)
    if parsed is not None:
        board, kind = parsed
        assert codec.valid_node_id(board) and board not in topics.RESERVED_IDS
        assert kind in (topics.UP, topics.WILL, topics.TASK)
        assert (root, board) == ("shoal/v1/", node_id)


@FAST
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_bus_frames_split_at_the_first_separator_or_are_malformed(
    topic: bytes, body: bytes
) -> None:
    try:
        got_topic, _ = codec.decode_bus(topic + body)
    except codec.Rejected as rej:
        assert rej.reason in codec.REJECT_REASONS
    else:
        assert got_topic == (topic + body).split(b"|", 1)[0]


def test_oversize_frames_are_refused_unread() -> None:
    big = encode({**TELEMETRY, "fw": "x" * limits.MAX_FRAME_BYTES}, False)
    for decode in (codec.decode_ingest, codec.decode_request):
        with pytest.raises(codec.Rejected, match=r"^oversize"):
            decode(big)
    for json_decode in (shim_tasks.decode_task_up, topics.decode_will):
        with pytest.raises(codec.Rejected, match=r"^oversize"):
            json_decode(b" " * (MAX_PAYLOAD + 1), MAX_PAYLOAD)
