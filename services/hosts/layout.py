"""Which host runs what, and the config file each host reads.

The layout (docs/deploy.md, "The test cluster"):

| host | address | runs |
|---|---|---|
| ``bus`` | 169.254.77.10 | relay, liveness monitor, delegator (under its own ``shoal up``) |
| ``fleet-a``, ``fleet-b``, ... | .21, .22, ... | a simulated fleet each: part of the fleet's ids (``[sim] only``) |
| ``ops`` | .2 | nothing of the cluster: the operator's machine (the fault injector, ``shoal status``) |

A link fault is a fault between hosts, so the nodes a link fault targets must have hosts of
their own: the fleet is split by which link faults target each node (``fleet_split``), and
when nothing splits it, in two halves, so a cluster of hosts has at least two fleets.

Each host's file is what a real host of that role gets: the same endpoints everywhere, each
naming the host that binds it (the relay's ``tcp://169.254.77.10:7700`` is where the relay
binds and where a fleet connects), the default ports, plus the host's own supervisor and
fleet. The files are made in one place (``host_config``), so keys the hosts need later
(CurveZMQ's, from ``shoal keys``) go into them there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from shoal.services.runtime.config import ShoalConfig, dump_toml, load_config, validated
from shoal.services.runtime.endpoints import split_host_port

from .netns import Net

BUS, OPS = "bus", "ops"
BUS_SERVICES = ("relay", "liveness", "delegator")
ADDRESSES = {OPS: 2, BUS: 10}
FIRST_FLEET = 21
LAYOUT_FILE = "layout.json"


@dataclass
class Host:
    name: str
    octet: int  # its address is SUBNET.octet
    runs: list[str]  # what its ``shoal up --only`` starts
    nodes: list[str] = field(default_factory=list)  # a fleet host's node ids


@dataclass
class Layout:
    """A cluster of hosts: what each runs, where its files are. Saved as JSON beside the
    hosts' config files (``save``, ``load``), for the process that drives the run."""

    run_id: str
    workdir: str
    hosts: list[Host]
    way: str | None = None  # how the kernel makes link faults here (linkfaults.probe)

    def net(self) -> Net:
        return Net({h.name: h.octet for h in self.hosts}, run_id=self.run_id)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def fleets(self) -> list[Host]:
        return [h for h in self.hosts if "sim" in h.runs]

    def host_of(self, what: str) -> str:
        """The host a node id or a service runs on."""
        for h in self.hosts:
            if what in h.nodes or what in h.runs:
                return h.name
        raise KeyError(what)

    def config_path(self, host: str) -> Path:
        return Path(self.workdir) / "hosts" / f"{host}.toml"

    def config(self, host: str) -> ShoalConfig:
        return load_config(self.config_path(host), env={})

    def save(self) -> Path:
        path = Path(self.workdir) / LAYOUT_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Layout:
        raw = json.loads(Path(path).read_text())
        raw["hosts"] = [Host(**h) for h in raw["hosts"]]
        return cls(**raw)


def fleet_split(nodes: list[str], groups: list[list[str]]) -> list[list[str]]:
    """The fleet's nodes in parts, one per fleet host: nodes in the same groups (the targets
    of the same link faults) together, those in none first; one part only: two halves."""
    parts: dict[tuple[int, ...], list[str]] = {}
    for node in nodes:
        key = tuple(i for i, group in enumerate(groups) if node in group)
        parts.setdefault(key, []).append(node)
    split = [parts[k] for k in sorted(parts, key=lambda k: (len(k) > 0, k))]
    if len(split) == 1 and len(split[0]) > 1:
        half = len(split[0]) // 2
        split = [split[0][:half], split[0][half:]]
    return split


def plan_layout(
    workdir: str | Path,
    nodes: list[str],
    groups: list[list[str]],
    without: tuple[str, ...] = (),
    run_id: str | None = None,
) -> Layout:
    """The hosts of a cluster whose fleet is ``nodes``, split by ``groups`` (``without``:
    services the bus host leaves out, for a deliberately broken cluster)."""
    net = Net({}, run_id=run_id)
    bus = [name for name in BUS_SERVICES if name not in without]
    hosts = [Host(BUS, ADDRESSES[BUS], bus), Host(OPS, ADDRESSES[OPS], [])]
    for i, part in enumerate(fleet_split(nodes, groups)):
        hosts.append(Host(f"fleet-{chr(ord('a') + i)}", FIRST_FLEET + i, ["sim"], part))
    return Layout(run_id=net.run_id, workdir=str(workdir), hosts=hosts)


def _at(endpoint: str, address: str) -> str:
    """``endpoint`` (tcp://HOST:PORT) moved to ``address``, its port kept."""
    _, port = split_host_port(endpoint.removeprefix("tcp://"), 0)
    return f"tcp://{address}:{port}"


def host_config(
    layout: Layout, host: str, sim: dict[str, Any], base: ShoalConfig | None = None
) -> ShoalConfig:
    """The config file of one host: the services' endpoints at the hosts that run them, this
    host's supervisor at its own address, a fleet host's part of the fleet (``sim`` keys: the
    workload, the same on every fleet host)."""
    base = base or load_config(env={})
    net = layout.net()
    bus = net.address(BUS)
    me = layout.host(host)
    fleets = layout.fleets()
    fleet = me if "sim" in me.runs else fleets[0]  # the ops host speaks to the first fleet
    sections: dict[str, dict[str, Any]] = {
        "relay": {k: _at(getattr(base.relay, k), bus) for k in ("ingest", "bus", "ctl")},
        "liveness": {k: _at(getattr(base.liveness, k), bus) for k in ("bus", "ctl")},
        "delegator": {
            **{k: _at(getattr(base.delegator, k), bus) for k in ("tasks", "bus", "ctl")},
            "ledger": str(Path(layout.workdir) / "bus-ledger.db"),
        },
        "supervisor": {"ctl": _at(base.supervisor.ctl, net.address(host if me.runs else BUS))},
        "sim": {
            **sim,
            "ctl": _at(base.sim.ctl, net.address(fleet.name)),
            "nodes": sum(len(f.nodes) for f in fleets),
            "only": list(fleet.nodes),
        },
        "devices": {"registry": str(Path(layout.workdir) / f"{host}-devices.db")},
        # One keys directory for every host (written once by write_configs): a real
        # deployment copies each host its own secret and the server key (docs/deploy.md).
        "security": {"keys": str(keys_dir(layout))},
    }
    config = base
    for name, values in sections.items():
        config = msgspec.structs.replace(
            config, **{name: msgspec.structs.replace(getattr(config, name), **values)}
        )
    return validated(config)


def keys_dir(layout: Layout) -> Path:
    return Path(layout.workdir) / "keys"


def write_configs(layout: Layout, sim: dict[str, Any], base: ShoalConfig | None = None) -> None:
    """Every host's config file, the CurveZMQ keys they share, and the layout beside them."""
    from shoal.services.runtime.keys import KeysDir

    folder = Path(layout.workdir) / "hosts"
    folder.mkdir(parents=True, exist_ok=True)
    KeysDir(keys_dir(layout)).init(str(sim.get("id_prefix", "sim")))
    for h in layout.hosts:
        layout.config_path(h.name).write_text(dump_toml(host_config(layout, h.name, sim, base)))
    layout.save()
