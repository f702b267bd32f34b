"""`shoal run SERVICE` (one service in this process, as the supervisor starts it) and `shoal sim`."""

from __future__ import annotations

from typing import Any

import click

from shoal.services.runtime.config import relay_shard, shim_instance, with_overrides

from .config import checked, config_from, config_option
from .workload import apply_workload, workload_options

SERVICES = ("relay", "liveness", "delegator", "registry", "sim", "broker", "shim", "ota", "boards")


@click.command()
@click.argument("service", type=click.Choice(SERVICES))
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="For sim: how many nodes."
)
@click.option(
    "--shard",
    type=click.IntRange(0, 15),
    default=0,
    show_default=True,
    help="For relay: which of [relay] shards this process is.",
)
@click.option(
    "--instance",
    type=click.IntRange(0, 15),
    default=0,
    show_default=True,
    help="For shim: which of [mqtt] shims this process is.",
)
@workload_options
def run(
    service: str,
    config_path: str | None,
    nodes: int | None,
    shard: int,
    instance: int,
    **workload: Any,
) -> None:
    """Run one service in this process (what the supervisor starts). The workload flags are
    for sim."""
    from shoal.services.runtime.service import main_for

    config = config_from(config_path)
    if service == "relay":
        if shard >= config.relay.shards:
            raise click.BadParameter(
                f"{shard}: [relay] shards is {config.relay.shards}", param_hint="--shard"
            )
        # Checked as the file says; the shard's view of it moves its endpoints into [relay].
        main_for(service_class(service), relay_shard(checked(config), shard), shard=shard)
        return
    if service == "shim":
        if instance >= config.mqtt.shims:
            raise click.BadParameter(
                f"{instance}: [mqtt] shims is {config.mqtt.shims}", param_hint="--instance"
            )
        config = shim_instance(checked(config), instance)
        main_for(service_class(service), config, instance=instance)
        return
    if nodes is not None:
        config = with_overrides(config, "sim", nodes=nodes)
    if service == "sim":
        config = apply_workload(config, workload)
    config = checked(config)
    if service == "broker":  # amqtt on asyncio, not a Service: its own main
        from shoal.services.broker.process import main as broker_main

        broker_main(config)
        return
    main_for(service_class(service), config)


@click.command()
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="How many nodes (default 8)."
)
@click.option("--seed", type=int, default=None, help="Seed of the load model.")
@workload_options
def sim(config_path: str | None, nodes: int | None, seed: int | None, **workload: Any) -> None:
    """Run a fleet of simulated nodes against the relay (and the delegator).

    Workload: every node gets --rate tasks a second, a hot spot --hot-factor times its
    capacity, a node named by --node-rate its own rate; each --burst multiplies the rates
    of every node by FACTOR for DURATION seconds every EVERY seconds (from START).
    Example: --hot-spots 3 --hot-factor 3 --burst 30:5:2.
    """
    from shoal.services.runtime.service import main_for
    from shoal.services.sim.fleet import Fleet

    config = config_from(config_path)
    overrides: dict[str, Any] = {}
    if nodes is not None:
        overrides["nodes"] = nodes
    if seed is not None:
        overrides["seed"] = seed
    config = apply_workload(with_overrides(config, "sim", **overrides), workload)
    main_for(Fleet, checked(config))


def service_class(name: str) -> Any:
    if name == "relay":
        from shoal.services.relay.service import Relay

        return Relay
    if name == "liveness":
        from shoal.services.liveness.service import Liveness

        return Liveness
    if name == "delegator":
        from shoal.services.delegator.service import Delegator

        return Delegator
    if name == "registry":
        from shoal.services.registry.service import RegistryService

        return RegistryService
    if name == "shim":
        from shoal.services.mqtt_shim.service import Shim

        return Shim
    if name == "ota":
        from shoal.services.ota.service import OtaService

        return OtaService
    if name == "boards":
        from shoal.services.boards.service import BoardEmulator

        return BoardEmulator
    from shoal.services.sim.fleet import Fleet

    return Fleet
