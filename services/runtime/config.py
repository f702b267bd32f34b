"""Typed configuration: built-in defaults, one TOML file to override them, env vars for endpoints.

Every key and default lives here. A wrong key or type stops the program at start with a
message that names the key (msgspec's ``forbid_unknown_fields`` does the naming); so does
what a type cannot say: an endpoint that is no ZMQ URL, a port out of range, thresholds in
the wrong order (``validated``). Each error is one line naming the key and its value.
Long on purpose: every section's keys and defaults in one file, the one place a reader
looks (docs/protocol.md's table of defaults is checked against it).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from shoal.protocol import limits

from .endpoints import (
    endpoint_error,
    is_local,
    listen_error,
    mqtt_url_error,
    split_host_port,
)

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


class _Check:
    """Annotated metadata: a check of a str key that a type cannot say (run by load_config
    and ``validated``). ``why`` returns what is wrong with a value, or None."""

    def __init__(self, why: Callable[[str], str | None], optional: bool = False) -> None:
        self.why = why
        self.optional = optional  # "" is allowed: "not set"

    def error(self, value: str) -> str | None:
        return None if self.optional and value == "" else self.why(value)


# The checked kinds of str keys. Optional ones may be "": not set (an override of where a
# service reaches another one, or of the broker the shim alone uses).
Endpoint = Annotated[str, _Check(endpoint_error)]
OptionalEndpoint = Annotated[str, _Check(endpoint_error, optional=True)]
MqttUrl = Annotated[str, _Check(mqtt_url_error)]
OptionalMqttUrl = Annotated[str, _Check(mqtt_url_error, optional=True)]
ListenAddress = Annotated[str, _Check(listen_error)]
OptionalListenAddress = Annotated[str, _Check(listen_error, optional=True)]


class _Section(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class RuntimeConfig(_Section, frozen=True):
    """What every service shares."""

    heartbeat_interval_ms: PositiveInt = 500
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Rejects and other noisy events are summed and logged at most once per interval.
    log_summary_interval_s: Positive = 5.0


class ShardEndpoints(_Section, frozen=True):
    """Where one more relay shard binds ([[relay.shard_endpoints]], for shards 1, 2, ...)."""

    ingest: Endpoint
    bus: Endpoint
    ctl: Endpoint
    metrics: OptionalListenAddress = ""


class ShimEndpoints(_Section, frozen=True):
    """Where one more MQTT shim instance binds ([[mqtt.shim_endpoints]], for 1, 2, ...)."""

    ctl: Endpoint
    bus: Endpoint
    metrics: OptionalListenAddress = ""


# A shard (or shim instance) k > 0 with no endpoints of its own binds its first one's ports
# plus k x this: shard 1 of the default relay at 7800-7802, its metrics at 9800.
INSTANCE_PORT_STEP = 100
_T = TypeVar("_T", ShardEndpoints, ShimEndpoints)


class RelayConfig(_Section, frozen=True):
    ingest: Endpoint = "tcp://127.0.0.1:7700"  # nodes and gateways connect here (ROUTER)
    bus: Endpoint = "tcp://127.0.0.1:7701"  # accepted records republished here (PUB)
    ctl: Endpoint = "tcp://127.0.0.1:7702"  # snapshot and status requests (ROUTER)
    dedup_window: Annotated[int, Meta(ge=8, le=4096)] = 256
    # Per-node token bucket: a node at 4 heartbeats + 1 telemetry a second uses 5.
    rate_per_node_hz: Positive = 50.0
    rate_burst: PositiveInt = 200
    max_nodes: PositiveInt = 10_000
    # A connection may bring in this many node ids that have not yet sent a second message
    # (a gateway's whole fleet at its start: the shim's 1,000 boards); a made-up id that
    # never speaks again is a phantom, forgotten after phantom_after_s (or two of the
    # heartbeat intervals its hello announced, if longer): a real node has spoken again.
    new_ids_per_conn: PositiveInt = 2_048
    phantom_after_s: Positive = 60.0
    # How many frames the ingest and bus sockets queue before senders wait (ZMQ HWM).
    # Small: frames wait in the senders' own queues (and nodes' rings) rather than in the
    # relay's memory; 1,000 keeps throughput and bounds RSS.
    ingest_hwm: PositiveInt = 1_000
    bus_hwm: PositiveInt = 100_000
    # A node id belongs to the connection it was last accepted from; another connection may
    # take it over once that one has closed, or once the node has sent nothing for this long
    # (its link died unnoticed). Three heartbeats of the slowest node (ESP32: 1 s), twelve of
    # a simulated one: a spoofer cannot take over a node that is talking.
    rebind_after_ms: PositiveInt = 3_000
    # Relay processes (shards); node N's records go to shard crc32(N) % shards, gateways
    # route by that hash and consumers follow every shard's bus (docs/architecture.md,
    # "Scaling out"). Shard 0 binds ingest, bus and ctl above; shard k binds shard_endpoints[k-1]
    # when given, else those ports + k x 100.
    shards: Annotated[int, Meta(ge=1, le=16)] = 1
    shard_endpoints: list[ShardEndpoints] = []


class Burst(_Section, frozen=True):
    """A periodic burst of the simulated workload: from ``start_s`` after the fleet starts
    and then every ``every_s`` seconds, the arrival rate of ``nodes`` (default: all) is
    multiplied by ``factor`` for ``duration_s`` seconds. Overlapping bursts multiply."""

    every_s: Positive
    duration_s: Positive
    factor: Annotated[float, Meta(ge=0, le=1000)] = 2.0
    start_s: Annotated[float, Meta(ge=0)] = 0.0
    nodes: list[str] = []


class SimConfig(_Section, frozen=True):
    ctl: Endpoint = "tcp://127.0.0.1:7703"  # per-node state and load control (ROUTER)
    nodes: Annotated[int, Meta(ge=0, le=100_000)] = 8
    id_prefix: str = "sim"
    # A fleet split over several hosts, one process on each (docs/deploy.md): this process
    # runs only these of the fleet's ids ([]: all of them). Hot spots, rates and bursts
    # still name nodes of the whole fleet, so every host reads the same workload.
    only: list[str] = []
    seed: int = 1
    telemetry_interval_ms: PositiveInt = 1000
    heartbeat_interval_ms: PositiveInt = 250
    # Load model: tasks arrive at arrival_rate_hz, each costs task_cost_ms of CPU,
    # the node runs service_rate_hz of them at most (capacity).
    arrival_rate_hz: Annotated[float, Meta(ge=0)] = 4.0
    task_cost_ms: Positive = 100.0
    # Tasks a node can serve per second; 0: 1000 / task_cost_ms (a CPU doing 1 ms of work
    # per ms). Load factor = arrival rate / service rate.
    service_rate_hz: Annotated[float, Meta(ge=0)] = 0.0
    queue_capacity: PositiveInt = 64
    # Workload beyond the uniform arrival_rate_hz (services/sim/workload.py). A node's
    # base rate is, by precedence: its entry in ``rates`` ([sim.rates] "sim-003" = 12.0,
    # tasks/s); hot_spot_factor x its capacity if it is a hot spot; arrival_rate_hz.
    # hot_spots: node ids, or a count N (N nodes spread evenly over the fleet).
    rates: dict[str, Annotated[float, Meta(ge=0, le=10_000)]] = {}
    hot_spots: Annotated[int, Meta(ge=0)] | list[str] = []
    hot_spot_factor: Annotated[float, Meta(ge=0, le=1000)] = 3.0
    bursts: list[Burst] = []
    # Node-side delivery: retry buffer, ack timeout and reconnect backoff.
    ring_capacity: PositiveInt = 512
    ack_timeout_ms: PositiveInt = 1500
    backoff_min_ms: PositiveInt = 100
    backoff_max_ms: PositiveInt = 5000
    tick_ms: PositiveInt = 50


class LivenessConfig(_Section, frozen=True):
    """The failure detector (docs/architecture.md, "Liveness", says how the defaults were
    chosen). A node's thresholds follow from its own arrivals:

        base       = mean interval + pause_intervals * expected interval
        spread     = max(std of intervals, min_std_fraction * expected interval)
        suspect at   base + z(phi_suspect) * spread of silence
        dead at      base + z(phi_dead) * spread of silence

    where z(phi) is the normal quantile with tail 10**-phi. With 250 ms heartbeats and a
    clean link: suspect after ~0.85 s of silence, dead after ~1.4 s; a lossy link widens
    its own thresholds (its intervals spread).
    """

    bus: Endpoint = "tcp://127.0.0.1:7704"  # membership events and observer health (PUB)
    ctl: Endpoint = "tcp://127.0.0.1:7705"  # members, member, forget (ROUTER)
    # How often silences are checked: the granularity of a verdict.
    check_interval_ms: Annotated[int, Meta(ge=5, le=1000)] = 25
    # Intervals kept per node (a sliding window, as in Akka's phi-accrual detector).
    window: Annotated[int, Meta(ge=4, le=1000)] = 100
    # Intervals needed before a node's own statistics replace the prior.
    min_samples: Annotated[int, Meta(ge=1, le=1000)] = 5
    # The prior interval for a node that has not announced one (no hello seen yet).
    default_interval_ms: PositiveInt = 1000
    pause_intervals: Annotated[float, Meta(ge=0)] = 1.75
    min_std_fraction: Positive = 0.5
    phi_suspect: Positive = 1.0
    phi_dead: Positive = 8.0
    # Observer health: the relay's heartbeat missing for this many of its intervals...
    relay_silent_beats: Positive = 2.0
    # ... the monitor's own loop late by more than this...
    loop_lag_limit_ms: PositiveInt = 500
    # ... or at least this fraction (and this many) of live nodes overdue at once.
    mass_silence_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.5
    mass_silence_min_nodes: PositiveInt = 3
    # A fleet-wide silence while the relay itself is healthy is believed after this long
    # (a real correlated failure, such as a power cut, must not stay unreported).
    max_suspend_ms: PositiveInt = 10_000
    # Boards behind the MQTT shim get no verdict while the broker or the shim is down, and
    # this long after both are back (they reconnect with backoff; the shim resubscribes).
    gateway_grace_ms: Annotated[int, Meta(ge=0, le=60_000)] = 2000
    # Dead and left nodes stay listed until an operator removes them (op "forget", the
    # console's remove); > 0: forgotten automatically after this long. max_nodes bounds them.
    forget_after_s: Annotated[float, Meta(ge=0)] = 0.0
    # A node heard once only (a made-up id, or a board that died at once) is forgotten
    # this long after it was declared dead, whatever forget_after_s says.
    phantom_after_s: Positive = 60.0
    max_nodes: PositiveInt = 10_000
    # Where the monitor reaches the relay, if not at [relay] bus / ctl ("": the relay's
    # own endpoints). The fault injector points these at a fault proxy
    # (services/chaos/fault_proxy.py) to partition the monitor from the relay. The monitor only
    # subscribes to the relay's bus today; relay_ctl is there for the other half of the link.
    relay_bus: OptionalEndpoint = ""
    relay_ctl: OptionalEndpoint = ""


class DelegatorConfig(_Section, frozen=True):
    """Task delegation (docs/delegation.md)."""

    tasks: Endpoint = "tcp://127.0.0.1:7706"  # nodes and gateways connect here (ROUTER)
    bus: Endpoint = "tcp://127.0.0.1:7707"  # its heartbeat with counters (PUB)
    ctl: Endpoint = "tcp://127.0.0.1:7708"  # tasks, task, audit, drain, owned, revoked (ROUTER)
    ledger: str = "shoal-ledger.db"  # SQLite file (WAL); relative to the working directory
    # Pruning (docs/delegation.md): a delivered or dead-lettered task is kept whole this
    # long after its last change (shoal tasks, its history), then leaves a tombstone that
    # still answers its late messages. An hour is far past any resend (seconds).
    ledger_retention_s: Annotated[float, Meta(ge=0, le=31_536_000)] = 3600.0
    # Beyond this many tasks final ones go sooner, oldest first; open ones never do. About
    # 900 bytes each with their history: 100,000 is ~90 MB.
    ledger_max_tasks: Annotated[int, Meta(ge=1, le=100_000_000)] = 100_000
    # Tombstones kept, oldest dropped first: ~100 bytes each, 200,000 is ~20 MB.
    ledger_max_pruned: Annotated[int, Meta(ge=0, le=100_000_000)] = 200_000
    lease_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 3000
    # An assignment not answered within this is sent again, up to assign_tries times; then
    # the task goes back to pending for another peer.
    assign_timeout_ms: PositiveInt = 500
    assign_tries: PositiveInt = 3
    # A completed result not acknowledged by its origin is sent again this often.
    completed_retry_ms: PositiveInt = 1000
    # After this many redeliveries (dead owner, lapsed lease; a peer's refusal is not
    # one) a task is dead-lettered with its reason.
    max_redeliveries: Annotated[int, Meta(ge=0, le=100)] = 3
    # Placement: a peer takes delegated work while its queue is below this fill.
    accept_fill: Annotated[float, Meta(gt=0, le=1)] = 0.5
    placement_interval_ms: PositiveInt = 20
    enabled: bool = True  # False: offers are refused (the baseline of bench/delegation.py)
    # Where the delegator reaches the relay and the liveness monitor, if not at their own
    # [relay] / [liveness] bus and ctl ("": theirs). The fault injector points these at a
    # fault proxy (services/chaos/fault_proxy.py) to partition the delegator from either.
    relay_bus: OptionalEndpoint = ""
    relay_ctl: OptionalEndpoint = ""
    liveness_bus: OptionalEndpoint = ""
    liveness_ctl: OptionalEndpoint = ""


class SupervisorConfig(_Section, frozen=True):
    ctl: Endpoint = "tcp://127.0.0.1:7790"
    restart_backoff_min_s: Positive = 0.1
    restart_backoff_max_s: Positive = 10.0
    # A process that stayed up this long has its backoff reset.
    stable_after_s: Positive = 10.0
    stop_timeout_s: Positive = 5.0


class MqttConfig(_Section, frozen=True):
    """Boards over MQTT: the broker they and the shim use, and the shim itself
    (docs/protocol.md, "MQTT (boards)"; docs/architecture.md, "The device path")."""

    # Where the shim (and the boards) reach the broker. With ``embedded``, ``shoal up``
    # starts one (services/broker) listening on ``listen``, which should be the same port.
    broker: MqttUrl = "mqtt://127.0.0.1:1883"
    embedded: bool = True
    listen: ListenAddress = "127.0.0.1:1883"
    # The shim's MQTT keepalive; the embedded broker drops any client silent for 1.5 x its
    # own keepalive (amqtt itself never does: its issue #308), so a board's will fires.
    keepalive_s: Annotated[int, Meta(ge=1, le=65_535)] = 10
    # The largest payload the shim decodes (bytes); larger ones are refused as oversize.
    max_payload: Annotated[int, Meta(ge=64, le=limits.MAX_FRAME_BYTES)] = 4096
    max_clients: PositiveInt = 2000  # connections the embedded broker serves at once
    # The shim: its name (in its client id and its state topic), its endpoints, its login.
    shim_id: Annotated[str, Meta(pattern=limits.NODE_ID_PATTERN)] = "shim-1"
    shim_ctl: Endpoint = "tcp://127.0.0.1:7709"  # ping, status, boards (ROUTER)
    shim_bus: Endpoint = "tcp://127.0.0.1:7710"  # its heartbeat with counters (PUB)
    # Where the shim alone reaches the broker, when not at ``broker`` ("": at ``broker``):
    # the fault injector puts a TCP proxy here to cut the broker-to-shim link only.
    shim_broker: OptionalMqttUrl = ""
    # The shim's login: "" is its own, svc.shim, from ``credentials`` (made on first use);
    # set both to use an account of another broker's.
    username: str = ""
    password: str = ""
    # Every MQTT login (boards: their node id; services: svc.<name>), hashed in a
    # mosquitto password file with the ACL beside it, and each password in secrets/ (0600)
    # for what logs in from this host (services/broker/credentials.py). Relative to the
    # working directory, like the ledger.
    credentials: str = "shoal-keys/mqtt"
    # The embedded broker admits a client without a username only when this is true (and
    # gives it every topic): for a lab or a test of the broker alone, never for boards.
    allow_anonymous: bool = False
    # The embedded broker's status (ping, status: its refusal counters) (ROUTER).
    broker_ctl: Endpoint = "tcp://127.0.0.1:7715"
    # A CA certificate (PEM) to verify the broker with: set, the shim connects over TLS
    # (a mosquitto listener with certfile/keyfile; docs/protocol.md §11).
    tls_ca: str = ""
    # Forwarding to the relay: a batch leaves at batch_max records or batch_interval_ms
    # after its first record, whichever comes first (0: at the end of each read pass).
    batch_max: Annotated[int, Meta(ge=1, le=limits.MAX_BATCH_RECORDS)] = 64
    batch_interval_ms: Annotated[int, Meta(ge=0, le=1000)] = 5
    # Reconnecting to the broker: full-jitter exponential backoff between these.
    reconnect_min_ms: PositiveInt = 100
    reconnect_max_ms: PositiveInt = 5000
    # Shim instances sharing the boards: instance k carries the boards whose
    # crc32(node_id) % shims is k and drops the others' messages (docs/architecture.md,
    # "Scaling out"). Instance 0 binds shim_ctl and shim_bus above and is shim_id;
    # instance k binds shim_endpoints[k-1] when given, else those ports + k x 100, and is
    # "<shim_id>-<k>".
    shims: Annotated[int, Meta(ge=1, le=16)] = 1
    shim_endpoints: list[ShimEndpoints] = []
    # Boards the shim keeps track of; a board silent this long is forgotten.
    max_boards: PositiveInt = 10_000
    forget_after_s: Positive = 600.0

    def broker_address(self) -> tuple[str, int]:
        """``broker`` as (host, port); the port defaults to 1883."""
        return split_host_port(self.broker.removeprefix("mqtt://"), 1883)

    def shim_broker_address(self) -> tuple[str, int]:
        """Where the shim connects: ``shim_broker`` if set, else ``broker``."""
        url = self.shim_broker or self.broker
        return split_host_port(url.removeprefix("mqtt://"), 1883)

    def listen_address(self) -> tuple[str, int]:
        """``listen`` as (host, port); an empty host is every interface."""
        return split_host_port(self.listen, 1883)


FirmwareValue = int | float | str | bool | None


class BoardsConfig(_Section, frozen=True):
    """Emulated boards (``shoal boards``, ``shoal up --boards N``): the real firmware in the
    MicroPython unix port, one process per board, over real TCP to ``[mqtt] broker``."""

    ctl: Endpoint = "tcp://127.0.0.1:7711"  # boards, power_off, power_on, radio (ROUTER)
    bus: Endpoint = "tcp://127.0.0.1:7712"  # its heartbeat with counters (PUB)
    count: Annotated[int, Meta(ge=0, le=256)] = 2
    # Board ids are PREFIX-01, PREFIX-02, ... (node ids: lower case, digits, "-").
    id_prefix: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,24}\Z")] = "board"
    # The MicroPython heap: about 110 KB is free on an ESP32 without PSRAM.
    heap: Annotated[str, Meta(pattern=r"^[0-9]+[KM]?\Z")] = "110K"
    # The board's MQTT keepalive: the embedded broker drops a silent board after 1.5 x
    # this and publishes its will (a power cut sends nothing).
    keepalive_s: Annotated[int, Meta(ge=1, le=65_535)] = 10
    # Keys of firmware/esp32/config.py CONFIG to override on every board ("load_arrival_hz"
    # = 2.0, ...); and per board, by node id.
    firmware: dict[str, FirmwareValue] = {}
    per_board: dict[str, dict[str, FirmwareValue]] = {}
    # A board that exits (machine.reset(), or a crash) boots again after this long.
    reboot_delay_ms: Annotated[int, Meta(ge=0, le=60_000)] = 500


class MetricsConfig(_Section, frozen=True):
    """Where each service serves Prometheus metrics (``/metrics``, HTTP), as host:port; ""
    for none. Loopback by default: the figures are for a scraper on this host."""

    relay: OptionalListenAddress = "127.0.0.1:9700"
    liveness: OptionalListenAddress = "127.0.0.1:9701"
    delegator: OptionalListenAddress = "127.0.0.1:9702"
    sim: OptionalListenAddress = "127.0.0.1:9703"
    shim: OptionalListenAddress = "127.0.0.1:9704"
    boards: OptionalListenAddress = "127.0.0.1:9705"
    broker: OptionalListenAddress = "127.0.0.1:9706"


class DevicesConfig(_Section, frozen=True):
    """The device registry (``shoal devices``, ``shoal run registry``; docs/architecture.md,
    "The device registry")."""

    # SQLite file (WAL) of the boards; relative to the working directory, like the ledger.
    registry: str = "shoal-devices.db"
    ctl: Endpoint = "tcp://127.0.0.1:7713"  # ping, status, devices (ROUTER)
    bus: Endpoint = "tcp://127.0.0.1:7714"  # its heartbeat with counters (PUB)
    # Last seen and firmware are written in one transaction this often (not per message).
    flush_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000


class OtaConfig(_Section, frozen=True):
    """Over-the-air updates (``shoal firmware ota``, ``shoal run ota``; services/ota)."""

    ctl: Endpoint = "tcp://127.0.0.1:7716"  # rollout, progress, abort (ROUTER)
    bus: Endpoint = "tcp://127.0.0.1:7717"  # its heartbeat with counters (PUB)
    # Where the service keeps the bundles it was given and the rollout (survives restarts).
    store: str = "shoal-ota"
    client_id: str = "shoal-ota"  # its MQTT client id
    # The chunk a board asks for: 1 KB keeps the board's RAM small (one chunk at a time).
    chunk_bytes: Annotated[int, Meta(ge=64, le=2048)] = 1024
    # A board that switched must confirm its new boot (and be alive) within this.
    trial_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 90.0
    # Boards under way are offered again this often (a board that lost the offer).
    offer_every_s: Annotated[float, Meta(gt=0, le=600)] = 3.0


class SecurityConfig(_Section, frozen=True):
    """CurveZMQ on every ZMQ socket, and roles (services/runtime/security.py; docs/protocol.md
    §14). The keys directory is made by ``shoal keys init``, or by the first ``shoal up``."""

    # False: nothing is authenticated, and no socket may bind a non-loopback address.
    curve: bool = True
    # The keys directory (certificates; secret files 0600); relative to the working
    # directory, like the ledger.
    keys: str = "shoal-keys"
    # The client key of this machine's commands (shoal status, tui, chaos run): "" for
    # each command's own (reader; console; scenarios). A service always uses its name.
    key: Annotated[str, Meta(pattern=r"^([a-z0-9][a-z0-9_-]{0,62})?\Z")] = ""
    # How often a service looks for a change of the allowlist (a key added or revoked).
    check_interval_ms: Annotated[int, Meta(ge=50, le=60_000)] = 500


class ShoalConfig(_Section, frozen=True):
    runtime: RuntimeConfig = RuntimeConfig()
    relay: RelayConfig = RelayConfig()
    liveness: LivenessConfig = LivenessConfig()
    delegator: DelegatorConfig = DelegatorConfig()
    sim: SimConfig = SimConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    mqtt: MqttConfig = MqttConfig()
    boards: BoardsConfig = BoardsConfig()
    metrics: MetricsConfig = MetricsConfig()
    devices: DevicesConfig = DevicesConfig()
    ota: OtaConfig = OtaConfig()
    security: SecurityConfig = SecurityConfig()


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


# Endpoints can be moved without a file: SHOAL_RELAY_INGEST=tcp://10.0.0.5:7700 and so on.
ENV_ENDPOINTS = {
    "SHOAL_RELAY_INGEST": ("relay", "ingest"),
    "SHOAL_RELAY_BUS": ("relay", "bus"),
    "SHOAL_RELAY_CTL": ("relay", "ctl"),
    "SHOAL_LIVENESS_BUS": ("liveness", "bus"),
    "SHOAL_LIVENESS_CTL": ("liveness", "ctl"),
    "SHOAL_DELEGATOR_TASKS": ("delegator", "tasks"),
    "SHOAL_DELEGATOR_BUS": ("delegator", "bus"),
    "SHOAL_DELEGATOR_CTL": ("delegator", "ctl"),
    "SHOAL_SIM_CTL": ("sim", "ctl"),
    "SHOAL_SUPERVISOR_CTL": ("supervisor", "ctl"),
    "SHOAL_MQTT_BROKER": ("mqtt", "broker"),
    "SHOAL_SHIM_CTL": ("mqtt", "shim_ctl"),
    "SHOAL_SHIM_BUS": ("mqtt", "shim_bus"),
    "SHOAL_BOARDS_CTL": ("boards", "ctl"),
    "SHOAL_OTA_CTL": ("ota", "ctl"),
}


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> ShoalConfig:
    """Defaults, then the TOML file if given, then endpoint env vars; checked (``validated``)."""
    env = dict(os.environ if env is None else env)
    if path is None and env.get("SHOAL_CONFIG"):
        path = env["SHOAL_CONFIG"]
    config = ShoalConfig() if path is None else _from_file(path)
    for var, (section, key) in ENV_ENDPOINTS.items():
        if env.get(var):
            config = _from_env(config, var, section, key, env[var])
    try:
        _check_relations(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
    return config


def _from_file(path: str | Path) -> ShoalConfig:
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        config = msgspec.toml.decode(text, type=ShoalConfig)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{path}: {_readable(str(err))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {_one_line(err)}") from None
    try:
        _check_keys(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def _from_env(config: ShoalConfig, var: str, section: str, key: str, value: str) -> ShoalConfig:
    """config with one endpoint moved by an env var; a bad value is an error naming it."""
    sect = getattr(config, section)
    why = _checks(type(sect))[key].error(value)
    if why is not None:
        raise ConfigError(f"{var} ({section}.{key}): {value!r} {why}")
    return with_overrides(config, section, **{key: value})


def validated(config: ShoalConfig) -> ShoalConfig:
    """config if every key holds (types and ranges, endpoints, thresholds in order); else a
    ConfigError naming the first key that does not. For a config built in code (CLI flags
    applied with ``with_overrides``), which msgspec did not decode."""
    try:
        config = msgspec.convert(msgspec.to_builtins(config), ShoalConfig)
    except msgspec.ValidationError as err:
        raise ConfigError(_readable(str(err))) from None
    _check_keys(config)
    _check_relations(config)
    return config


_CHECKS: dict[type, dict[str, _Check]] = {}


def _checks(section_type: type) -> dict[str, _Check]:
    """A section's checked str keys, from their Annotated types (read once per type)."""
    if section_type not in _CHECKS:
        hints = typing.get_type_hints(section_type, include_extras=True)
        _CHECKS[section_type] = {
            name: meta
            for name, hint in hints.items()
            for meta in getattr(hint, "__metadata__", ())
            if isinstance(meta, _Check)
        }
    return _CHECKS[section_type]


