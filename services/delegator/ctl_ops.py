"""The delegator's ctl ops: queries of the ledger (tasks, task, audit, owned, revoked,
moved) and the operator's drain set (drain, drained). Every arg is bounded by a Struct, and
every reply stays well under the clients' 1 MiB (ZMQ MAXMSGSIZE): ``tasks`` is paged.

A mixin of the Delegator (service.py), which registers each op in its ``ctl_ops``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from shoal.protocol import codec
from shoal.protocol.messages import NodeId
from shoal.protocol.tasks import TaskId
from shoal.services.runtime.service import CtlError, parse_args

if TYPE_CHECKING:
    from shoal.services.runtime.log import JsonLog

    from .ledger import Ledger

# Bounds of the ctl queries. Clients refuse a reply over 1 MiB (ZMQ MAXMSGSIZE): the rows of
# a ``tasks`` page stop at PAGE_BYTES (a row is ~300 bytes, ~3 KB at every field's limit),
# and its ``next`` pages on. A ``task`` history of MAX_HISTORY events at their limit (~750
# bytes each) stays under it as well.
MAX_PAGE = 1000
PAGE_BYTES = 512 * 1024
MAX_HISTORY = 500
MAX_DRAINED = 4096  # drain's set, listed whole in every drain reply (~35 bytes a node)

WallTime = Annotated[float, Meta(ge=0, le=1e11)]  # time.time(); nan and inf refused
Cursor = tuple[WallTime, Annotated[int, Meta(ge=0, le=2**63 - 1)]]


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TaskArgs(msgspec.Struct, forbid_unknown_fields=True):
    task_id: TaskId
    history: Annotated[int, Meta(ge=0, le=MAX_HISTORY)] = MAX_HISTORY  # its last events


class TasksArgs(msgspec.Struct, forbid_unknown_fields=True):
    latest: Annotated[int, Meta(ge=0, le=MAX_PAGE)] = 20
    before: Cursor | None = None  # the ``next`` of the previous page


class RevokedArgs(msgspec.Struct, forbid_unknown_fields=True):
    node_id: NodeId
    since: WallTime = 0.0


MAX_MOVED = 1000  # tasks listed by one `moved` reply (~60 bytes each)


class DrainArgs(msgspec.Struct, forbid_unknown_fields=True):
    node_id: NodeId
    drain: bool = True  # False: take work again


class CtlOps:
    """The ops, over the Delegator's ledger, drained set and log."""

    ledger: Ledger
    drained: set[str]
    log: JsonLog

    def _op_tasks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Counts, and a page of the latest changed tasks: at most ``latest`` rows and
        PAGE_BYTES of them; ``next`` (when more follow) is the ``before`` of the next page."""
        req = parse_args(args, TasksArgs)
        page = self.ledger.latest_page(req.latest + 1, req.before)  # one more: is there more?
        rows: list[Any] = []
        size = 0
        last: tuple[float, int] | None = None
        for cursor, row in page[: req.latest]:
            data = msgspec.to_builtins(row)
            size += len(codec.encode(data))
            if size > PAGE_BYTES:
                break
            rows.append(data)
            last = cursor
        more = len(rows) < len(page)
        return {
            "counts": self.ledger.counts(),
            "latest": rows,
            "next": list(last) if more and last is not None else None,
        }

    def _op_audit(self, args: dict[str, Any]) -> dict[str, int]:
        parse_args(args, NoArgs)
        return self.ledger.audit()

    def _op_owned(self, args: dict[str, Any]) -> dict[str, int]:
        parse_args(args, NoArgs)
        return self.ledger.owned()

    def _op_drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take a node out of placement (its running work finishes), or put it back."""
        req = parse_args(args, DrainArgs)
        if req.drain:
            if len(self.drained) >= MAX_DRAINED and req.node_id not in self.drained:
                raise CtlError(f"bad arguments: {MAX_DRAINED} nodes are drained already")
            self.drained.add(req.node_id)
        else:
            self.drained.discard(req.node_id)
        self.log.info("drain", node=req.node_id, drain=req.drain)
        return {"node_id": req.node_id, "drained": req.drain, "all": sorted(self.drained)}

    def _op_drained(self, args: dict[str, Any]) -> dict[str, list[str]]:
        """Every drained node, sorted: what each console shows on the node's row."""
        parse_args(args, NoArgs)
        return {"drained": sorted(self.drained)}

    def _op_revoked(self, args: dict[str, Any]) -> dict[str, Any]:
        req = parse_args(args, RevokedArgs)
        first, count = self.ledger.revoked(req.node_id, req.since)
        held, finished, held_taken_at = self.ledger.held_then(req.node_id, req.since)
        return {
            "node_id": req.node_id,
            "first_at": first,
            "count": count,
            "held": held,  # what the node held at `since`
            "finished": finished,  # of those, committed by the node itself afterwards
            "held_taken_at": held_taken_at,  # the first of the others taken away
        }

    def _op_moved(self, args: dict[str, Any]) -> dict[str, Any]:
        """Where the tasks taken from a node since a time are now (owner and state)."""
        req = parse_args(args, RevokedArgs)
        rows, total = self.ledger.moved(req.node_id, req.since, MAX_MOVED)
        tasks = [{"task_id": t, "state": s, "owner": o} for t, s, o in rows]
        return {"node_id": req.node_id, "tasks": tasks, "total": total}

    def _op_task(self, args: dict[str, Any]) -> dict[str, Any]:
        req = parse_args(args, TaskArgs)
        row = self.ledger.task(req.task_id)
        if row is None:
            tomb = self.ledger.tombstone(req.task_id)
            if tomb is not None:
                raise CtlError(f"task '{req.task_id}' was pruned ({tomb.state}) at {tomb.at:.3f}")
            raise CtlError(f"unknown task '{req.task_id}'")
        history = self.ledger.history(req.task_id, req.history)
        return {
            "task": msgspec.to_builtins(row),
            "history": [msgspec.to_builtins(h) for h in history],
            "history_total": self.ledger.history_length(req.task_id),
        }
