"""A cluster with 10,000 nodes in its tables: `shoal status --json` answers and a restarted
delegator re-syncs and places work (issue 13). Before: past ~2,000 nodes the snapshots
outgrew the clients' 1 MiB frame limit; status said "no reply" and a restarted delegator
placed nothing in 60 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shoal.protocol.messages import Heartbeat, Hello
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import Cluster, IngestClient, wait_for

FLEET = 6
TABLE = 10_000
HOT = "sim-001"


def call(endpoint: str, op: str, args: dict[str, Any] | None = None) -> Any:
    with CtlClient(endpoint) as client:
        return client.call(op, args or {}, timeout_s=5.0, retries=1)


def fill(endpoint: str, node_ids: list[str]) -> None:
    """Each id says hello and then one heartbeat (so it is no phantom), then goes silent."""
    clients = [IngestClient(endpoint) for _ in range(len(node_ids) // 2000 + 1)]
    try:
        for k, client in enumerate(clients):
            ids = node_ids[k * 2000 : (k + 1) * 2000]
            for seq, kind in ((0, Hello), (1, Heartbeat)):
                for start in range(0, len(ids), 256):
                    records = [
                        msgspec.to_builtins(kind(node_id=n, boot_id=1, seq=seq))
                        for n in ids[start : start + 256]
                    ]
                    batch = {"v": 1, "kind": "batch", "records": records}
                    client.send_frames([msgspec.msgpack.encode(batch)])
            wait_for(lambda c=client: c.pump_acks(), 30)
    finally:
        for client in clients:
            client.close()


def status_json(cluster: Cluster) -> dict[str, Any]:
    argv = [sys.executable, "-m", "shoal.services.cli", "status", "--json"]
    proc = subprocess.run(
        [*argv, "--config", str(cluster.config_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.timeout(240)
def test_status_and_a_restarted_delegator_work_with_10000_nodes(tmp_path: Path) -> None:
    with Cluster(tmp_path, nodes=FLEET, supervisor={"stable_after_s": 1.0}) as cluster:
        cfg = cluster.config
        wait_for(lambda: len(cluster.snapshot().nodes) == FLEET, 30, ignore=(CtlUnavailable,))
        fill(cfg.relay.ingest, [f"far-{i:05d}" for i in range(TABLE - FLEET)])
        wait_for(lambda: len(cluster.snapshot().nodes) == TABLE, 60, ignore=(CtlUnavailable,))
        members = lambda: call(cfg.liveness.ctl, "members")["members"]  # noqa: E731
        wait_for(lambda: len(members()) == TABLE, 60, ignore=(CtlUnavailable,))

        status = status_json(cluster)
        assert len(status["nodes"]) == TABLE

        before = cluster.ps()["delegator"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: cluster.ps()["delegator"]["restarts"] == before["restarts"] + 1, 30)
        wait_for(lambda: call(cfg.delegator.ctl, "ping"), 30, ignore=(CtlUnavailable,))
        call(cfg.sim.ctl, "set_rate", {"rate_hz": 30.0, "nodes": [HOT]})
        # Placing needs both views synced: the relay's load and the monitor's membership.
        wait_for(lambda: call(cfg.delegator.ctl, "audit")["delivered"] > 0, 90, 0.5)