def _sections(config: ShoalConfig) -> list[tuple[str, Any]]:
    """Every section, and the endpoints of each relay shard after the first (checked, and
    kept apart from every other bind, like a section's own)."""
    sections = [(name, getattr(config, name)) for name in config.__struct_fields__]
    shards = relay_shards(config)[1:]
    shims = shim_instances(config)[1:]
    return (
        sections
        + [(f"relay.shard_endpoints[{k}]", e) for k, e in enumerate(shards)]
        + [(f"mqtt.shim_endpoints[{k}]", e) for k, e in enumerate(shims)]
    )


def _moved(address: str, k: int) -> str:
    """An endpoint (tcp://host:port) or listen address (host:port) k instances on."""
    if not address:
        return address
    head, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address  # inproc://, ipc://, or ":*": nothing to move
    return f"{head}:{int(port) + k * INSTANCE_PORT_STEP}"


def _instances(first: _T, listed: list[_T], count: int) -> list[_T]:
    """Instance 0 at ``first``, instance k at ``listed[k-1]`` or, past the list, at
    ``first``'s ports + k x INSTANCE_PORT_STEP (relay shards, shim instances)."""
    keys = first.__struct_fields__
    return [first] + [
        listed[k - 1]
        if k - 1 < len(listed)
        else type(first)(**{key: _moved(getattr(first, key), k) for key in keys})
        for k in range(1, count)
    ]


