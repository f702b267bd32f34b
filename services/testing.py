"""Helpers for tests and benchmarks: free ports, services in-process, waiting on conditions.

Usage::

    config = config_on_free_ports()
    with running(Relay(config)) as relay:
        wait_for(lambda: relay.counters["accepted"] > 0, timeout_s=5)

Curve is on here as everywhere: ``config_on_free_ports`` points ``[security] keys`` at a
keys directory made once per process (``session_keys``: the standard keys, plus ``gateway``,
a node key for every id, which raw test clients speak with), and registers its endpoints
with it, so a client made through the socket factory (CtlClient, IngestClient, a
``Sockets`` of the test's own) finds its keys by the endpoint it connects to. ``Cluster``
makes a keys directory of its own in its workdir.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from .runtime import security
from .runtime.config import (
    ShardEndpoints,
    ShimEndpoints,
    ShoalConfig,
    load_config,
    relay_shards,
    shim_instances,
    with_overrides,
)
from .runtime.keys import KeysDir
from .runtime.ports import next_port, tcp
from .runtime.service import EXIT_BIND_FAILED as BIND_FAILED
from .runtime.service import Service

S = TypeVar("S", bound=Service)


def free_port() -> int:
    """A loopback port nobody else is given (runtime/ports.py says how)."""
    return next_port()


# SHOAL_TEST_PLAIN=1: test configs and clusters with Curve off (to measure what Curve costs
# the suite; tests of Curve itself then fail).
PLAIN_ENV = "SHOAL_TEST_PLAIN"
# The client key raw test clients use: a node key for every id (a test's own gateway).
GATEWAY_KEY = "gateway"
_test_keys: Any = None


def make_keys(path: Any, sim_prefix: str = "sim") -> Any:
    """A keys directory with the standard keys, a ``gateway`` node key for every id, and a
    ``proxy`` service key (the chaos runner's fault proxies); its Path."""
    from pathlib import Path

    keys = KeysDir(path)
    keys.init(sim_prefix)
    for name, role, nodes in ((GATEWAY_KEY, "node", ("*",)), ("proxy", "service", ())):
        if not (keys.allowed_dir / f"{name}.key").exists():
            keys.add(name, role, nodes)
    return Path(path)


def session_keys() -> Any:
    """The keys directory of this process's tests (made once, removed at exit)."""
    global _test_keys
    if _test_keys is None:
        import atexit
        import shutil
        import tempfile

        path = tempfile.mkdtemp(prefix="shoal-test-keys-")
        atexit.register(shutil.rmtree, path, True)
        _test_keys = make_keys(path)
        if security._default is None:
            # Clients of endpoints no config registered (a test's own): these keys too.
            security.set_default(security.Security(keys_dir=_test_keys, name="console"))
    return _test_keys


_raw: Any = None


def raw_socket(
    kind: int, endpoint: str, *, bind: bool = False, key: str | None = None, **options: Any
) -> Any:
    """A test's own socket on ``zmq.Context.instance()``, through the factory (so with the
    Curve keys registered for its endpoint): connected with ``key`` (default: the
    registered one, an operator's; ``GATEWAY_KEY`` for a node), or bound admitting any
    role (a stand-in for a service). Close it with ``sock.close()``."""
    global _raw
    import zmq

    from .runtime.security import ANY_SOCKET
    from .runtime.sockets import Sockets

    if _raw is None:
        _raw = Sockets(zmq.Context.instance())
    if bind:
        return _raw.bind(kind, endpoint, admit=ANY_SOCKET, **options)
    return _raw.connect(kind, endpoint, key=key, **options)


def register_keys(config: ShoalConfig, client_key: str = "console") -> security.Security:
    """Clients of this process connecting to config's endpoints use its keys directory
    with client_key (an operator's, by default: tests act on what they run)."""
    sec = security.Security.from_config(config, client_key)
    security.register(security.endpoints_of(config), sec)
    return sec


def config_on_free_ports(
    base: ShoalConfig | None = None, **sections: dict[str, Any]
) -> ShoalConfig:
    """A config whose every endpoint is a free loopback port; extra keys per section;
    keys from ``session_keys`` (unless ``security`` says otherwise), registered."""
    config = base or load_config(env={})
    own = sections.setdefault("security", {})
    if os.environ.get(PLAIN_ENV) == "1":
        own.setdefault("curve", False)
    if "keys" not in own and config.security.keys == load_config(env={}).security.keys:
        own["keys"] = str(session_keys())
    mqtt_port = next_port()  # the embedded broker listens where the shim connects
    endpoints = {
        "relay": {"ingest": tcp(), "bus": tcp(), "ctl": tcp()},
        "liveness": {"bus": tcp(), "ctl": tcp()},
        "delegator": {"tasks": tcp(), "bus": tcp(), "ctl": tcp()},
        "sim": {"ctl": tcp()},
        "supervisor": {"ctl": tcp()},
        "mqtt": {
            "listen": f"127.0.0.1:{mqtt_port}",
            "broker": f"mqtt://127.0.0.1:{mqtt_port}",
            "shim_ctl": tcp(),
            "shim_bus": tcp(),
            "broker_ctl": tcp(),
            "credentials": str(scratch_dir() / f"mqtt-{mqtt_port}"),
        },
        "boards": {"ctl": tcp(), "bus": tcp()},
        "metrics": {
            name: f"127.0.0.1:{next_port()}"
            for name in ("relay", "liveness", "delegator", "sim", "shim", "boards", "broker")
        },
        "devices": {"ctl": tcp(), "bus": tcp()},
        "ota": {"ctl": tcp(), "bus": tcp()},
    }
    for name, values in endpoints.items():
        values.update(sections.pop(name, {}))
        config = msgspec.structs.replace(
            config, **{name: msgspec.structs.replace(getattr(config, name), **values)}
        )
    for name, values in sections.items():
        config = msgspec.structs.replace(
            config, **{name: msgspec.structs.replace(getattr(config, name), **values)}
        )
    if config.relay.shards > 1 and not config.relay.shard_endpoints:
        extra = [
            ShardEndpoints(ingest=tcp(), bus=tcp(), ctl=tcp(), metrics=f"127.0.0.1:{next_port()}")
            for _ in range(config.relay.shards - 1)
        ]
        config = with_overrides(config, "relay", shard_endpoints=extra)
    if config.mqtt.shims > 1 and not config.mqtt.shim_endpoints:
        shims = [
            ShimEndpoints(ctl=tcp(), bus=tcp(), metrics=f"127.0.0.1:{next_port()}")
            for _ in range(config.mqtt.shims - 1)
        ]
        config = with_overrides(config, "mqtt", shim_endpoints=shims)
    register_keys(config)
    return config


_SCRATCH: list[Path] = []


def scratch_dir() -> Path:
    """A directory of this process's own, removed when it exits: where a config made here
    keeps what must not land in the working directory (MQTT credentials). Made on first use;
    a test that wants its files elsewhere passes its own path."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="shoal-test-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def wait_for(
    condition: Callable[[], Any],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll condition until it returns something truthy; AssertionError on timeout.

    Exceptions of the ``ignore`` types count as "not yet" (a service still starting).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {condition}")
        time.sleep(interval_s)


@contextlib.contextmanager
def running(service: S, timeout_s: float = 10.0) -> Iterator[S]:
    """Run a service in a thread for the duration of the block; always stop and join it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run(install_signals=False)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=target, name=f"svc-{service.name}", daemon=True)
    thread.start()
    try:
        if not service.wait_ready(timeout_s):
            raise AssertionError(f"{service.name} did not start: {errors}")
        yield service
    finally:
        service.stop()
        thread.join(timeout_s)
        if thread.is_alive():
            raise AssertionError(f"{service.name} did not stop within {timeout_s}s")
    if errors:
        raise errors[0]


