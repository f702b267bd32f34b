"""Protocol: every kind round-trips in msgpack and JSON; every bad input maps to a reason."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol import codec, limits
from shoal.protocol.messages import Batch, Goodbye, Heartbeat, Hello, Telemetry

TEL = Telemetry(
    node_id="esp-01", boot_id=7, seq=3, ts_ms=1000, cpu_pct=42.5, queue_depth=3,
    queue_capacity=16, load_factor=0.8, free_heap=90000, rssi=-61, fw="1.0",
)  # fmt: skip


def telemetry_dict(**changes: object) -> dict[str, object]:
    d = msgspec.to_builtins(TEL)
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "msg",
    [
        TEL,
        Hello(node_id="a", boot_id=1, seq=0, fw="x", hb_interval_ms=250, queue_capacity=8),
        Heartbeat(node_id="a", boot_id=1, seq=1),
        Goodbye(node_id="a", boot_id=1, seq=2, reason="shutdown"),
    ],
)
def test_every_node_message_round_trips_in_msgpack_and_json(msg: object) -> None:
    for data, as_json in ((codec.encode(msg), False), (codec.encode_json(msg), True)):
        records, bad = codec.decode_ingest(data, json=as_json)
        assert records == [msg] and not bad


def test_every_message_carries_the_protocol_version() -> None:
    assert msgspec.json.decode(codec.encode_json(TEL))["v"] == limits.PROTOCOL_VERSION


def test_device_json_with_optional_fields_missing_decodes() -> None:
    payload = b'{"v":1,"kind":"telemetry","node_id":"esp-01","boot_id":9,"seq":0,"cpu_pct":1,"queue_depth":0,"queue_capacity":4,"load_factor":0.1}'
    [msg], bad = codec.decode_ingest(payload, json=True)  # bad: a sequence, empty
    assert isinstance(msg, Telemetry) and msg.free_heap is None and not bad


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\xc1 garbage", "malformed"),
        (b"\xff", "schema"),
        (codec.encode(TEL)[:-5], "malformed"),
        (msgspec.msgpack.encode(telemetry_dict(kind="bogus")), "schema"),
        (msgspec.msgpack.encode(telemetry_dict(cpu_pct="high")), "schema"),
        (
            msgspec.msgpack.encode({k: v for k, v in telemetry_dict().items() if k != "seq"}),
            "schema",
        ),
        (msgspec.msgpack.encode(telemetry_dict(extra=1)), "schema"),
        (msgspec.msgpack.encode(telemetry_dict(v=2)), "version"),
        (msgspec.msgpack.encode(telemetry_dict(cpu_pct=100.5)), "range"),
        (msgspec.msgpack.encode(telemetry_dict(seq=-1)), "range"),
        (msgspec.msgpack.encode(telemetry_dict(boot_id=0)), "range"),
        (msgspec.msgpack.encode(telemetry_dict(node_id="Bad_ID")), "range"),
        (msgspec.msgpack.encode(telemetry_dict(node_id="a" * 33)), "range"),
        (msgspec.msgpack.encode(telemetry_dict(rssi=5)), "range"),
        (b"\x00" * (limits.MAX_FRAME_BYTES + 1), "oversize"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.Rejected) as info:
        codec.decode_ingest(data)
    assert info.value.reason == reason


def test_a_bad_record_in_a_batch_loses_nothing_else() -> None:
    good = [msgspec.to_builtins(Heartbeat(node_id="a", boot_id=1, seq=i)) for i in range(3)]
    bad = telemetry_dict(cpu_pct=500)
    frame = msgspec.msgpack.encode(
        {"v": 1, "kind": "batch", "records": [good[0], bad, good[1], good[2]]}
    )
    records, rejected = codec.decode_ingest(frame)
    assert [r.seq for r in records] == [0, 1, 2]
    assert [r.reason for r in rejected] == ["range"]


def test_a_record_with_a_bad_node_id_in_a_batch_is_refused_alone_and_not_identified() -> None:
    """Not identified, so never acked: no ack names an id no node may have (§4.2)."""
    good = msgspec.to_builtins(Heartbeat(node_id="a", boot_id=1, seq=0))
    bad = {**good, "node_id": "Not-Valid", "seq": 1}
    frame = msgspec.msgpack.encode({"v": 1, "kind": "batch", "records": [good, bad]})
    records, rejected = codec.decode_ingest(frame)
    assert [r.node_id for r in records] == ["a"]
    assert [(r.reason, r.ident) for r in rejected] == [("range", None)]


def test_node_id_check_is_the_same_for_a_known_and_a_new_id() -> None:
    for _ in range(2):  # the second time the id is in the cache of valid ids
        assert codec.valid_node_id("esp-01")
        assert not codec.valid_node_id("esp-01\n")
        assert not codec.valid_node_id("-esp")


def test_a_batch_over_the_record_limit_is_refused() -> None:
    hb = msgspec.to_builtins(Heartbeat(node_id="a", boot_id=1, seq=1))
    frame = msgspec.msgpack.encode(
        {"v": 1, "kind": "batch", "records": [hb] * (limits.MAX_BATCH_RECORDS + 1)}
    )
    with pytest.raises(codec.Rejected) as info:
        codec.decode_ingest(frame)
    assert info.value.reason == "range"


def test_a_valid_batch_decodes_every_record() -> None:
    batch = Batch(records=[Heartbeat(node_id="a", boot_id=1, seq=i) for i in range(10)])
    records, bad = codec.decode_ingest(codec.encode(batch))
    assert len(records) == 10 and not bad


def test_bus_frame_splits_on_first_separator() -> None:
    topic, body = codec.split_bus(b"rec|\x81\xa1|\x01")
    assert topic == b"rec" and bytes(body) == b"\x81\xa1|\x01"
    with pytest.raises(codec.Rejected):
        codec.split_bus(b"no separator")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    ["v", "kind", "node_id", "boot_id", "seq", "ts_ms", "cpu_pct", "queue_depth", "queue_capacity",
     "load_factor", "free_heap", "rssi", "fw", "records", "reason", "hb_interval_ms"]
)  # fmt: skip
kinds = st.sampled_from(["telemetry", "heartbeat", "hello", "goodbye", "batch", "ack", "x"])
message_like = st.fixed_dictionaries({"kind": kinds}, optional={"v": st.integers(0, 3)}).flatmap(
    lambda base: st.dictionaries(field_names, json_values, max_size=12).map(lambda d: {**d, **base})
)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_decoder_on_random_bytes_only_ever_rejects(data: bytes) -> None:
    for as_json in (False, True):
        try:
            records, bad = codec.decode_ingest(data, json=as_json)
        except codec.Rejected as rej:
            assert rej.reason in codec.REJECT_REASONS
        else:
            assert all(r.reason in codec.REJECT_REASONS for r in bad)


@settings(max_examples=1000, deadline=None)
@given(message_like)
def test_fuzz_decoder_on_message_shaped_input_validates_or_rejects(msg: dict[str, object]) -> None:
    try:
        data = msgspec.msgpack.encode(msg)
    except (OverflowError, msgspec.EncodeError):
        return
    try:
        records, _ = codec.decode_ingest(data)
    except codec.Rejected as rej:
        assert rej.reason in codec.REJECT_REASONS
        return
    for rec in records:  # whatever passes must satisfy every documented limit
        assert 1 <= rec.boot_id <= limits.BOOT_ID_MAX
        assert 0 <= rec.seq <= limits.SEQ_MAX
        if isinstance(rec, Telemetry):
            assert 0 <= rec.cpu_pct <= limits.CPU_PCT_MAX


def test_a_map_key_that_is_not_utf8_is_malformed_not_a_crash() -> None:
    # Found by the fuzz test: msgspec raises UnicodeDecodeError for it in some paths.
    data = b"\x81\xae" + b"\x00" * 13 + b"\x80\x00"
    with pytest.raises(codec.Rejected) as info:
        codec.decode_ingest(data)
    assert info.value.reason in ("malformed", "schema")


VALID_FRAMES = [
    codec.encode(TEL),
    codec.encode(Batch(records=[TEL, Heartbeat(node_id="a", boot_id=1, seq=2)])),
    codec.encode_json(TEL),
]


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(range(len(VALID_FRAMES))),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_decoder_on_mutated_valid_frames_only_ever_rejects(
    which: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(VALID_FRAMES[which])
    for pos, byte in flips:
        data[pos % len(data)] = byte
    for as_json in (False, True):
        try:
            records, bad = codec.decode_ingest(bytes(data), json=as_json)
        except codec.Rejected as rej:
            assert rej.reason in codec.REJECT_REASONS
        else:
            assert all(r.reason in codec.REJECT_REASONS for r in bad)
            assert all(codec.valid_node_id(r.node_id) for r in records)