def relay_shards(config: ShoalConfig) -> list[ShardEndpoints]:
    """Where each relay shard binds, shard 0 first (docs/architecture.md, "Scaling out")."""
    relay = config.relay
    first = ShardEndpoints(
        ingest=relay.ingest, bus=relay.bus, ctl=relay.ctl, metrics=config.metrics.relay
    )
    return _instances(first, relay.shard_endpoints, relay.shards)


def relay_shard(config: ShoalConfig, k: int) -> ShoalConfig:
    """config as shard k of the relay sees it: [relay] and [metrics] relay at its endpoints
    (for the shard's process alone: shard k's endpoints then appear twice, so check the
    config before, not after)."""
    e = relay_shards(config)[k]
    relay = msgspec.structs.replace(config.relay, ingest=e.ingest, bus=e.bus, ctl=e.ctl)
    metrics = msgspec.structs.replace(config.metrics, relay=e.metrics)
    return msgspec.structs.replace(config, relay=relay, metrics=metrics)


def shim_instances(config: ShoalConfig) -> list[ShimEndpoints]:
    """Where each MQTT shim instance binds, instance 0 first."""
    mqtt = config.mqtt
    first = ShimEndpoints(ctl=mqtt.shim_ctl, bus=mqtt.shim_bus, metrics=config.metrics.shim)
    return _instances(first, mqtt.shim_endpoints, mqtt.shims)