class IngestClient:
    """A raw node-side connection to the relay's ingest, for tests and benchmarks; with
    the ``gateway`` key (a node key for every id) unless ``key`` names another."""

    def __init__(self, endpoint: str, key: str = GATEWAY_KEY) -> None:
        import zmq

        from .runtime.sockets import Sockets

        self.ctx = zmq.Context()
        self.sockets = Sockets(self.ctx)
        self.sock = self.sockets.connect(zmq.DEALER, endpoint, key=key)
        self.acks: dict[tuple[str, int], set[int]] = {}

    def send(self, msg: Any) -> None:
        from shoal.protocol import codec

        self.sock.send(msg if isinstance(msg, bytes) else codec.encode(msg))

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def pump_acks(self, timeout_s: float = 0.05) -> dict[tuple[str, int], set[int]]:
        """Read acks for up to timeout_s; returns every acked seq per (node, boot)."""
        from shoal.protocol import codec

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000) + 1):
            ack = codec.decode_ack(self.sock.recv())
            for entry in ack.acks:
                key = (entry.node_id, entry.boot_id)
                self.acks.setdefault(key, set()).update(range(entry.first, entry.last + 1))
        return self.acks

    def close(self) -> None:
        self.sockets.close_all()
        self.ctx.term()


class BusListener:
    """Subscribes to a service's bus and collects its frames, by topic."""

    def __init__(
        self, endpoint: str, topics: tuple[bytes, ...] = (b"",), key: str | None = None
    ) -> None:
        import zmq

        from .runtime.sockets import Sockets

        self.ctx = zmq.Context()
        self.sockets = Sockets(self.ctx)
        self.sock = self.sockets.connect(zmq.SUB, endpoint, key=key, hwm=0)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.frames: list[Any] = []
        self.records: list[Any] = []

    def pump(self, timeout_s: float = 0.05) -> list[Any]:
        from shoal.protocol import codec
        from shoal.protocol.messages import NodeRecords

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000) + 1):
            _, frame = codec.decode_bus(self.sock.recv())
            self.frames.append(frame)
            if isinstance(frame, NodeRecords):
                self.records.extend(frame.records)
        return self.records

    def close(self) -> None:
        self.sockets.close_all()
        self.ctx.term()


