"""Large ctl replies in chunks: no reply frame is ever larger than CTL_CHUNK_BYTES.

A result whose encoding is larger (the relay's snapshot of 10,000 nodes is ~4 MB) is kept
for a while under a blob id; the first Reply carries its first chunk with ``size`` (the
whole result's bytes) and ``blob``, and the client asks ``chunk {blob, offset}`` for the
rest. One encoding serves every chunk, so the result is one consistent instant (what the
Clone pattern needs from a snapshot), and a client's 1 MiB frame limit holds at any fleet
size. docs/protocol.md §7.3.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import OrderedDict
from typing import Annotated

import msgspec
from msgspec import Meta

# The largest reply frame a service sends: well under a client's 1 MiB MAXMSGSIZE.
CTL_CHUNK_BYTES = 256 * 1024
# The data in one chunk: its reply (a msgpack bin and the Reply around it) stays within
# CTL_CHUNK_BYTES, so a chunk is never chunked again.
CHUNK_DATA_BYTES = CTL_CHUNK_BYTES - 256
# Results kept for their chunks, and for how long: a client reads a 4 MB snapshot in
# well under a second; a client that never comes back costs at most this much memory.
BLOBS_KEPT = 4
BLOB_TTL_S = 30.0
RESULT_MAX_BYTES = 64 * 1024 * 1024


class ChunkArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of op ``chunk``."""

    blob: Annotated[int, Meta(ge=1, le=2**53 - 1)]
    offset: Annotated[int, Meta(ge=0, le=RESULT_MAX_BYTES)]


class BlobGone(Exception):
    """The blob expired, was evicted, or never existed: ask for the whole result again."""


class ChunkStore:
    """The server's side: large results by blob id, the newest BLOBS_KEPT for BLOB_TTL_S."""

    def __init__(self) -> None:
        self._blobs: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self._ids = itertools.count(random.randrange(1, 2**31))

    def put(self, data: bytes) -> int:
        self._expire()
        blob = next(self._ids)
        self._blobs[blob] = (data, time.monotonic() + BLOB_TTL_S)
        while len(self._blobs) > BLOBS_KEPT:
            self._blobs.popitem(last=False)
        return blob

    def chunk(self, blob: int, offset: int) -> bytes:
        self._expire()
        entry = self._blobs.get(blob)
        if entry is None:
            raise BlobGone(f"blob {blob} expired or unknown: ask for the result again")
        data = entry[0]
        if offset > len(data):
            raise BlobGone(f"offset {offset} beyond the result's {len(data)} bytes")
        return data[offset : offset + CHUNK_DATA_BYTES]

    def _expire(self) -> None:
        now = time.monotonic()
        for blob in [b for b, (_, until) in self._blobs.items() if until < now]:
            del self._blobs[blob]


class Reassembly:
    """The client's side: a result's chunks in order, until all ``size`` bytes are here."""

    def __init__(self, blob: int, size: int, first: bytes) -> None:
        if not 0 < size <= RESULT_MAX_BYTES:
            raise ValueError(f"a chunked result of {size} bytes")
        self.blob = blob
        self.size = size
        self.data = bytearray(first)

    def add(self, chunk: bytes) -> None:
        if not chunk or len(self.data) + len(chunk) > self.size:
            raise ValueError("a chunk that does not fit the announced size")
        self.data += chunk

    @property
    def complete(self) -> bool:
        return len(self.data) == self.size

    def next_args(self) -> dict[str, int]:
        return {"blob": self.blob, "offset": len(self.data)}
