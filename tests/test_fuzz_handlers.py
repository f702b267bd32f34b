"""Every ctl op of every service (relay, liveness, delegator, sim, shim, supervisor, board
emulator), the delegator's tasks socket, the relay's ingest, the sim fleet's task link and
the MQTT shim's payload handler, fed hypothesis-generated hostile input over raw ZeroMQ
(issue 13, "No input loses data", part 5). The services run in-process on free ports.

Properties: every request gets exactly one reply, with the request's id (0 only when the
request could not be read); a refusal says why, and never "internal error" (a handler
validates its args with ``parse_args`` and answers "bad arguments: ..."); afterwards the
service still answers ``ping``, its ``handler_errors`` counter is 0, and good traffic
still gets through.

Ops that stop or kill things (the sim's crash, hang and leave, the supervisor's signal and
restart, the board emulator's power_off, reset and crash) are sent only with args they
refuse, and the supervisor's stop never.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import (
    DELEGATOR_TASKS,
    HOLE,
    IDS,
    INGEST,
    MP_HOLE,
    NODE_TASKS,
    NUMBERS,
    TASK,
    WILL,
    WRONG_TYPES,
    frames,
    raw_values,
    retarget,
)

from shoal.protocol import codec
from shoal.protocol.messages import Heartbeat, Reply, ServiceStatus
from shoal.protocol.tasks import NodeTaskMessage, Offer, Renew, Task
from shoal.services.boards.service import BoardEmulator
from shoal.services.delegator.service import Delegator
from shoal.services.liveness.service import Liveness
from shoal.services.mqtt_shim.service import REJECT_REASONS as SHIM_REJECT_REASONS
from shoal.services.mqtt_shim.service import Shim
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import ShoalConfig, SupervisorConfig
from shoal.services.runtime.ports import tcp
from shoal.services.runtime.service import CtlError, Service, parse_args
from shoal.services.sim.faults import STOPPING, FaultArgs, fault_args_error
from shoal.services.sim.fleet import Fleet
from shoal.services.supervisor.supervisor import SIGNALS, ProcessSpec, Supervisor
from shoal.services.testing import (
    GATEWAY_KEY,
    BusListener,
    IngestClient,
    config_on_free_ports,
    raw_socket,
    running,
    wait_for,
)

REPLY_TIMEOUT_MS = 10_000  # generous: a busy 2-core machine, five services in one process
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLEET = ["sim-000", "sim-001", "sim-002"]
# Hypothesis warns when the global `random` changes while it draws: the services' threads
# (the shim's reconnect jitter) use it, not the strategies.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

# --- hostile args -------------------------------------------------------------------------

# Each arg any op of these services reads, with values it would take.
ARGS: dict[str, st.SearchStrategy[Any]] = {
    "state": st.sampled_from(["alive", "suspect", "dead", "left", "ALIVE", ""]),
    "node_id": st.sampled_from([*FLEET, "unknown-9", "board-01"]),
    "on": st.booleans(),
    "task_id": st.sampled_from(["esp-01.439041101.7", "nope", ""]),
    "latest": st.integers(0, 100),
    "drain": st.booleans(),
    "since": st.floats(0, 2e9),
    "rate_hz": st.floats(0, 10_000),
    "nodes": st.lists(st.sampled_from(FLEET), max_size=3),
    "action": st.sampled_from([*STOPPING, "resume", "reboot", "link", "heal", "cpu_hog"])
    | st.sampled_from(["flood", "clock_skew", "explode", "CRASH"]),
    "duration_ms": st.integers(0, 2000),
    "drop": st.floats(0, 1),
    "delay_ms": st.integers(0, 50),
    "jitter_ms": st.integers(0, 50),
    "correlation": st.floats(0, 1),
    "duplicate": st.floats(0, 1),
    "reorder": st.floats(0, 1),
    "services": st.lists(st.sampled_from(["relay", "delegator", "bus"]), max_size=3),
    "percent": st.integers(0, 101),
    "tasks": st.integers(0, 1000),
    "skew_ms": st.integers(-(10**9), 10**9),
    "kinds": st.lists(st.sampled_from(["link", "cpu_hog", "clock_skew", "x"]), max_size=3),
    "name": st.sampled_from(["sleeper", "relay", "nope"]),
    "signal": st.sampled_from(["TERM", "KILL", "sigstop", "HUP"]),
}
leaves = (
    st.sampled_from(IDS + NUMBERS + WRONG_TYPES)
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.just("x" * 60_000)  # a huge string that still fits in a frame
)
nested = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
EDGES = [2**63, 2**64 - 1, -(2**63), -1, 0, 2**53, math.nan, math.inf, -math.inf, -0.0, "", None]
# Edges first: one bad scalar in an otherwise good request is what finds a range bug.
hostile = st.sampled_from(EDGES) | leaves | nested
ARG_NAMES = st.sampled_from(sorted(ARGS))


# The args each op reads (the others ignore theirs).
OP_ARGS = {
    "tasks": ["latest"],
    "task": ["task_id"],
    "drain": ["node_id", "drain"],
    "revoked": ["node_id", "since"],
    "moved": ["node_id", "since"],
    "members": ["state"],
    "member": ["node_id"],
    "forget": ["node_id"],
    "set_rate": ["rate_hz", "nodes"],
    "fault": [f.name for f in msgspec.structs.fields(FaultArgs)],
    "signal": ["name", "signal"],
    "restart": ["name"],
    "power_off": ["node_id"],
    "power_on": ["node_id"],
    "radio": ["node_id", "on"],
    "reset": ["node_id"],
    "crash": ["node_id"],
}


@st.composite
def arg_maps(draw: st.DrawFn, op: str) -> dict[str, Any]:
    """Args of random shape: the op's own names (mostly), others, unknown ones; each with
    a value it takes or a hostile one."""
    own = OP_ARGS.get(op, [])
    names = draw(st.lists(st.sampled_from(own), unique=True)) if own else []
    if not own or draw(st.integers(0, 3)) == 3:  # now and then, an arg it does not take
        names += draw(st.lists(ARG_NAMES | st.text(max_size=12), min_size=1, max_size=3))
    args = {}
    for name in names:
        good = name in ARGS and draw(st.booleans())
        args[name] = draw(ARGS[name] if good else hostile)
    return args


@st.composite
def request_bodies(draw: st.DrawFn, op: str, ops: list[str], req_id: int) -> tuple[bytes, str, Any]:
    """(frame, op, args) of a request for op (sometimes another of the service's ops, or
    one it does not have), its args hostile, or raw bytes spliced in place of the args, or
    of an arg (deep nesting, ext types...)."""
    op = draw(st.just(op) | st.just(op) | st.sampled_from(ops) | st.text(max_size=70))
    args: Any = draw(st.one_of(arg_maps(op), arg_maps(op), arg_maps(op), hostile))
    how = draw(st.integers(0, 5))  # hypothesis favours 0: the plain request
    if how == 5:
        body = {"kind": "req", "id": req_id, "op": op, "args": HOLE}
    elif how == 4 and isinstance(args, dict):
        body = {"kind": "req", "id": req_id, "op": op, "args": {**args, draw(ARG_NAMES): HOLE}}
    else:
        body = {"kind": "req", "id": req_id, "op": op, "args": args}
    try:
        frame = msgspec.msgpack.encode(body)
    except (msgspec.EncodeError, OverflowError):
        frame = msgspec.msgpack.encode({"kind": "req", "id": req_id, "op": op})
    if MP_HOLE in frame:
        frame = frame.replace(MP_HOLE, draw(raw_values(json=False)))
    return frame, op, args


# --- a raw ctl connection -------------------------------------------------------------------


class RawCtl:
    """A DEALER on a service's ctl socket; one request at a time, its replies counted."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.DEALER, endpoint)
        self.ids = itertools.count(1)

    def ask(self, frames: list[bytes]) -> Reply:
        assert not self.sock.poll(0), f"a second reply: {self.sock.recv()!r}"
        self.sock.send_multipart(frames)
        assert self.sock.poll(REPLY_TIMEOUT_MS), f"no reply to {frames[0][:200]!r}"
        return msgspec.msgpack.decode(self.sock.recv(), type=Reply)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        req_id = next(self.ids)
        body = codec.encode({"kind": "req", "id": req_id, "op": op, "args": args or {}})
        reply = self.ask([body])
        assert reply.ok and reply.id == req_id, reply.error
        return msgspec.msgpack.decode(reply.result)

    def close(self) -> None:
        assert not self.sock.poll(100), f"a reply nobody asked for: {self.sock.recv()!r}"
        self.sock.close()


