"""CurveZMQ and roles (issue 16): keys, the op table, refusals, and the attacks replayed.

The attacks are those measured on a running ``shoal up --headless --nodes 8`` before Curve:
a client renewing as another node on the delegator's tasks socket (its route taken over,
forged results committed), an offer from an invented node run on real peers, the
supervisor's ``signal STOP`` freezing the relay, the sim's ``fault`` crashing nodes, drain
and forget needing nothing. Each is replayed with an unknown key, a reader key and a node
key for another node (and, where a key for the node exists, from a second connection with
it); each must fail, and each refusal must be counted in ``shoal status --json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Telemetry
from shoal.protocol.tasks import Offer, Renew, Result, Task
from shoal.services.relay.service import Relay
from shoal.services.runtime import roles
from shoal.services.runtime.config import ConfigError, load_config, with_overrides
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlRefused, CtlUnavailable
from shoal.services.runtime.endpoints import is_local
from shoal.services.runtime.keys import KeysDir, KeysError
from shoal.services.runtime.security import InsecureBind, Security
from shoal.services.runtime.sockets import Sockets
from shoal.services.testing import (
    Cluster,
    IngestClient,
    config_on_free_ports,
    running,
    session_keys,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
SHOAL = [sys.executable, "-m", "shoal.services.cli"]

# --- the keys directory ---------------------------------------------------------------------


def test_init_makes_the_standard_keys_secret_files_0600_and_zmq_reads_them(tmp_path: Path):
    import zmq.auth

    keys = KeysDir(tmp_path / "keys")
    made = keys.init("sim")
    assert made[0] == "server" and {"sim", "shim", "console", "reader", "scenarios"} <= set(made)
    assert keys.init("sim") == []  # nothing missing: nothing made
    assert stat.S_IMODE((keys.path / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.private_dir.stat().st_mode) == 0o700
    for secret in keys.private_dir.iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # czmq's certificate format: pyzmq's own loader reads what we write
    public, secret = zmq.auth.load_certificate(keys.private_dir / "sim.key_secret")
    assert secret is not None and zmq.curve_public(secret) == public
    allowed = {k.name: k for k in keys.allowed().values()}
    assert allowed["sim"].role == "node" and allowed["sim"].nodes == ("sim-*",)
    assert allowed["sim"].may_speak("sim-003") and not allowed["sim"].may_speak("board-01")
    assert allowed["shim"].may_speak("anything-01")
    assert not allowed["console"].may_speak("sim-001")  # only node keys speak for nodes


def test_add_list_revoke_and_bad_keys(tmp_path: Path):
    keys = KeysDir(tmp_path / "k")
    keys.init()
    info = keys.add("gw-7", "node", ["esp-7*,esp-70"])
    assert info.nodes == ("esp-7*", "esp-70")
    assert [r["state"] for r in keys.listing() if r["name"] == "gw-7"] == ["allowed"]
    foreign, _ = zmq.curve_keypair()
    assert keys.add("remote", "reader", public=foreign.decode()).public == foreign.decode()
    for args, why in (
        (("gw-7", "node", ["x"]), "exists"),
        (("Bad Name", "reader"), "key name"),
        (("x", "admin"), "role"),
        (("x", "node"), "needs --nodes"),
        (("x", "reader", ["a"]), "node keys only"),
        (("x", "node", ["a b"]), "node pattern"),
    ):
        with pytest.raises(KeysError, match=why):
            keys.add(*args)  # type: ignore[arg-type]
    keys.revoke("gw-7")
    assert info.public not in keys.allowed()
    assert not (keys.private_dir / "gw-7.key_secret").exists()
    assert [r["state"] for r in keys.listing() if r["name"] == "gw-7"] == ["revoked"]
    with pytest.raises(KeysError, match="cannot be revoked"):
        keys.revoke("server")


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path):
    keys = KeysDir(tmp_path / "k")
    keys.init()
    os.chmod(keys.private_dir / "reader.key_secret", 0o644)
    with pytest.raises(KeysError, match="readable by others"):
        keys.client("reader")


def test_keys_cli_init_add_list_revoke(tmp_path: Path):
    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shoal.services.cli", "keys", *args, "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert "made server" in shoal("init").stdout
    out = shoal("add", "gw-1", "--role", "node", "--nodes", "gw-1-*").stdout
    assert "added gw-1 (node for gw-1-*)" in out
    listed = json.loads(shoal("list", "--json").stdout)["keys"]
    assert {"name": "gw-1", "role": "node", "nodes": ["gw-1-*"], "state": "allowed"}.items() <= (
        next(k for k in listed if k["name"] == "gw-1").items()
    )
    assert "revoked gw-1" in shoal("revoke", "gw-1").stdout
    bad = shoal("revoke", "gw-1")
    assert bad.returncode == 1 and bad.stderr.startswith("error: no key 'gw-1'")


# --- every op classified ---------------------------------------------------------------------


def _served_ops() -> dict[str, set[str]]:
    """Every control op each service serves, read from the sources (ops added in setup too)."""
    found: dict[str, set[str]] = {}
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("tui/*.py")]:
        text = path.read_text()
        names = re.findall(r'^\s+name(?:: ClassVar\[str\])? = "([a-z_]+)"', text, re.M)
        ops = set(re.findall(r'ctl_ops\["([a-z_]+)"\]', text))
        if path.name == "supervisor.py":
            block = text[text.index("self._ops: dict") : text.index("}", text.index("self._ops"))]
            ops |= set(re.findall(r'"([a-z_]+)": self\._op_', block))
            names = ["supervisor"]
        if ops:
            assert len(names) == 1, f"{path}: which service serves {ops}? ({names})"
            found.setdefault(names[0], set()).update(ops)
    return found


def test_every_control_op_of_every_service_is_classified():
    served = _served_ops()
    assert {"relay", "liveness", "delegator", "sim", "supervisor", "boards"} <= set(served)
    unclassified = {
        (service, op)
        for service, ops in served.items()
        for op in ops
        if roles.op_class(service, op) is None
    }
    assert not unclassified, f"classify these in services/runtime/roles.py: {unclassified}"
    stale = {
        (service, op)
        for service, ops in roles.OPS.items()
        for op in ops
        if op not in served.get(service, set())
    }
    assert not stale, f"roles.py lists ops no service serves: {stale}"


def test_roles_grant_what_the_issue_says():
    assert roles.may("reader", "relay", "snapshot") and roles.may("reader", "delegator", "tasks")
    for service, op in (
        ("sim", "fault"),
        ("supervisor", "signal"),
        ("supervisor", "stop"),
        ("delegator", "drain"),
        ("liveness", "forget"),
        ("sim", "set_rate"),
    ):
        assert roles.may("operator", service, op)
        assert not roles.may("reader", service, op) and not roles.may("service", service, op)
        assert not roles.may("node", service, op)
    assert roles.may("service", "liveness", "members") and not roles.may("node", "relay", "ping")
    assert not roles.may("reader", "somewhere", "new_op") and roles.may("operator", "x", "new_op")


# --- Curve off: loopback only ------------------------------------------------------------------


def test_curve_off_refuses_to_bind_anything_but_loopback(tmp_path: Path):
    assert is_local("tcp://127.0.0.1:1") and is_local("tcp://[::1]:1") and is_local("ipc:///x")
    assert not is_local("tcp://0.0.0.0:1") and not is_local("tcp://*:1")
    assert not is_local("tcp://10.1.2.3:1") and not is_local("tcp://myhost:1")
    sockets = Sockets(zmq.Context.instance(), Security.off())
    try:
        with pytest.raises(InsecureBind, match="Curve off"):
            sockets.bind(zmq.ROUTER, "tcp://0.0.0.0:*")
        sockets.bind(zmq.ROUTER, "tcp://127.0.0.1:*")  # loopback: allowed
    finally:
        sockets.close_all()
    path = tmp_path / "open.toml"
    path.write_text('[security]\ncurve = false\n[relay]\ningest = "tcp://0.0.0.0:7700"\n')
    with pytest.raises(ConfigError, match=r"relay\.ingest.*not a loopback.*curve is off"):
        load_config(path, env={})
    path.write_text('[relay]\ningest = "tcp://0.0.0.0:7700"\n')
    assert load_config(path, env={}).relay.ingest == "tcp://0.0.0.0:7700"  # Curve on: fine


def test_a_service_that_cannot_bind_without_curve_exits_78(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[security]\ncurve = false\n[relay]\nctl = "tcp://0.0.0.0:7702"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "run", "relay", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78
    assert "not a loopback address" in proc.stderr + proc.stdout


# --- in one process: handshake, role, node id, revocation ----------------------------------------


@pytest.fixture
def own_keys(tmp_path: Path) -> Path:
    """A keys directory of this test's own (it revokes and adds)."""
    from shoal.services.testing import make_keys

    return make_keys(tmp_path / "keys")