def shim_name(config: ShoalConfig, k: int) -> str:
    """Instance k's shim id: its MQTT client id and state topic say it."""
    return config.mqtt.shim_id if k == 0 else f"{config.mqtt.shim_id}-{k}"


def shim_instance(config: ShoalConfig, k: int) -> ShoalConfig:
    """config as shim instance k sees it: its endpoints and id in [mqtt] (for its process
    alone; check the config before, as for relay_shard)."""
    e = shim_instances(config)[k]
    mqtt = msgspec.structs.replace(
        config.mqtt, shim_ctl=e.ctl, shim_bus=e.bus, shim_id=shim_name(config, k)
    )
    metrics = msgspec.structs.replace(config.metrics, shim=e.metrics)
    return msgspec.structs.replace(config, mqtt=mqtt, metrics=metrics)


def _check_keys(config: ShoalConfig) -> None:
    for section, values in _sections(config):
        for key, key_check in _checks(type(values)).items():
            value = getattr(values, key)
            why = key_check.error(value)
            if why is not None:
                raise ConfigError(f"key '{section}.{key}': {value!r} {why}")


# Thresholds that only work one way round: (section, lower, upper, strictly below).
ORDERED = (
    ("sim", "backoff_min_ms", "backoff_max_ms", False),
    ("mqtt", "reconnect_min_ms", "reconnect_max_ms", False),
    ("supervisor", "restart_backoff_min_s", "restart_backoff_max_s", False),
    ("liveness", "phi_suspect", "phi_dead", True),  # suspect before dead, never after
    ("liveness", "min_samples", "window", False),  # more would never replace the prior
)