def check_reply(reply: Reply, req_id: int) -> None:
    if reply.id == 0:  # the request could not be read: the reason says why
        assert not reply.ok and reply.error.split(":")[0] in codec.REJECT_REASONS, reply.error
        return
    assert reply.id == req_id
    if reply.ok:
        assert reply.error == ""
    else:
        assert reply.error, "a refusal that does not say why"
        assert not reply.error.startswith("internal error"), reply.error


def still_healthy(ctl: RawCtl) -> None:
    assert ctl.call("ping")["pid"]
    counters = msgspec.convert(ctl.call("status"), ServiceStatus).counters
    assert counters.get("handler_errors", 0) == 0, counters


# --- the services ---------------------------------------------------------------------------


class Env:
    def __init__(self, config: ShoalConfig, services: dict[str, Service]) -> None:
        self.config = config
        self.services = services
        self.ctls = {name: RawCtl(s.endpoints["ctl"]) for name, s in services.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A relay, a liveness monitor, a delegator, a fleet of 3 and a shim (no broker: its
    ctl does not need one), in this process."""
    tmp = tmp_path_factory.mktemp("fuzz")
    config = config_on_free_ports(
        delegator={"ledger": str(tmp / "ledger.db")},
        sim={"nodes": len(FLEET), "arrival_rate_hz": 0.0},
        runtime={"heartbeat_interval_ms": 100},
    )
    services: dict[str, Service] = {
        "relay": Relay(config),
        "liveness": Liveness(config),
        "delegator": Delegator(config),
        "sim": Fleet(config),
        "shim": Shim(config),
    }
    with (
        running(services["relay"]),
        running(services["liveness"]),
        running(services["delegator"]),
        running(services["sim"]),
        running(services["shim"]),
    ):
        env = Env(config, services)
        try:
            # The fleet has joined: op member has nodes to find.
            wait_for(lambda: len(env.ctls["liveness"].call("members")["members"]) == 3, 20)
            yield env
        finally:
            for ctl in env.ctls.values():
                ctl.close()


def known_unbounded_query(op: str, args: Any) -> bool:
    """The delegator's `tasks` with a `latest` beyond SQLite's int64: being bounded on
    another branch (h13-ledger); see test_the_delegators_query_bounds."""
    latest = args.get("latest") if isinstance(args, dict) else None
    return op == "tasks" and type(latest) is int and not -(2**63) <= latest < 2**63


def stops_nodes(op: str, args: Any) -> bool:
    """A valid fault that stops nodes (crash, hang, leave): not sent."""
    if op != "fault" or not isinstance(args, dict):
        return False
    try:
        req = parse_args(args, FaultArgs)
    except CtlError:
        return False
    return req.action in STOPPING and fault_args_error(req) is None


# Every op of every service here; test_every_op_is_fuzzed keeps the list complete.
OPS = {
    "relay": ["ping", "status", "chunk", "snapshot"],
    "liveness": ["ping", "status", "chunk", "members", "member", "forget"],
    "delegator": [
        *("ping", "status", "chunk", "tasks", "task", "audit", "drain", "drained", "owned"),
        *("revoked", "moved"),
    ],
    "sim": ["ping", "status", "chunk", "nodes", "set_rate", "fault"],
    "shim": ["ping", "status", "chunk", "boards"],
}
SERVICE_OPS = [(service, op) for service, ops in OPS.items() for op in ops]


def test_every_op_is_fuzzed(env: Env) -> None:
    assert {name: sorted(s.ctl_ops) for name, s in env.services.items()} == {
        name: sorted(ops) for name, ops in OPS.items()
    }


def fuzz_one(ctl: RawCtl, op: str, ops: list[str], data: Any, skip: Any) -> None:
    """One hostile request (skip(op, args): not to be sent), and its one reply checked."""
    req_id = next(ctl.ids)
    frame, op, args = data.draw(request_bodies(op, ops, req_id))
    assume(not skip(op, args))
    many = data.draw(st.sampled_from([1, 1, 1, 1, 1, 1, 2, 3]))  # REQ's delimiter, and more
    check_reply(ctl.ask([b""] * (many - 1) + [frame]), 0 if many > 1 else req_id)


@pytest.mark.parametrize(("service", "op"), SERVICE_OPS)
@FUZZ
@given(data=st.data())
def test_every_ctl_op_answers_once_and_never_internal_error(
    env: Env, service: str, op: str, data: Any
) -> None:
    def skip(op: str, args: Any) -> bool:
        return stops_nodes(op, args) or (service == "delegator" and known_unbounded_query(op, args))

    fuzz_one(env.ctls[service], op, OPS[service], data, skip)


@pytest.mark.parametrize("service", ["relay", "liveness", "delegator", "sim", "shim"])
def test_the_service_still_serves_after_the_fuzzing(env: Env, service: str) -> None:
    still_healthy(env.ctls[service])


@pytest.mark.parametrize("args", [{"latest": v} for v in (-1, 2**63, 2**64 - 1, 10**12)])
def test_the_delegators_query_bounds(tmp_path: Path, args: dict[str, Any]) -> None:
    """`tasks` with `latest` out of any sane range: refused as bad arguments (before: -1
    and 10**12 returned every row, 2**63 was an internal error: SQLite's OverflowError).
    A delegator of its own: the errors it counts are no other test's."""
    config = config_on_free_ports(delegator={"ledger": str(tmp_path / "ledger.db")})
    with running(Delegator(config)) as delegator:
        ctl = RawCtl(delegator.endpoints["ctl"])
        try:
            body = codec.encode({"kind": "req", "id": 1, "op": "tasks", "args": args})
            reply = ctl.ask([body])
        finally:
            ctl.close()
    assert not reply.ok and reply.error.startswith("bad arguments"), reply.error


# --- the supervisor (not built on the runtime: its own ctl loop, in asyncio) --------------

SUPERVISOR_OPS = ["ping", "status", "ps", "signal", "restart", "stop"]
CHILD = ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.fixture(scope="module")
def supervisor() -> Iterator[tuple[Supervisor, RawCtl]]:
    ctl = tcp()
    sup = Supervisor([CHILD], SupervisorConfig(ctl=ctl), out=io.StringIO())
    thread = threading.Thread(target=asyncio.run, args=(sup.run(install_signals=False),))
    thread.start()
    raw = RawCtl(ctl)
    try:
        wait_for(lambda: raw.call("ps")[0]["state"] == "running", 20, ignore=(AssertionError,))
        yield sup, raw
    finally:
        raw.close()
        sup.request_stop()
        thread.join(20)
    assert not thread.is_alive(), "the supervisor did not stop"


def stops_or_kills(op: str, args: Any) -> bool:
    """What the supervisor would do: stop everything, or signal or restart its child."""
    if op == "stop":
        return True  # it takes no args: there is no invalid way to send it
    if op not in ("signal", "restart") or not isinstance(args, dict):
        return False
    if args.get("name") != CHILD.name:
        return False
    sig = args.get("signal")
    return op == "restart" or (isinstance(sig, str) and sig.upper().removeprefix("SIG") in SIGNALS)


@pytest.mark.parametrize("op", SUPERVISOR_OPS)
@FUZZ
@given(data=st.data())
def test_every_supervisor_op_answers_once_and_never_internal_error(
    supervisor: tuple[Supervisor, RawCtl], op: str, data: Any
) -> None:
    fuzz_one(supervisor[1], op, SUPERVISOR_OPS, data, stops_or_kills)


def test_the_supervisor_still_serves_and_its_child_ran_on(
    supervisor: tuple[Supervisor, RawCtl],
) -> None:
    sup, ctl = supervisor
    assert sorted(sup._ops) == sorted(SUPERVISOR_OPS)
    [row] = ctl.call("ps")
    assert row["state"] == "running" and row["restarts"] == 0


# --- the board emulator (one MicroPython board, no broker: its ctl needs none) -------------

BOARD_OPS = [
    "ping",
    "status",
    "chunk",
    "boards",
    "power_off",
    "power_on",
    "radio",
    "reset",
    "crash",
]
BOARD = "board-01"


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, RawCtl]]:
    config = config_on_free_ports(boards={"count": 1})
    emulator = BoardEmulator(config, workdir=str(tmp_path_factory.mktemp("boards")))
    with running(emulator):
        ctl = RawCtl(emulator.endpoints["ctl"])
        try:
            yield emulator, ctl
        finally:
            ctl.close()


