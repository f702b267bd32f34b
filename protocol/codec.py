"""Encoding, decoding and framing, with every failure named by a reject reason.

ZeroMQ frames carry msgpack; device payloads (MQTT) carry JSON; both decode into the Structs
of messages.py. A decode failure raises ``Rejected`` with one of ``REJECT_REASONS``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from . import limits as L
from .messages import (
    Ack,
    Batch,
    BootId,
    BusFrame,
    IngestMessage,
    NodeId,
    NodeMessage,
    Reply,
    Request,
    Seq,
)

# Why a message was refused. Counted per reason by whoever refuses it.
REJECT_REASONS = (
    "malformed",  # not msgpack / JSON at all, or truncated
    "schema",  # decodes, but a field is missing, of the wrong type, or the kind is unknown
    "version",  # a protocol version this build does not speak
    "range",  # a value outside its documented range or pattern
    "oversize",  # a frame larger than MAX_FRAME_BYTES
    "duplicate",  # (node_id, boot_id, seq) already accepted
    "stale",  # older than the de-duplication window, or from a replaced boot
    "rate_limited",  # the node exceeded its message rate
    "too_many_nodes",  # a new node id beyond the relay's node limit
    # A new node id from a connection that already brought in relay.new_ids_per_conn ids
    # that have not sent a second message yet (docs/protocol.md §5.5)
    "too_many_new_ids",
    # A node id spoken by a connection other than the one that owns it (the relay binds an
    # id to the connection it was last accepted from; docs/protocol.md §5.7)
    "impersonation",
    # A node id the connection's key may not speak for (Curve on: a node key's ``nodes``
    # patterns; docs/protocol.md §14)
    "forbidden",
    # A node id that belongs to another relay shard (crc32(node_id) % relay.shards): the
    # gateway counts shards otherwise than this relay (docs/protocol.md §5.8)
    "wrong_shard",
)


# What a decoder raises on bytes that are not a message at all. msgspec raises
# UnicodeDecodeError (not DecodeError) for a map key that is not UTF-8 while it reports an
# unknown field: the fuzz test found it. And RecursionError for nesting about 1,000 deep
# (a map in a map in a map...), msgpack or JSON: the MQTT shim's tests found it.
MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Rejected(Exception):
    """A message refused, with the reason counted and a detail for the log.

    ``ident`` is (node_id, boot_id, seq) when the refused record still says who sent it,
    so the relay can ack it: the node must not resend what will never be accepted.
    """

    def __init__(
        self, reason: str, detail: str = "", ident: tuple[str, int, int] | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.ident = ident


class _Ident(msgspec.Struct):
    """Just enough of a node message to say who sent it (other fields are ignored)."""

    node_id: NodeId
    boot_id: BootId
    seq: Seq


def classify_validation_error(err: msgspec.ValidationError) -> str:
    """Map msgspec's validation message onto a reject reason."""
    text = str(err)
    if text.endswith("`$.v`") or ".v`" in text.rsplit(" - at ", 1)[-1]:
        return "version"
    if any(mark in text for mark in (">=", "<=", "matching regex", "length")):
        return "range"
    return "schema"


class _RawBatch(msgspec.Struct, tag="batch", tag_field="kind", forbid_unknown_fields=True):
    """A batch whose records are left undecoded, to decode one by one after a bad record."""

    records: list[msgspec.Raw]
    v: int = 1


_mp_ingest = msgspec.msgpack.Decoder(IngestMessage)
_mp_node = msgspec.msgpack.Decoder(NodeMessage)
_mp_raw_batch = msgspec.msgpack.Decoder(_RawBatch)
_js_ingest = msgspec.json.Decoder(IngestMessage)
_js_node = msgspec.json.Decoder(NodeMessage)
_js_raw_batch = msgspec.json.Decoder(_RawBatch)
_mp_ident = msgspec.msgpack.Decoder(_Ident)
_js_ident = msgspec.json.Decoder(_Ident)

_mp_encoder = msgspec.msgpack.Encoder()
_js_encoder = msgspec.json.Encoder()


def _decode(decoder: Any, data: bytes | memoryview) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as err:
        raise Rejected(classify_validation_error(err), str(err)) from None
    except MALFORMED as err:
        raise Rejected("malformed", str(err)) from None


def _identify(decoder: Any, data: bytes | memoryview) -> tuple[str, int, int] | None:
    try:
        ident = decoder.decode(data)
    except MALFORMED:
        return None
    # A refused record is acked only under an id that could own a node (§4.2): an ack for
    # "../../etc" would tell a client that such an id was heard.
    if not valid_node_id(ident.node_id):
        return None
    return (ident.node_id, ident.boot_id, ident.seq)


def _decode_record(node: Any, ident: Any, data: bytes | memoryview) -> Any:
    try:
        return _decode(node, data)
    except Rejected as rej:
        rej.ident = _identify(ident, data)
        raise


_NODE_ID_RE = re.compile(L.NODE_ID_PATTERN)
# Node ids that matched the pattern already. Cleared when full, so hostile ids cost a
# regex each, never unbounded memory.
_valid_ids: set[str] = set()
_VALID_IDS_MAX = 100_000
_NO_REJECTS: Sequence[Rejected] = ()


def valid_node_id(node_id: str) -> bool:
    if node_id in _valid_ids:
        return True
    if _NODE_ID_RE.match(node_id) is None:
        return False
    if len(_valid_ids) >= _VALID_IDS_MAX:
        _valid_ids.clear()
    _valid_ids.add(node_id)
    return True