def rogue(tmp_path: Path, server_of: Path) -> Security:
    """A client key nobody allowed, with the right server key (as an attacker would have:
    the server's public key is no secret)."""
    other = KeysDir(tmp_path / "rogue")
    other.init()
    shutil.copy(server_of / "server.key", other.path / "server.key")
    return Security(keys_dir=other.path, name="console")


def test_an_unknown_key_cannot_connect_to_any_socket(tmp_path: Path):
    config = config_on_free_ports()
    intruder = rogue(tmp_path, session_keys())
    with running(Relay(config)) as relay:
        with CtlClient(config.relay.ctl, security=intruder) as ctl, pytest.raises(CtlRefused):
            ctl.call("ping", timeout_s=2.0, retries=0)
        sockets = Sockets(zmq.Context.instance(), intruder)
        try:
            sub = sockets.connect(zmq.SUB, config.relay.bus, subscribe=b"")
            ingest = sockets.connect(zmq.DEALER, config.relay.ingest)
            ingest.send(codec.encode(tel("n1", 0)))
            assert not sub.poll(1500), "an unknown key read the bus"
            assert not ingest.poll(100), "an unknown key got an ack"
        finally:
            sockets.close_all()
        assert relay.counters["auth_refused_key"] >= 3  # ctl, bus, ingest (and retries)
        assert relay.counters["accepted"] == 0