def _check_relations(config: ShoalConfig) -> None:
    for section, low, high, strict in ORDERED:
        values = getattr(config, section)
        a, b = getattr(values, low), getattr(values, high)
        if a > b or (strict and a == b):
            what = "below" if strict else "at most"
            raise ConfigError(
                f"key '{section}.{low}': {a!r} must be {what} {section}.{high} ({b!r})"
            )
    _check_distinct(config)
    _check_exposed(config)
    last = shim_name(config, config.mqtt.shims - 1)
    if len(last) > limits.NODE_ID_MAX_LEN:  # an instance's id is in its topic and client id
        raise ConfigError(
            f"key 'mqtt.shim_id': {config.mqtt.shim_id!r} is too long for {config.mqtt.shims}"
            f" shims: instance ids such as {last!r} must be at most {limits.NODE_ID_MAX_LEN}"
            " characters"
        )


def _check_exposed(config: ShoalConfig) -> None:
    """With Curve off, every ZMQ endpoint must be loopback: anyone on the network could
    otherwise drive the cluster."""
    if config.security.curve:
        return
    for section, values in _sections(config):
        for key, key_check in _checks(type(values)).items():
            value = getattr(values, key)
            if key_check.why is not endpoint_error or not value:
                continue
            if not is_local(value):
                raise ConfigError(
                    f"key '{section}.{key}': {value!r} is not a loopback address, and "
                    "[security] curve is off: turn Curve on, or bind 127.0.0.1"
                )