def _bad_node_id(rec: Any) -> Rejected:
    """Not acked: nothing is acked under an id that no node may have (§4.2)."""
    return Rejected("range", f"node_id {rec.node_id[:40]!r} does not match {L.NODE_ID_PATTERN}")


def _split_bad_ids(
    records: list[NodeMessage], bad: list[Rejected]
) -> tuple[list[NodeMessage], Sequence[Rejected]]:
    """Move records whose node_id fails the pattern to the rejections."""
    for rec in records:
        if rec.node_id not in _valid_ids and not valid_node_id(rec.node_id):
            break
    else:
        return records, bad or _NO_REJECTS
    good = []
    for rec in records:
        if valid_node_id(rec.node_id):
            good.append(rec)
        else:
            bad.append(_bad_node_id(rec))
    return good, bad


def decode_ingest(
    data: bytes | memoryview, *, json: bool = False
) -> tuple[list[NodeMessage], Sequence[Rejected]]:
    """Decode one ingest frame into its node messages.

    A single message comes back as a one-element list. In a batch, a bad record is
    returned among the rejections and the good records around it are kept.
    Raises Rejected when the frame as a whole is unusable.
    """
    if len(data) > L.MAX_FRAME_BYTES:
        raise Rejected("oversize", f"{len(data)} bytes > {L.MAX_FRAME_BYTES}")
    try:
        msg = (_js_ingest if json else _mp_ingest).decode(data)
    except msgspec.ValidationError as err:
        node, raw_batch, ident = (
            (_js_node, _js_raw_batch, _js_ident) if json else (_mp_node, _mp_raw_batch, _mp_ident)
        )
        # The frame parses; if it is a batch, salvage the records that are valid.
        try:
            batch = raw_batch.decode(data)
        except MALFORMED:
            reason = classify_validation_error(err)
            raise Rejected(reason, str(err), _identify(ident, data)) from None
        if batch.v != L.PROTOCOL_VERSION:
            raise Rejected("version", f"batch version {batch.v}") from None
        if len(batch.records) > L.MAX_BATCH_RECORDS:
            raise Rejected("range", f"batch of {len(batch.records)} records") from None
        good: list[NodeMessage] = []
        bad: list[Rejected] = []
        for raw in batch.records:
            try:
                good.append(_decode_record(node, ident, raw))
            except Rejected as rej:
                bad.append(rej)
        return _split_bad_ids(good, bad)
    except MALFORMED as err:
        raise Rejected("malformed", str(err)) from None
    if isinstance(msg, Batch):
        return _split_bad_ids(msg.records, [])
    if msg.node_id not in _valid_ids and not valid_node_id(msg.node_id):
        raise _bad_node_id(msg)
    return [msg], _NO_REJECTS


def encode(msg: Any) -> bytes:
    """msgpack, for ZeroMQ frames."""
    return _mp_encoder.encode(msg)


def encode_json(msg: Any) -> bytes:
    """JSON, for device payloads."""
    return _js_encoder.encode(msg)


# ---------------------------------------------------------------------------------------
# Bus framing: one frame = topic + b"|" + msgpack body. SUB filters on the topic prefix,
# and the separator keeps "rec" from matching "records". Single-frame beats two-frame
# multipart in pyzmq (bench/framing.py measures it).

TOPIC_SEP = b"|"
TOPIC_NODE_RECORDS = b"rec"
TOPIC_SERVICE_BEAT = b"svc"
TOPIC_MEMBERSHIP = b"mem"  # the liveness monitor's Membership and ObserverHealth

_bus_decoder = msgspec.msgpack.Decoder(BusFrame)


def encode_bus(topic: bytes, frame: Any) -> bytes:
    return topic + TOPIC_SEP + _mp_encoder.encode(frame)


def split_bus(data: bytes) -> tuple[bytes, memoryview]:
    """Topic and body of a bus frame; Rejected("malformed") without a separator."""
    cut = data.find(TOPIC_SEP)
    if cut < 0:
        raise Rejected("malformed", "bus frame without topic separator")
    return data[:cut], memoryview(data)[cut + 1 :]


def decode_bus(data: bytes) -> tuple[bytes, BusFrame]:
    if len(data) > L.MAX_BUS_FRAME_BYTES:
        raise Rejected("oversize", f"{len(data)} bytes > {L.MAX_BUS_FRAME_BYTES}")
    topic, body = split_bus(data)
    return topic, _decode(_bus_decoder, body)


_req_decoder = msgspec.msgpack.Decoder(Request)
_rep_decoder = msgspec.msgpack.Decoder(Reply)
_ack_decoder = msgspec.msgpack.Decoder(Ack)


def decode_request(data: bytes) -> Request:
    if len(data) > L.MAX_FRAME_BYTES:
        raise Rejected("oversize", f"{len(data)} bytes > {L.MAX_FRAME_BYTES}")
    return _decode(_req_decoder, data)  # type: ignore[no-any-return]


def decode_reply(data: bytes) -> Reply:
    if len(data) > L.MAX_BUS_FRAME_BYTES * 16:  # a snapshot of a large fleet is big
        raise Rejected("oversize", f"{len(data)} bytes")
    return _decode(_rep_decoder, data)  # type: ignore[no-any-return]


def decode_ack(data: bytes | memoryview) -> Ack:
    if len(data) > L.MAX_BUS_FRAME_BYTES:
        raise Rejected("oversize", f"{len(data)} bytes > {L.MAX_BUS_FRAME_BYTES}")
    return _decode(_ack_decoder, data)  # type: ignore[no-any-return]
