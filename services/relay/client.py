"""The relay as one, for a client that asks it questions: every shard's snapshot merged.

``shoal status``, the fault injector's observer and the tests ask the relay for its node
table; with ``relay.shards`` > 1 each shard holds a part. The merged snapshot has every
shard's nodes, counters and rejects summed (``shard`` dropped: it differs per shard), and
shard 0's ``pub`` and ``pseq``: a merged table is for reading, not for the Clone pattern
(relay/view.py follows each shard's numbering itself).
"""

from __future__ import annotations

from typing import Any

from shoal.protocol.messages import RelaySnapshot
from shoal.services.runtime import ctl_client
from shoal.services.runtime.config import ShoalConfig, relay_shards


class RelayClient:
    """One ctl client per shard. A shard that does not answer fails the call (CtlFailed,
    CtlUnavailable, as for one relay): a table with a part missing would look complete."""

    def __init__(self, config: ShoalConfig, **options: Any) -> None:
        self.ctls = [e.ctl for e in relay_shards(config)]
        # Looked up at call time: a test's stand-in for ctl_client.CtlClient applies here.
        self.clients = [ctl_client.CtlClient(ctl, **options) for ctl in self.ctls]

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def snapshot(self, timeout_s: float = 2.0, retries: int = 1) -> RelaySnapshot:
        snaps: list[RelaySnapshot] = [
            c.call("snapshot", result_type=RelaySnapshot, timeout_s=timeout_s, retries=retries)
            for c in self.clients
        ]
        return merged(snaps)

    def counters(self, timeout_s: float = 2.0, retries: int = 1) -> dict[str, int]:
        """Every shard's status counters, summed."""
        total: dict[str, int] = {}
        for client in self.clients:
            status: dict[str, Any] = client.call("status", timeout_s=timeout_s, retries=retries)
            _add(total, status["counters"])
        return total


def merged(snaps: list[RelaySnapshot]) -> RelaySnapshot:
    if len(snaps) == 1:
        return snaps[0]
    counters: dict[str, int] = {}
    rejects: dict[str, int] = {}
    for snap in snaps:
        _add(counters, snap.counters)
        _add(rejects, snap.rejects)
    return RelaySnapshot(
        pub=snaps[0].pub,
        pseq=snaps[0].pseq,
        nodes=[node for snap in snaps for node in snap.nodes],
        counters=counters,
        rejects=rejects,
    )


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        if key == "shard":
            continue
        total[key] = value if key == "shards" else total.get(key, 0) + value
