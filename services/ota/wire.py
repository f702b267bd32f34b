"""The OTA payloads on MQTT (docs/protocol.md section 13), as the service reads and writes
them. Topics, all under the board's own root (a board's broker account may touch nothing
else):

    shoal/v1/<node_id>/ota/down   service -> board   an offer or an abort (JSON), or a chunk
    shoal/v1/<node_id>/ota/up     board -> service   a chunk request or a status (JSON)

A chunk is ``b"K"`` + a JSON header ``{"version","f","o","h"}`` + ``b"\\n"`` + the bytes,
where ``h`` is the sha256 of those bytes in hex. Everything is QoS 0: the board asks again
when an answer does not come.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shoal.protocol import codec
from shoal.protocol.messages import NodeId

ROOT = "shoal/v1/"
UP_FILTER = ROOT + "+/ota/up"
CHUNK_MAX = 2048  # the largest chunk a board may ask for (its MQTT client takes 4 KB)

Version = Annotated[str, Meta(min_length=1, max_length=40)]


class Get(msgspec.Struct, frozen=True, tag_field="kind", tag="ota_get"):
    node_id: NodeId
    version: Version
    f: Annotated[int, Meta(ge=0, le=1000)]
    path: Annotated[str, Meta(max_length=200)]
    o: Annotated[int, Meta(ge=0, le=1 << 24)]
    n: Annotated[int, Meta(ge=1, le=CHUNK_MAX)]
    v: int = 1


class Result(msgspec.Struct, frozen=True):
    version: str | None = None
    result: str = ""
    detail: str = ""
    # "from": the version it came from (a keyword in Python)
    from_version: str | None = msgspec.field(default=None, name="from")


BoardState = Literal["idle", "downloading", "switching", "trial", "failed"]


class Status(msgspec.Struct, frozen=True, tag_field="kind", tag="ota_status"):
    node_id: NodeId
    fw: Annotated[str, Meta(max_length=64)]
    state: BoardState
    version: str | None = None
    done: int = 0
    total: int = 0
    detail: str = ""
    bad_chunks: int = 0
    retries: int = 0
    result: Result | None = None
    v: int = 1


_decoder = msgspec.json.Decoder(Get | Status)
_json = msgspec.json.Encoder()


def up_topic(node_id: str) -> str:
    return f"{ROOT}{node_id}/ota/up"


def down_topic(node_id: str) -> str:
    return f"{ROOT}{node_id}/ota/down"


def node_of(topic: str) -> str | None:
    """The node id of ``shoal/v1/<node_id>/ota/up``; None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "shoal" or parts[1] != "v1" or parts[3:] != ["ota", "up"]:
        return None
    return parts[2] if codec.valid_node_id(parts[2]) else None


def decode(payload: bytes, max_bytes: int = 4096) -> Get | Status:
    """A board's message, or codec.Rejected with the reason."""
    if len(payload) > max_bytes:
        raise codec.Rejected("oversize", f"{len(payload)} bytes > {max_bytes}")
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as err:
        raise codec.Rejected(codec.classify_validation_error(err), str(err)) from None
    except codec.MALFORMED as err:
        raise codec.Rejected("malformed", str(err)) from None


def offer(version: str, chunk: int, files: list[tuple[str, int, str]]) -> bytes:
    return _json.encode(
        {"v": 1, "kind": "ota_offer", "version": version, "chunk": chunk, "files": files}
    )


def abort(version: str) -> bytes:
    return _json.encode({"v": 1, "kind": "ota_abort", "version": version})


def chunk(version: str, f: int, o: int, data: bytes) -> bytes:
    head = _json.encode({"version": version, "f": f, "o": o, "h": hashlib.sha256(data).hexdigest()})
    return b"K" + head + b"\n" + data
