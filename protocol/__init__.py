"""shoal's wire protocol: messages, limits and codecs (see docs/protocol.md)."""

from . import limits
from .codec import (
    REJECT_REASONS,
    Rejected,
    decode_ingest,
    encode,
    encode_json,
)
from .messages import (
    Ack,
    AckEntry,
    Batch,
    Goodbye,
    Heartbeat,
    Hello,
    NodeMessage,
    Telemetry,
)

__all__ = [
    "REJECT_REASONS",
    "Ack",
    "AckEntry",
    "Batch",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "NodeMessage",
    "Rejected",
    "Telemetry",
    "decode_ingest",
    "encode",
    "encode_json",
    "limits",
]