def cuts_the_board(op: str, args: Any) -> bool:
    """power_off, reset and crash of the real board: not sent."""
    return op in ("power_off", "reset", "crash") and (
        not isinstance(args, dict) or args.get("node_id") == BOARD
    )


@pytest.mark.parametrize("op", BOARD_OPS)
@FUZZ
@given(data=st.data())
def test_every_board_emulator_op_answers_once_and_never_internal_error(
    boards: tuple[Service, RawCtl], op: str, data: Any
) -> None:
    fuzz_one(boards[1], op, BOARD_OPS, data, cuts_the_board)


def test_the_board_emulator_still_serves_and_its_board_runs(
    boards: tuple[Service, RawCtl],
) -> None:
    emulator, ctl = boards
    assert sorted(emulator.ctl_ops) == sorted(BOARD_OPS)
    still_healthy(ctl)
    [row] = ctl.call("boards")
    assert row["node_id"] == BOARD and row["state"] == "running", row


# --- the MQTT shim's payloads ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shim() -> Iterator[Shim]:
    """A shim set up but not running: its payload handler is called here, in this thread.
    No broker, relay or delegator: what it would send is refused and counted."""
    config = config_on_free_ports(mqtt={"max_boards": 20, "batch_interval_ms": 0})
    service = Shim(config)
    service.setup()
    try:
        yield service
    finally:
        service.sockets.close_all()
        service.ctx.term()