def _check_distinct(config: ShoalConfig) -> None:
    """Two services cannot bind one endpoint: the second would fail to start."""
    seen: dict[str, str] = {}
    for section, values in _sections(config):
        for key, key_check in _checks(type(values)).items():
            value = getattr(values, key)
            if key_check.optional or key_check.why is mqtt_url_error:
                continue  # where a service connects, not what it binds
            bound = f"tcp://{value}" if key_check.why is listen_error else value
            if bound.endswith(":*") or bound.startswith("inproc://"):
                continue  # any free port; in-process names never clash across services
            if bound in seen:
                raise ConfigError(f"key '{section}.{key}': {value!r} is already {seen[bound]}'s")
            seen[bound] = f"{section}.{key}"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _readable(msg: str, section: str = "") -> str:
    """msgspec says "- at `$.relay.ingest`"; a user thinks in "relay.ingest"."""
    if " - at `$." in msg:
        what, where = msg.rsplit(" - at `$.", 1)
        where = f"{section}.{where.rstrip('`')}" if section else where.rstrip("`")
        return f"key '{where}': {what}"
    if "unknown field" in msg:
        return msg.replace("Object contains unknown field", "unknown key")
    return msg


def spread(ids: list[str], n: int) -> list[str]:
    """n of ids spread evenly, the first one first: where a count of hot spots lands (the
    sim and the fault injector must agree on it)."""
    n = min(n, len(ids))
    return [ids[k * len(ids) // n] for k in range(n)] if n else []


def with_overrides(config: ShoalConfig, section: str, **values: object) -> ShoalConfig:
    """A copy of config with some keys of one section replaced (for CLI flags and tests)."""
    sect = msgspec.structs.replace(getattr(config, section), **values)
    return msgspec.structs.replace(config, **{section: sect})


def relay_for(config: ShoalConfig, consumer: Literal["liveness", "delegator"]) -> RelayConfig:
    """The relay as ``consumer`` reaches it: [relay], with bus and ctl replaced by the
    consumer's ``relay_bus`` / ``relay_ctl`` when they are set (a fault proxy)."""
    section: LivenessConfig | DelegatorConfig = getattr(config, consumer)
    return msgspec.structs.replace(
        config.relay,
        bus=section.relay_bus or config.relay.bus,
        ctl=section.relay_ctl or config.relay.ctl,
    )


def relay_links(
    config: ShoalConfig, consumer: Literal["liveness", "delegator"] | None = None
) -> list[tuple[str, str]]:
    """(bus, ctl) of every relay shard as ``consumer`` reaches them: shard 0 through the
    consumer's fault-proxy overrides (relay_for), the others at their own endpoints."""
    first = relay_for(config, consumer) if consumer else config.relay
    return [(first.bus, first.ctl)] + [(e.bus, e.ctl) for e in relay_shards(config)[1:]]


def liveness_for(config: ShoalConfig) -> LivenessConfig:
    """The liveness monitor as the delegator reaches it: [liveness], with bus and ctl
    replaced by [delegator] ``liveness_bus`` / ``liveness_ctl`` when they are set."""
    d = config.delegator
    return msgspec.structs.replace(
        config.liveness,
        bus=d.liveness_bus or config.liveness.bus,
        ctl=d.liveness_ctl or config.liveness.ctl,
    )


def dump_toml(config: ShoalConfig) -> str:
    return msgspec.toml.encode(config).decode()
