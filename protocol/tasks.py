"""Tasks and the delegation protocol between nodes and the delegator.

A node runs tasks from its own bounded queue. When it is overloaded it offers tasks to the
delegator, which writes them to its ledger before it says "taken" (from then on the ledger
owns them), places each on a healthy peer with an assignment (a lease and an epoch), and
commits the result once. The origin gets the result back.

Transport: ZeroMQ DEALER (a node or a gateway) -> the delegator's ROUTER, one msgpack frame
per message, tagged by ``kind``, ``v`` in every message; device JSON over MQTT later. Every
message that changes state is acknowledged by a message naming what it answers, and resent
until then: delivery is at least once, every handler is idempotent.

    node                      delegator                     peer
    offer(tasks) ----------->  ledger: pending
                 <---------- taken(msg_id, task ids)
                               ledger: assigned(epoch e)
                               assign(task, e, lease) ---->
                                                     <----- assign_reply(accepted)
                               ledger: running
                                                     <----- renew([task, e]...)  (lease)
                                                     <----- result(task, e, output)
                               ledger: done (commit once)
                               result_ack(committed) ----->
                 <---------- completed(task, output)
    completed_ack ---------->  ledger: delivered

docs/delegation.md has the rules; limits are in limits.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from . import limits as L
from .messages import BootId, NodeId, Version

TaskId = Annotated[str, Meta(min_length=1, max_length=L.TASK_ID_MAX_LEN)]
TaskKind = Literal["sha256", "compute", "io_wait"]
Epoch = Annotated[int, Meta(ge=1, le=L.SEQ_MAX)]
MsgId = Annotated[int, Meta(ge=0, le=L.SEQ_MAX)]
CostMs = Annotated[int, Meta(ge=1, le=L.TASK_COST_MAX_MS)]
TaskArg = Annotated[int, Meta(ge=0, le=L.TASK_ARG_MAX)]
Payload = Annotated[str, Meta(max_length=L.TASK_PAYLOAD_MAX_LEN)]
Output = Annotated[str, Meta(max_length=L.TASK_OUTPUT_MAX_LEN)]
LeaseMs = Annotated[int, Meta(ge=100, le=3_600_000)]
ShortText = Annotated[str, Meta(max_length=L.REASON_MAX_LEN)]


class Task(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One unit of work, as its origin made it.

    ``task_id`` is unique cluster-wide: "<origin>.<boot_id>.<n>" by convention (the
    delegator only requires uniqueness). ``kind`` picks the handler: sha256 (``arg``
    rounds over ``payload``), compute (``arg`` iterations of integer arithmetic), io_wait
    (``arg`` ms of waiting). ``cost_ms`` is the CPU time it is expected to take on a node
    of reference speed: what overload and placement count.
    """

    task_id: TaskId
    kind: TaskKind
    cost_ms: CostMs
    arg: TaskArg = 0
    payload: Payload = ""
    origin: NodeId
    created_ms: int = 0  # the origin's clock: informative only


class _TaskMessage(Struct, tag_field="kind", frozen=True, kw_only=True, forbid_unknown_fields=True):
    v: Version = 1


class _FromNode(_TaskMessage, frozen=True):
    node_id: NodeId
    boot_id: BootId


class Offer(_FromNode, tag="offer", frozen=True):
    """An overloaded node hands tasks over. Resent with the same ``msg_id`` until taken."""

    msg_id: MsgId
    tasks: Annotated[list[Task], Meta(min_length=1, max_length=L.MAX_OFFER_TASKS)]


class AssignReply(_FromNode, tag="assign_reply", frozen=True):
    """A peer's answer to an assignment: it runs the task, or it has no room."""

    task_id: TaskId
    epoch: Epoch
    accepted: bool
    reason: ShortText = ""


class Renew(_FromNode, tag="renew", frozen=True):
    """Sent every ``renew_interval_ms`` (1 s in the reference node), whatever the node
    holds: it extends those leases and tells the delegator which connection reaches the
    node. ``leases``: [task_id, epoch] pairs."""

    leases: Annotated[list[tuple[TaskId, Epoch]], Meta(max_length=L.MAX_OFFER_TASKS * 8)] = []
    queued: int = 0
    capacity: int = 0


class Result(_FromNode, tag="result", frozen=True):
    """A delegated task's outcome, resent until acknowledged."""

    task_id: TaskId
    epoch: Epoch
    ok: bool
    output: Output = ""
    error: ShortText = ""
    duration_ms: int = 0


class CompletedAck(_FromNode, tag="completed_ack", frozen=True):
    """The origin has the result of its task."""

    task_id: TaskId


NodeTaskMessage = Offer | AssignReply | Renew | Result | CompletedAck


class Taken(_TaskMessage, tag="taken", frozen=True):
    """The delegator's answer to an offer: ``taken`` are in the ledger (the origin drops
    them from its queue); ``refused`` are [task_id, reason] (the origin keeps them)."""

    node_id: str
    msg_id: int
    taken: list[str]
    refused: list[tuple[str, str]] = []


class Assign(_TaskMessage, tag="assign", frozen=True):
    """Run this task under this epoch; the lease lapses ``lease_ms`` after the last renew.

    ``epoch`` is bounded like the node's answers that carry it (assign_reply, renew,
    result): a node that took 2**53 would answer with what the delegator refuses, and a
    renew with one bad lease is refused whole (every lease of the node lapses)."""

    node_id: str
    task: Task
    epoch: Epoch
    lease_ms: int


class ResultAck(_TaskMessage, tag="result_ack", frozen=True):
    """What became of a result: committed, duplicate (committed before: drop it), or
    stale_epoch / wrong_node / unknown_task (refused: drop it). A malformed result gets no
    answer (it is counted)."""

    node_id: str
    task_id: str
    epoch: int
    status: Literal["committed", "duplicate", "stale_epoch", "wrong_node", "unknown_task"]


class Completed(_TaskMessage, tag="completed", frozen=True):
    """To the origin: its task is done (resent until a completed_ack)."""

    node_id: str  # the origin
    task_id: TaskId  # echoed in the completed_ack: bounded as it is there
    ok: bool
    output: str = ""
    error: str = ""
    executor: str = ""


DelegatorMessage = Taken | Assign | ResultAck | Completed