BOARD_IDS = ["esp-01", "esp-02", "shim", "Bad_ID", "", "a" * 40, "../x", "esp-01\n"]
CHANNELS = ["up", "will", "task/up", "task/down", "ack", "up/x", ""]
topics_ = st.builds(
    lambda root, board, channel: f"{root}{board}/{channel}",
    st.sampled_from(["shoal/v1/", "shoal/v1/", "shoal/v1/", "shoal/v2/", ""]),
    st.sampled_from(BOARD_IDS) | st.text(max_size=12),
    st.sampled_from(CHANNELS),
)
SHIM_FAMILY = INGEST + NODE_TASKS + [WILL]


@FUZZ
@given(st.sampled_from(BOARD_IDS[:2]), st.data())
def test_hostile_payloads_cost_the_shim_only_themselves(shim: Shim, board: str, data: Any) -> None:
    """Any topic, any payload (JSON of every family, a board's own or another's, hostile,
    damaged, msgpack): refused by reason, never an exception out of the handler."""
    own = st.sampled_from([f"shoal/v1/{board}/{channel}" for channel in ("up", "will", "task/up")])
    topic = data.draw(own | own | own | topics_)
    speaker = data.draw(st.sampled_from(BOARD_IDS[:2]))  # the topic's board, or another
    family = [retarget(t, {"esp-01": speaker}) for t in SHIM_FAMILY]
    valid = st.sampled_from(family).map(msgspec.json.encode)
    payload = data.draw(
        st.one_of(valid, frames(json=True, family=family), frames(json=False, family=family))
    )
    before = shim.counters["rejected"]
    shim._on_message(topic, payload)
    assert set(shim.reject_counts) == set(SHIM_REJECT_REASONS)
    assert shim.counters["rejected"] >= before


