"""What each role may do: every control op of every service, classified in one place.

A key's role (keys.py) grants classes of ops; each op has one class:

- ``read``: looks, changes nothing (status, snapshots, members, tasks, process table);
- ``operate``: acts on the cluster (faults, kill, pause, restart, stop, forget, drain, flood,
  scenarios: the fault op, the supervisor's signal...);
- ``service``: what only another service asks for (none today: services read).

=========  ========================================================================
role       may
=========  ========================================================================
reader     ``read`` ops
service    ``read`` and ``service`` ops (the services' views: snapshot, members)
operator   ``read`` and ``operate`` ops
node       no control op; ingest and tasks, for its own node ids (relay, delegator)
=========  ========================================================================

An op missing from ``OPS`` is refused to every key but an operator's (fail closed);
tests/test_security.py fails for any op a service serves that is not classified here.
"""

from __future__ import annotations

from typing import Literal

OpClass = Literal["read", "operate", "service"]

READ: OpClass = "read"
OPERATE: OpClass = "operate"
SERVICE: OpClass = "service"

GRANTS: dict[str, frozenset[str]] = {
    "reader": frozenset({READ}),
    "service": frozenset({READ, SERVICE}),
    "operator": frozenset({READ, OPERATE}),
    "node": frozenset(),
}

# Every service's own ops; BASE_OPS are every service's (runtime/service.py).
BASE_OPS: dict[str, OpClass] = {"ping": READ, "status": READ, "chunk": READ}
OPS: dict[str, dict[str, OpClass]] = {
    "relay": {"snapshot": READ},
    "liveness": {"members": READ, "member": READ, "forget": OPERATE},
    "delegator": {
        "tasks": READ,
        "task": READ,
        "audit": READ,
        "owned": READ,
        "revoked": READ,
        "drain": OPERATE,
        "drained": READ,
        "moved": READ,
    },
    "sim": {"nodes": READ, "set_rate": OPERATE, "fault": OPERATE},
    "shim": {"boards": READ},
    "boards": {
        "boards": READ,
        "power_off": OPERATE,
        "power_on": OPERATE,
        "radio": OPERATE,
        "reset": OPERATE,
        "crash": OPERATE,
    },
    "registry": {"devices": READ},
    "ota": {"progress": READ, "rollout": OPERATE, "abort": OPERATE},
    "supervisor": {"ps": READ, "signal": OPERATE, "restart": OPERATE, "stop": OPERATE},
    "console": {},  # the console's feed serves the base ops only
}


def op_class(service: str, op: str) -> OpClass | None:
    """The class of op on service; None: not classified (only an operator may call it)."""
    return BASE_OPS.get(op) or OPS.get(service, {}).get(op)


def may(role: str, service: str, op: str) -> bool:
    """Whether a key of role may call op on service."""
    cls = op_class(service, op)
    if cls is None:
        return role == "operator"
    return cls in GRANTS.get(role, frozenset())


def needed(service: str, op: str) -> str:
    """The role an op needs, for a refusal's message."""
    cls = op_class(service, op)
    return "an operator" if cls in (None, OPERATE) else "a reader" if cls == READ else "a service"