START_ATTEMPTS = 3


def tcp_listening(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """Whether something accepts TCP connections at host:port (the MQTT broker's readiness)."""
    import socket

    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


class Cluster:
    """`shoal up --headless` as a real process tree on free ports, for tests and benchmarks.

    Usage::

        with Cluster(tmp_path, nodes=8) as cluster:
            cluster.wait_nodes(8)
            cluster.ps()  # the supervisor's process table

    Its keys are its own (``keys`` in the workdir, the standard ones and ``gateway``); this
    process's clients of its endpoints use ``client_key`` (an operator's by default).
    """

    def __init__(
        self,
        workdir: Any,
        nodes: int = 8,
        without: tuple[str, ...] = (),
        up_options: dict[str, str] | None = None,
        boards: int = 0,
        board_config: dict[str, Any] | None = None,
        client_key: str = "console",
        **sections: dict[str, Any],
    ) -> None:
        from pathlib import Path

        self.workdir = Path(workdir)
        self.client_key = client_key
        self.nodes = nodes
        self.boards = boards  # emulated boards (MicroPython processes); none by default
        if board_config:
            sections["boards"] = board_config  # the [boards] section (``boards`` is the count)
        # Services left out: a deliberately broken cluster. The OTA service only with boards
        # (a cluster of simulated nodes has nothing to update; one process less to start).
        self.without = without if boards or "ota" in without else (*without, "ota")
        # More `shoal up` options, e.g. {"--broker": "mqtt://..."}: a broker of the caller's.
        self.up_options = up_options or {}
        delegator = {"ledger": str(self.workdir / "ledger.db"), **sections.pop("delegator", {})}
        devices = {"registry": str(self.workdir / "devices.db"), **sections.pop("devices", {})}
        security_keys = {"keys": str(self.workdir / "keys"), **sections.pop("security", {})}
        if os.environ.get(PLAIN_ENV) == "1":
            security_keys.setdefault("curve", False)
        if security_keys.get("curve", True):
            prefix = sections.get("sim", {}).get("id_prefix", "sim")
            make_keys(security_keys["keys"], prefix)
        mqtt = {"credentials": str(self.workdir / "mqtt-credentials"), **sections.pop("mqtt", {})}
        ota = {"store": str(self.workdir / "ota"), **sections.pop("ota", {})}
        self._sections = {
            "delegator": delegator,
            "devices": devices,
            "mqtt": mqtt,
            "ota": ota,
            "security": security_keys,
            **sections,
        }
        self.config_path = self.workdir / "shoal.toml"
        self.log_path = self.workdir / "cluster.log"
        self.proc: Any = None
        self._new_ports()

    def _new_ports(self) -> None:
        from .runtime.config import dump_toml

        sections = {k: dict(v) for k, v in self._sections.items()}
        self.config = config_on_free_ports(None, **sections)
        self.security = register_keys(self.config, self.client_key)
        self.config_path.write_text(dump_toml(self.config))

    def __enter__(self) -> Cluster:
        """Start it and wait until every process runs; on a port taken between choosing it
        and binding it (another test's cluster, an outgoing connection), start again on
        other ports (a free port is only free until someone binds it)."""
        for attempt in range(START_ATTEMPTS):
            self._start()
            if self._started() or attempt == START_ATTEMPTS - 1:
                return self
            self.stop()
            self._log.close()
            self._new_ports()
        return self

    def _start(self) -> None:
        import subprocess
        import sys

        argv = [sys.executable, "-m", "shoal.services.cli", "up", "--headless"]
        argv += ["--nodes", str(self.nodes), "--config", str(self.config_path)]
        argv += ["--boards", str(self.boards)]
        argv += [f"--without={name}" for name in self.without]
        argv += [arg for option in self.up_options.items() for arg in option]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _started(self, timeout_s: float = 30.0) -> bool:
        """True once every service answers on its ctl socket (it binds everything before
        it serves); False if the cluster or a service could not bind (it exited, or a
        child exited with code 2)."""
        from .runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

        endpoints = {
            "relay": self.config.relay.ctl,
            "liveness": self.config.liveness.ctl,
            "delegator": self.config.delegator.ctl,
            "sim": self.config.sim.ctl,
            "shim": self.config.mqtt.shim_ctl,
        }
        for k, shard in enumerate(relay_shards(self.config)[1:], start=1):
            endpoints[f"relay-{k}"] = shard.ctl
        for k, shim in enumerate(shim_instances(self.config)[1:], start=1):
            endpoints[f"shim-{k}"] = shim.ctl
        if self.boards:
            endpoints["boards"] = self.config.boards.ctl
            endpoints["ota"] = self.config.ota.ctl
        # relay-1 and shim-1 are relay and shim too: --without=relay leaves them out.
        waiting = {k: v for k, v in endpoints.items() if k.split("-")[0] not in self.without}
        mqtt = self.config.mqtt
        external = "--broker" in self.up_options or "broker" in self.without
        broker_waiting = mqtt.embedded and not external
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                rows = self.ps()
            except (RuntimeError, TimeoutError):
                rows = {}
            if any(r["restarts"] and r["last_exit"] == BIND_FAILED for r in rows.values()):
                return False
            for name, endpoint in list(waiting.items()):
                try:
                    with CtlClient(endpoint) as client:
                        client.call("ping", timeout_s=0.3, retries=0)
                    del waiting[name]
                except (CtlFailed, CtlUnavailable):
                    pass
            if broker_waiting and tcp_listening(*mqtt.listen_address()):
                broker_waiting = False  # the broker has no ctl socket: it accepts, it is up
            if not waiting and not broker_waiting:
                return True
            time.sleep(0.05)
        return True  # slow, not refused: let the caller's own waits decide

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self._log.close()

    def stop(self, timeout_s: float = 15.0) -> int:
        """Ctrl-C the supervisor and wait; SIGKILL the whole group if it hangs."""
        import os
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return int(self.proc.returncode) if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return int(self.proc.wait(timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"shoal up did not stop within {timeout_s}s") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ps(self) -> dict[str, dict[str, Any]]:
        from .supervisor.supervisor import supervisor_request

        return {row["name"]: row for row in supervisor_request(self.config.supervisor.ctl, "ps")}

    def snapshot(self) -> Any:
        from .relay.client import RelayClient

        with RelayClient(self.config) as relay:
            return relay.snapshot(timeout_s=0.5, retries=0)

    def sim_counters(self) -> dict[str, int]:
        from shoal.protocol.messages import ServiceStatus

        from .runtime.ctl_client import CtlClient

        with CtlClient(self.config.sim.ctl) as sim:
            status: ServiceStatus = sim.call(
                "status", result_type=ServiceStatus, timeout_s=0.5, retries=0
            )
        return status.counters