def test_the_shim_counted_every_kind_of_refusal(shim: Shim) -> None:
    counts = shim.status_counters()
    for reason in ("malformed", "schema", "bad_topic", "impersonation"):
        assert counts[f"reject_{reason}"] > 0, (reason, counts)


# --- the delegator's tasks socket -------------------------------------------------------------


class TaskPeer:
    """A DEALER on the delegator's tasks socket, as a node or a gateway has."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.DEALER, endpoint, key=GATEWAY_KEY)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def until(self, match: Any, timeout_s: float = 10.0) -> Any:
        """The first message from the delegator that matches (others are skipped)."""
        decoder = msgspec.msgpack.Decoder()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                msg = decoder.decode(self.sock.recv())
                if match(msg):
                    return msg
        raise AssertionError("no such message from the delegator")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def task_peer(env: Env) -> Iterator[TaskPeer]:
    peer = TaskPeer(env.config.delegator.tasks)
    yield peer
    peer.close()


def task_frames() -> st.SearchStrategy[list[bytes]]:
    one = frames(json=False, family=NODE_TASKS)
    return st.lists(one, min_size=1, max_size=3) | one.map(lambda f: [f])


@FUZZ
@given(task_frames())
def test_hostile_task_messages_cost_only_themselves(
    env: Env, task_peer: TaskPeer, message: list[bytes]
) -> None:
    task_peer.send(message)


def test_the_delegator_still_answers_offers_after_the_fuzzing(
    env: Env, task_peer: TaskPeer
) -> None:
    task = Task(task_id="fuzz-1.1.1", kind="sha256", cost_ms=10, origin="fuzz-1")
    task_peer.send([codec.encode(Offer(node_id="fuzz-1", boot_id=1, msg_id=99, tasks=[task]))])
    taken = task_peer.until(lambda m: m.get("kind") == "taken" and m.get("msg_id") == 99)
    assert {*taken["taken"], *(t for t, _ in taken["refused"])} == {"fuzz-1.1.1"}
    delegator = env.services["delegator"]
    wait_for(lambda: "reject_malformed" in delegator.counters, 5)
    still_healthy(env.ctls["delegator"])


# --- the relay's ingest ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest(env: Env) -> Iterator[IngestClient]:
    client = IngestClient(env.config.relay.ingest)
    yield client
    client.close()


def ingest_messages() -> st.SearchStrategy[list[bytes]]:
    one = frames(json=False, family=INGEST) | frames(json=True, family=INGEST)
    return one.map(lambda f: [f]) | st.lists(one, min_size=2, max_size=3)


@FUZZ
@given(ingest_messages())
def test_hostile_ingest_frames_cost_only_themselves(
    env: Env, ingest: IngestClient, message: list[bytes]
) -> None:
    ingest.send_frames(message)


def test_the_relay_still_takes_good_records_after_the_fuzzing(
    env: Env, ingest: IngestClient
) -> None:
    bus = BusListener(env.config.relay.bus, (b"rec|",))
    try:
        relay = env.services["relay"]
        seq = itertools.count()

        def published() -> bool:
            ingest.send(Heartbeat(node_id="after-fuzz", boot_id=7, seq=next(seq)))
            return any(r.node_id == "after-fuzz" for r in bus.pump(0.1))

        wait_for(published, 10)  # past the slow-joiner window: resent until one is seen
        wait_for(lambda: ingest.pump_acks().get(("after-fuzz", 7)), 10)
        counters = relay.status_counters()
        assert counters.get("frame_errors", 0) == 0 and counters.get("handler_errors", 0) == 0
        assert counters["reject_malformed"] > 0 and counters["reject_schema"] > 0
        still_healthy(env.ctls["relay"])
    finally:
        bus.close()


# --- the sim fleet's task link, from a hostile delegator -----------------------------------------


class FakeDelegator:
    """A ROUTER at delegator.tasks: learns the fleet's connection from its renews."""

    def __init__(self, endpoint: str) -> None:
        self.sock = raw_socket(zmq.ROUTER, endpoint, bind=True)
        self.decoder = msgspec.msgpack.Decoder(NodeTaskMessage)
        self.identity = b""
        self.renews = 0

    def pump(self, timeout_ms: int = 0) -> None:
        while self.sock.poll(timeout_ms):
            identity, body = self.sock.recv_multipart()
            msg = self.decoder.decode(body)  # what the fleet sends stays on the protocol
            self.identity = identity
            self.renews += isinstance(msg, Renew)
            timeout_ms = 0

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def fleet_and_delegator() -> Iterator[tuple[Fleet, FakeDelegator]]:
    config = config_on_free_ports(sim={"nodes": 2, "arrival_rate_hz": 5.0})
    fake = FakeDelegator(config.delegator.tasks)
    try:
        with running(Fleet(config)) as fleet:
            wait_for(lambda: fake.pump(50) or fake.identity, 10)
            yield fleet, fake
    finally:
        fake.close()


