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
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import (
    ACK,
    BUS,
    DELEGATOR_TASKS,
    HELLO,
    HOLE,
    HUGE_HEADERS,
    IDS,
    INGEST,
    JS_HOLE,
    MP_HOLE,
    MP_RAW,
    NODE,
    NODE_TASKS,
    REPLY,
    REQUEST,
    TELEMETRY,
    TEMPLATES,
    WILL,
    deep_json,
    deep_msgpack,
    encode,
    frames,
    paths,
    replaced,
)

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
    Assign,
    AssignReply,
    Completed,
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
    """What a node echoes back (the epoch, a completed's task id) passes the delegator's
    checks: a node that took epoch 2**53 had every renew after refused whole."""
    assert isinstance(msg, DelegatorMessage)  # type: ignore[arg-type]
    assert isinstance(msg.node_id, str)
    if isinstance(msg, Assign):
        assert 1 <= msg.epoch <= limits.SEQ_MAX
    if isinstance(msg, Completed):
        assert 1 <= len(msg.task_id) <= limits.TASK_ID_MAX_LEN


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