def tel(node_id: str, seq: int, cpu: float = 10.0) -> Telemetry:
    return Telemetry(
        node_id=node_id,
        boot_id=1,
        seq=seq,
        cpu_pct=cpu,
        queue_depth=0,
        queue_capacity=8,
        load_factor=0.1,
    )


def test_a_reader_cannot_act_nor_send_and_a_node_key_speaks_for_its_own_ids_only(own_keys: Path):
    keys = KeysDir(own_keys)
    keys.add("evil", "node", ["board-99"])
    config = config_on_free_ports(security={"keys": str(own_keys)})
    from shoal.services.sim.fleet import Fleet

    with running(Relay(config)) as relay, running(Fleet(with_overrides(config, "sim", nodes=2))):
        wait_for(lambda: len(relay.nodes) == 2, 10)  # the fleet's key speaks for sim-*
        # a reader reads, and is refused beyond that
        reader = Security.from_config(config, "reader")
        with CtlClient(config.sim.ctl, security=reader) as sim:
            assert set(sim.call("nodes")) == {"sim-000", "sim-001"}
            with pytest.raises(CtlRefused, match="'fault' needs an operator key"):
                sim.call("fault", {"action": "crash", "nodes": ["sim-001"]})
        # a node key has no business on a control socket: refused at the handshake
        evil_ctl = CtlClient(config.relay.ctl, security=reader.named("evil"))
        with evil_ctl, pytest.raises(CtlRefused):
            evil_ctl.call("ping", timeout_s=2.0, retries=0)
        # and a reader none on ingest (nor a node key any on a bus: refused at handshake)
        reading = IngestClient(config.relay.ingest, key="reader")
        try:
            reading.send(tel("sim-000", 10_000))
            assert not reading.pump_acks(1.0)
        finally:
            reading.close()
        # a node key for board-99 speaking for sim-001: refused, the node's data untouched
        evil = IngestClient(config.relay.ingest, key="evil")
        try:
            evil.send(tel("sim-001", 10_000, cpu=99.5))
            evil.send(tel("board-99", 0))
            wait_for(lambda: "board-99" in relay.nodes, 5)
        finally:
            evil.close()
        assert relay.counters["auth_refused_node"] == 1
        assert relay.reject_counts["forbidden"] == 1
        assert relay.nodes["sim-001"].telemetry is None or (
            relay.nodes["sim-001"].telemetry.cpu_pct != 99.5
        )
        assert relay.counters["auth_refused_role"] >= 1  # the evil key at the relay's ctl