SIM_NAMES = {"esp-01": "sim-000", "esp-02": "sim-001"}
SIM_TASKS = [retarget(t, SIM_NAMES) for t in DELEGATOR_TASKS]


@FUZZ
@given(frames(json=False, family=SIM_TASKS))
def test_hostile_delegator_messages_cost_the_fleet_nothing(
    fleet_and_delegator: tuple[Fleet, FakeDelegator], frame: bytes
) -> None:
    _, fake = fleet_and_delegator
    fake.sock.send_multipart([fake.identity, frame])
    fake.pump()


@pytest.mark.parametrize(
    "message",
    [  # what a node answers with a value of these (renews and results carry the epoch)
        {
            "kind": "assign",
            "node_id": "sim-001",
            "task": retarget(TASK, SIM_NAMES),
            "epoch": 2**53,
            "lease_ms": 3000,
        },
        {
            "kind": "assign",
            "node_id": "sim-001",
            "task": retarget(TASK, SIM_NAMES),
            "epoch": 2**64 - 1,
        },
        {"kind": "completed", "node_id": "sim-000", "task_id": "t" * 65, "ok": True},
    ],
)
def test_a_value_a_node_would_echo_off_the_protocol_is_refused(
    fleet_and_delegator: tuple[Fleet, FakeDelegator], message: dict[str, Any]
) -> None:
    """Found by the fuzzing: a simulated node took an assign with epoch 2**53 and answered
    with it in its assign_reply and in every renew after, which the delegator refuses
    whole (range): every lease of the node then lapsed. And it echoed a completed's
    65-char task_id in its completed_ack. The fleet's decoder now refuses both."""
    fleet, fake = fleet_and_delegator
    bad_before = fleet.counters["task_bad_frames"]
    fake.sock.send_multipart([fake.identity, msgspec.msgpack.encode(message)])
    wait_for(lambda: fleet.counters["task_bad_frames"] > bad_before, 5)
    renews = fake.renews
    wait_for(lambda: fake.pump(50) or fake.renews >= renews + 2, 10)  # strictly decoded


def test_the_fleet_still_runs_after_the_fuzzing(
    fleet_and_delegator: tuple[Fleet, FakeDelegator],
) -> None:
    fleet, fake = fleet_and_delegator
    renews = fake.renews
    wait_for(lambda: fake.pump(50) or fake.renews >= renews + 2, 10)  # both nodes tick on
    counters = fleet.status_counters()
    assert counters.get("handler_errors", 0) == 0, counters
    assert counters["task_frames_in"] > 0 and counters["task_bad_frames"] > 0
    assert counters["tasks_unaccounted"] == 0
