"""What may cross the wire: every message is a msgspec Struct here, and nothing else.

Node messages (a node -> the relay) and bus frames (a service -> its subscribers) are
tagged unions on the field ``kind``; every message also carries the protocol version ``v``.
The same Structs decode msgpack (ZeroMQ) and JSON (devices over MQTT).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from . import limits as L

Version = Literal[1]
# The node_id pattern (limits.NODE_ID_PATTERN) is checked by codec.decode_ingest, with a
# cache of ids already seen: as a Struct constraint the regex ran on every message and was a
# third of the relay's decoding time.
NodeId = Annotated[str, Meta(min_length=1, max_length=L.NODE_ID_MAX_LEN)]
ServiceName = Annotated[str, Meta(pattern=L.SERVICE_NAME_PATTERN, max_length=L.NODE_ID_MAX_LEN)]
BootId = Annotated[int, Meta(ge=1, le=L.BOOT_ID_MAX)]
Seq = Annotated[int, Meta(ge=0, le=L.SEQ_MAX)]
TsMs = Annotated[int, Meta(ge=0, le=L.TS_MS_MAX)]
CpuPct = Annotated[float, Meta(ge=0.0, le=L.CPU_PCT_MAX)]
QueueLen = Annotated[int, Meta(ge=0, le=L.QUEUE_MAX)]
LoadFactor = Annotated[float, Meta(ge=0.0, le=L.LOAD_FACTOR_MAX)]
FreeHeap = Annotated[int, Meta(ge=0, le=L.FREE_HEAP_MAX_BYTES)]
Rssi = Annotated[int, Meta(ge=L.RSSI_MIN_DBM, le=L.RSSI_MAX_DBM)]
FirmwareVersion = Annotated[str, Meta(max_length=L.FIRMWARE_VERSION_MAX_LEN)]
Reason = Annotated[str, Meta(max_length=L.REASON_MAX_LEN)]
Via = Literal["zmq", "mqtt"]
HeartbeatIntervalMs = Annotated[
    int, Meta(ge=L.HEARTBEAT_INTERVAL_MIN_MS, le=L.HEARTBEAT_INTERVAL_MAX_MS)
]


class _NodeMessage(
    Struct, tag_field="kind", frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
    """Fields every node message carries: who, which boot, which message of that boot.

    gc=False: these hold only scalars and strings, so they cannot be part of a reference
    cycle, and untracked they cost the relay's garbage collector nothing.
    """

    v: Version = 1
    node_id: NodeId
    boot_id: BootId
    seq: Seq
    ts_ms: TsMs = 0  # the node's own clock: informative only, never trusted


class Hello(_NodeMessage, tag="hello", frozen=True, gc=False):
    """Birth: the first message of a boot, and the first after every reconnect."""

    fw: FirmwareVersion = ""
    hb_interval_ms: HeartbeatIntervalMs = 1000
    queue_capacity: QueueLen = 0
    # How the node reaches the relay: "zmq" directly, "mqtt" through the MQTT shim (the
    # shim sets it on every hello it forwards, whatever the board sent). The liveness
    # monitor suspends verdicts on "mqtt" nodes while the broker or the shim is down.
    via: Via = "zmq"


class Telemetry(_NodeMessage, tag="telemetry", frozen=True, gc=False):
    """A node's periodic load sample."""

    cpu_pct: CpuPct
    queue_depth: QueueLen
    queue_capacity: QueueLen
    load_factor: LoadFactor
    free_heap: FreeHeap | None = None
    rssi: Rssi | None = None
    fw: FirmwareVersion | None = None
    # Task state (nodes that take tasks; docs/delegation.md): in overload (hysteresis),
    # running now, and tasks handed out / taken in since boot.
    overloaded: bool | None = None
    tasks_running: QueueLen | None = None
    delegated_out: Annotated[int, Meta(ge=0, le=L.SEQ_MAX)] | None = None
    delegated_in: Annotated[int, Meta(ge=0, le=L.SEQ_MAX)] | None = None


class Heartbeat(_NodeMessage, tag="heartbeat", frozen=True, gc=False):
    """Proof of life, sent when nothing else was sent for one heartbeat interval."""


class Goodbye(_NodeMessage, tag="goodbye", frozen=True, gc=False):
    """Death announced: an orderly shutdown (or the MQTT last will, sent by the shim)."""

    reason: Reason = ""


NodeMessage = Hello | Telemetry | Heartbeat | Goodbye
NODE_MESSAGE_TYPES: tuple[type[_NodeMessage], ...] = (Hello, Telemetry, Heartbeat, Goodbye)


class Batch(Struct, tag="batch", tag_field="kind", frozen=True, forbid_unknown_fields=True):
    """Several node messages in one frame (a gateway, or a node flushing its buffer)."""

    records: Annotated[list[NodeMessage], Meta(max_length=L.MAX_BATCH_RECORDS)]
    v: Version = 1


IngestMessage = Hello | Telemetry | Heartbeat | Goodbye | Batch


class AckEntry(Struct, array_like=True, frozen=True, gc=False):
    """The relay has handled the messages first..last (inclusive) of (node_id, boot_id).

    Selective: it says nothing of seqs outside the range, so a message lost in flight is
    never covered by the ack of a later one.
    """

    node_id: str
    boot_id: int
    first: int
    last: int


class Ack(Struct, tag="ack", tag_field="kind", frozen=True):
    """Relay -> node (or gateway): what may be dropped from the node's retry buffer."""

    acks: list[AckEntry]
    v: Version = 1


# ---------------------------------------------------------------------------------------
# Bus frames: what a service publishes. Every frame carries its publisher's instance id
# (`pub`, new at every start) and a per-publisher sequence number (`pseq`), so a
# subscriber tells a restart from a gap.