def test_a_revoked_key_is_refused_on_its_live_connection_and_cut_from_the_bus(own_keys: Path):
    keys = KeysDir(own_keys)
    keys.add("temp", "reader")
    keys.add("gw", "node", ["gw-*"])
    config = config_on_free_ports(security={"keys": str(own_keys), "check_interval_ms": 100})
    temp = Security.from_config(config, "temp")
    with running(Relay(config)) as relay:
        sockets = Sockets(zmq.Context.instance(), temp)
        ingest = IngestClient(config.relay.ingest, key="gw")
        try:
            sub = sockets.connect(zmq.SUB, config.relay.bus, subscribe=codec.TOPIC_SERVICE_BEAT)
            assert sub.poll(5000), "the reader never heard the relay's heartbeat"
            with CtlClient(config.relay.ctl, security=temp) as ctl:
                assert ctl.call("ping")["service"] == "relay"  # one live connection
                ingest.send(tel("gw-1", 0))
                assert ingest.pump_acks(2.0).get(("gw-1", 1)) == {0}
                keys.revoke("temp")
                keys.revoke("gw")
                wait_for(lambda: relay.counters["keys_reloaded"] >= 1, 5)
                with pytest.raises(CtlRefused, match="revoked"):
                    ctl.call("ping", timeout_s=2.0, retries=0)  # the same live connection
            ingest.send(tel("gw-1", 1))
            time.sleep(0.3)
            assert relay.nodes["gw-1"].msgs == 1, "a revoked key's frame was accepted"
            # the bus was cut: the reader's new handshake fails, nothing more reaches it
            while sub.poll(300):
                sub.recv()
            assert not sub.poll(1500), "a revoked key still reads the bus"
        finally:
            ingest.close()
            sockets.close_all()
        assert relay.counters["auth_refused_revoked"] >= 2
        # a key added is let in at once, without a restart
        keys.add("late", "reader")
        with CtlClient(config.relay.ctl, security=temp.named("late")) as ctl:
            assert ctl.call("ping", timeout_s=2.0)["service"] == "relay"


# --- the attacks of the issue, replayed against a running cluster ---------------------------------

