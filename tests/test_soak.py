"""Soak: a fleet under `shoal up` while the relay is SIGKILLed again and again.

Slow (about a minute): run by `just bench`, not `just test`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from shoal.services.runtime.ctl_client import CtlUnavailable
from shoal.services.testing import BusListener, Cluster, wait_for

NODES = 50
KILLS = 5
KILL_EVERY_S = 8.0


@pytest.mark.slow
def test_fleet_survives_repeated_relay_kills_without_losing_a_message(tmp_path: Path) -> None:
    # Restart backoff resets after 2 s up, so every kill is followed by a quick restart.
    # No heartbeats: they are best effort (never resent), so one lost with a killed relay
    # leaves a seq hole for good; without them, no gap means no buffered message was lost.
    with Cluster(
        tmp_path,
        nodes=NODES,
        supervisor={"stable_after_s": 2.0},
        sim={"heartbeat_interval_ms": 600_000},
    ) as cluster:
        wait_for(lambda: len(cluster.snapshot().nodes) == NODES, 30, ignore=(CtlUnavailable,))
        bus = BusListener(cluster.config.relay.bus)
        try:
            for _ in range(KILLS):
                wait_for(lambda: bus.pump() and len({r.node_id for r in bus.records}) == NODES, 20)
                published: dict[str, int] = {}
                for r in bus.records:
                    published[r.node_id] = max(published.get(r.node_id, -1), r.seq)
                old = cluster.ps()["relay"]["pid"]
                os.kill(old, signal.SIGKILL)
                bus.pump(0.2)
                for r in bus.records:
                    published[r.node_id] = max(published.get(r.node_id, -1), r.seq)
                bus.records.clear()

                def recovered(before: dict[str, int] = published) -> bool:
                    snap = cluster.snapshot()
                    return len(snap.nodes) == NODES and all(
                        n.first_seq <= before[n.node_id] + 1 and n.gaps == 0 for n in snap.nodes
                    )

                wait_for(recovered, 30, ignore=(CtlUnavailable,))
                time.sleep(KILL_EVERY_S)  # steady running between kills is the point of a soak
        finally:
            bus.close()
        ps = cluster.ps()
        assert ps["relay"]["restarts"] == KILLS
        assert ps["sim"]["restarts"] == 0
        assert cluster.sim_counters()["node_dropped"] == 0