class _BusFrame(Struct, tag_field="kind", frozen=True, kw_only=True):
    v: Version = 1
    pub: int
    pseq: int


class NodeRecords(_BusFrame, tag="records", frozen=True):
    """Accepted node messages, in arrival order, as the relay republishes them."""

    records: list[NodeMessage]


class ServiceBeat(_BusFrame, tag="svc_beat", frozen=True):
    """A service's own heartbeat, with its counters."""

    service: ServiceName
    pid: int
    uptime_s: float
    interval_ms: int
    counters: dict[str, int] = {}
    # How late the service's own timers ran lately (ms): a stalled loop is visible.
    loop_lag_ms: float = 0.0
    # The last pseq published on each of the service's other topics ("rec": 812): a
    # subscriber behind that number lost frames, even if no later frame came to show it.
    pseqs: dict[str, int] = {}


# ---------------------------------------------------------------------------------------
# Membership: what the liveness monitor publishes (topic "mem") and answers (op "members").
# Every time is on the monitor's own monotonic clock; a node's clock is never used.

MemberState = Literal["alive", "suspect", "dead", "left"]
# "forgotten": dropped from the table (by the operator, or dead/left for forget_after_s).
MemberEventKind = Literal["joined", "alive", "suspect", "dead", "rebooted", "left", "forgotten"]


class Evidence(Struct, frozen=True, kw_only=True, gc=False):
    """What the detector saw of one node when it decided (or now, in a snapshot)."""

    silence_ms: int  # since the node was last heard
    phi: float  # -log10 P(a live node would be this silent); capped at 99
    mean_ms: float  # mean interval between arrivals (the window's)
    std_ms: float  # their standard deviation
    samples: int  # intervals in the window
    expected_ms: int  # the interval the node announced (hello), else the learned mean
    suspect_after_ms: int  # silence at which this node becomes suspect
    dead_after_ms: int  # silence at which it becomes dead


class MemberEvent(Struct, frozen=True, kw_only=True):
    """One membership change of one node."""

    node_id: str
    boot_id: int
    event: MemberEventKind
    state: MemberState  # the state after the event
    prev: MemberState | None = None  # None for "joined"
    reason: str
    evidence: Evidence
    downtime_ms: int | None = None  # rebooted, or back after dead/left: how long it was gone


class Membership(_BusFrame, tag="membership", frozen=True):
    """Membership events decided in one pass of the monitor, in order."""

    events: list[MemberEvent]


class ObserverHealth(_BusFrame, tag="observer", frozen=True):
    """The monitor's trust in its own view changed.

    While degraded (relay silent, bus gap, own loop stalled, most nodes silent at once),
    no node is declared suspect or dead; on recovery every node's silence counts anew.
    """

    healthy: bool
    reasons: list[str]  # active reasons while degraded; empty when healthy
    detail: str = ""
    degraded_ms: int = 0  # on recovery: how long the monitor was degraded


BusFrame = NodeRecords | ServiceBeat | Membership | ObserverHealth


# ---------------------------------------------------------------------------------------
# Control: ROUTER/DEALER request and reply with an application-level id. Never REQ/REP.


class Request(Struct, tag="req", tag_field="kind", frozen=True, forbid_unknown_fields=True):
    """A control request; ``op`` names the operation, ``args`` are its arguments."""

    id: Annotated[int, Meta(ge=0, le=L.SEQ_MAX)]
    op: Annotated[str, Meta(max_length=64)]
    args: dict[str, Any] = {}
    v: Version = 1


class Reply(Struct, tag="rep", tag_field="kind", frozen=True):
    """The answer to one Request; ``result`` is op-specific (decode it with its type)."""

    id: int
    ok: bool
    result: msgspec.Raw = msgspec.Raw(b"\xc0")  # msgpack nil
    error: str = ""
    v: Version = 1
    # A result too large for one frame (services/runtime/chunks.py): ``result`` is a bin of
    # its first bytes, ``size`` the whole encoding's length, and op ``chunk`` with ``blob``
    # gives the rest. 0: ``result`` is the whole answer.
    size: int = 0
    blob: int = 0


class NodeView(Struct, frozen=True, kw_only=True):
    """What the relay knows of one node (one row of `shoal status`)."""

    node_id: str
    boot_id: int
    first_seq: int  # the lowest seq of this boot the relay has accepted
    last_seq: int
    age_ms: int  # since the relay last accepted a message from it, on the relay's clock
    msgs: int
    gaps: int
    duplicates: int
    rejects: int
    boots: int
    telemetry: Telemetry | None = None
    hello: Hello | None = None
    left: bool = False


class RelaySnapshot(Struct, frozen=True, kw_only=True):
    """The relay's last-value cache: apply bus frames with pseq > this pseq on top of it."""

    pub: int
    pseq: int
    nodes: list[NodeView]
    counters: dict[str, int]
    rejects: dict[str, int]


class ServiceStatus(Struct, frozen=True, kw_only=True):
    """Answer to op "status", which every service serves."""

    service: str
    pid: int
    pub: int
    uptime_s: float
    counters: dict[str, int]
    endpoints: dict[str, str]


class Member(Struct, frozen=True, kw_only=True):
    """One node as the liveness monitor sees it (one row of op "members")."""

    node_id: str
    boot_id: int
    state: MemberState
    since_ms: int  # how long it has been in this state
    reason: str  # why it is in this state
    boots: int  # boots seen by this monitor instance
    evidence: Evidence


class MembershipSnapshot(Struct, frozen=True, kw_only=True):
    """Answer to op "members": apply "mem" frames with pseq > this pseq on top of it."""

    pub: int
    pseq: int
    healthy: bool
    reasons: list[str]
    members: list[Member]
    counters: dict[str, int]