ATTACKERS = ("unknown", "reader", "other_node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("attacked")
    # Two hot spots: there are tasks assigned to real peers to forge results for.
    with Cluster(workdir, nodes=8, sim={"hot_spots": 2}) as c:
        KeysDir(c.workdir / "keys").add("evil", "node", ["board-99"])
        wait_for(lambda: len(c.snapshot().nodes) == 8, 30, ignore=(CtlFailed, CtlUnavailable))
        yield c


def attacker(cluster: Cluster, who: str, tmp_path: Path) -> Security:
    keys = cluster.workdir / "keys"
    if who == "unknown":
        return rogue(tmp_path, keys)
    if who == "reader":
        return Security(keys_dir=keys, name="reader")
    return Security(keys_dir=keys, name="evil")  # a node key for board-99 only


def ctl(cluster: Cluster, endpoint: str, op: str, args: dict[str, Any] | None = None) -> Any:
    with CtlClient(endpoint, security=cluster.security) as client:
        return client.call(op, args, timeout_s=3.0)


def counters(cluster: Cluster, endpoint: str) -> dict[str, int]:
    return ctl(cluster, endpoint, "status")["counters"]  # type: ignore[no-any-return]


def refused(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith("auth_refused_"))


def assigned_task(cluster: Cluster) -> dict[str, Any]:
    """A task the delegator has assigned to a real peer now."""

    def find() -> Any:
        rows = ctl(cluster, cluster.config.delegator.ctl, "tasks", {"latest": 500})["latest"]
        live = [r for r in rows if r["state"] in ("assigned", "running") and r["owner"]]
        return live[0] if live else None

    return wait_for(find, 30)  # type: ignore[no-any-return]


def attack_tasks(cluster: Cluster, security: Security, messages: list[Any]) -> list[bytes]:
    """Send messages on the delegator's tasks socket with security; what came back."""
    sockets = Sockets(zmq.Context.instance(), security)
    try:
        sock = sockets.connect(zmq.DEALER, cluster.config.delegator.tasks)
        for msg in messages:
            sock.send(codec.encode(msg))
        got = []
        deadline = time.monotonic() + 1.5
        while (left := deadline - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1):
                got.append(sock.recv())
        return got
    finally:
        sockets.close_all()


def forged_result_attack(cluster: Cluster, security: Security) -> None:
    """Renew as a peer (to take its route), then a forged result for its task."""
    row = assigned_task(cluster)
    before = counters(cluster, cluster.config.delegator.ctl)
    got = attack_tasks(
        cluster,
        security,
        [
            Renew(node_id=row["owner"], boot_id=1, leases=[(row["task_id"], row["epoch"])]),
            Result(
                node_id=row["owner"],
                boot_id=1,
                task_id=row["task_id"],
                epoch=row["epoch"],
                ok=True,
                output="FORGED",
            ),
        ],
    )
    assert got == [], "the delegator answered an attacker"
    task = ctl(cluster, cluster.config.delegator.ctl, "task", {"task_id": row["task_id"]})
    assert task["task"]["output"] != "FORGED"
    after = counters(cluster, cluster.config.delegator.ctl)
    assert refused(after) + after.get("reject_impersonation", 0) > refused(before) + before.get(
        "reject_impersonation", 0
    )
    audit = ctl(cluster, cluster.config.delegator.ctl, "audit")
    assert audit["committed_twice"] == 0


@pytest.mark.parametrize("who", ATTACKERS)
def test_renewing_as_another_node_takes_no_route_and_forges_no_result(
    cluster: Cluster, who: str, tmp_path: Path
):
    forged_result_attack(cluster, attacker(cluster, who, tmp_path))


def test_a_second_connection_with_the_nodes_own_key_cannot_take_over_a_live_route(
    cluster: Cluster,
):
    """The fleet's own key (sim-*) from another connection: the route belongs to the
    connection that speaks for the node (as ingest does for telemetry)."""
    before = counters(cluster, cluster.config.delegator.ctl).get("reject_impersonation", 0)
    forged_result_attack(cluster, cluster.security.named("sim"))
    after = counters(cluster, cluster.config.delegator.ctl).get("reject_impersonation", 0)
    assert after > before


@pytest.mark.parametrize("who", ATTACKERS)
def test_an_offer_from_an_invented_node_is_not_run(cluster: Cluster, who: str, tmp_path: Path):
    task = Task(task_id="ghost-1.1.1", kind="sha256", cost_ms=10, arg=1, origin="ghost-1")
    offer = Offer(node_id="ghost-1", boot_id=1, msg_id=1, tasks=[task])
    assert attack_tasks(cluster, attacker(cluster, who, tmp_path), [offer]) == []
    with pytest.raises(CtlFailed, match="unknown task"):
        ctl(cluster, cluster.config.delegator.ctl, "task", {"task_id": "ghost-1.1.1"})


@pytest.mark.parametrize("who", ATTACKERS)
def test_forged_telemetry_for_a_real_node_is_refused(cluster: Cluster, who: str, tmp_path: Path):
    before = counters(cluster, cluster.config.relay.ctl)
    sockets = Sockets(zmq.Context.instance(), attacker(cluster, who, tmp_path))
    try:
        sock = sockets.connect(zmq.DEALER, cluster.config.relay.ingest)
        sock.send(codec.encode(tel("sim-003", 2**31, cpu=99.25)))
        assert not sock.poll(1500), "the relay acked an attacker"
    finally:
        sockets.close_all()
    node = next(n for n in cluster.snapshot().nodes if n.node_id == "sim-003")
    assert node.telemetry is not None and node.telemetry.cpu_pct != 99.25
    after = counters(cluster, cluster.config.relay.ctl)
    assert refused(after) > refused(before)


def act(cluster: Cluster, security: Security, endpoint: str, op: str, args: dict[str, Any]):
    with CtlClient(endpoint, security=security) as client, pytest.raises(CtlRefused):
        client.call(op, args, timeout_s=5.0, retries=0)


@pytest.mark.parametrize("who", ATTACKERS)
def test_the_supervisor_ctl_cannot_freeze_nor_stop_the_cluster(
    cluster: Cluster, who: str, tmp_path: Path
):
    security = attacker(cluster, who, tmp_path)
    sup = cluster.config.supervisor.ctl
    before = refused(counters(cluster, sup))
    act(cluster, security, sup, "signal", {"name": "relay", "signal": "STOP"})
    act(cluster, security, sup, "restart", {"name": "delegator"})
    act(cluster, security, sup, "stop", {})
    ps = cluster.ps()
    assert ps["relay"]["state"] == "running" and ps["delegator"]["restarts"] == 0
    assert refused(counters(cluster, sup)) >= before + 3


@pytest.mark.parametrize("who", ATTACKERS)
def test_the_sim_ctl_cannot_crash_nodes_and_drain_forget_need_an_operator(
    cluster: Cluster, who: str, tmp_path: Path
):
    security = attacker(cluster, who, tmp_path)
    act(cluster, security, cluster.config.sim.ctl, "fault", {"action": "crash"})
    act(cluster, security, cluster.config.delegator.ctl, "drain", {"node_id": "sim-001"})
    act(cluster, security, cluster.config.liveness.ctl, "forget", {"node_id": "sim-001"})
    nodes = ctl(cluster, cluster.config.sim.ctl, "nodes")
    assert all(n["fault"] is None for n in nodes.values()), nodes
    drained = ctl(cluster, cluster.config.delegator.ctl, "drain", {"node_id": "sim-001"})
    ctl(cluster, cluster.config.delegator.ctl, "drain", {"node_id": "sim-001", "drain": False})
    assert drained["all"] == ["sim-001"]  # an operator may (and only it was drained)


def test_every_refusal_is_counted_and_shown_by_status_json(cluster: Cluster, tmp_path: Path):
    # one of each kind, then shoal status --json (with the cluster's reader key)
    act(cluster, attacker(cluster, "reader", tmp_path), cluster.config.sim.ctl, "fault", {})
    forged_result_attack(cluster, attacker(cluster, "other_node", tmp_path))
    proc = subprocess.run(
        [*SHOAL, "status", "--json", "--config", str(cluster.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    sec = json.loads(proc.stdout)["security"]
    assert sec["curve"] is True and sec["refused"] > 0
    services = sec["services"]
    assert services["sim"]["auth_refused_role"] >= 1
    assert services["delegator"]["auth_refused_node"] >= 1
    assert services["delegator"]["reject_forbidden"] >= 1
    assert (
        services["supervisor"]["auth_refused_key"] + services["supervisor"]["auth_refused_role"]
        >= 1
    )
    assert sec["refused"] == sum(v for s in services.values() for v in s.values())
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal.services.cli",
            "status",
            "--config",
            str(cluster.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "security: Curve on; refused" in table.stdout


def test_the_cluster_runs_with_curve_and_the_attacks_cost_it_nothing(cluster: Cluster):
    snap = cluster.snapshot()
    assert len(snap.nodes) == 8 and all(n.age_ms < 3000 for n in snap.nodes)
    members = ctl(cluster, cluster.config.liveness.ctl, "members")
    assert {m["node_id"]: m["state"] for m in members["members"]} == {
        n.node_id: "alive" for n in snap.nodes
    }
    audit = ctl(cluster, cluster.config.delegator.ctl, "audit")
    assert audit["committed_twice"] == 0 and audit.get("done", 0) + audit.get("delivered", 0) > 0


def test_a_readonly_console_holds_the_reader_key_only():
    from shoal.tui.feed import LiveFeed, console_key

    config = config_on_free_ports()
    assert console_key(config, readonly=False) == "console"
    assert console_key(config, readonly=True) == "reader"
    assert console_key(with_overrides(config, "security", key="alice"), readonly=True) == "reader"
    feed = LiveFeed(config, readonly=True)
    assert feed.service.security.name == "reader"
