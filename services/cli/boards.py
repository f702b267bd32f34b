"""`shoal boards`: emulated boards (the real firmware in MicroPython) against a broker."""

from __future__ import annotations

import click

from shoal.services.runtime.config import with_overrides

from .config import checked, config_from, config_option
from .up import external_broker


@click.command()
@config_option
@click.option(
    "--count", type=click.IntRange(0, 256), default=None, help="How many boards (default 2)."
)
@click.option(
    "--broker",
    "broker_url",
    metavar="mqtt://HOST:PORT",
    default=None,
    help="The MQTT broker the boards connect to (default: [mqtt] broker).",
)
@click.option(
    "--prefix",
    default=None,
    help="Board ids are PREFIX-01, PREFIX-02, ... (default board).",
)
@click.option(
    "--heap", default=None, help="MicroPython heap per board, e.g. 110K (an ESP32 without PSRAM)."
)
def boards(
    config_path: str | None,
    count: int | None,
    broker_url: str | None,
    prefix: str | None,
    heap: str | None,
) -> None:
    """Start COUNT boards: each a MicroPython unix-port process running firmware/esp32
    unchanged, its heap bounded, its radio a TCP relay that faults can cut. Control them
    on [boards] ctl (ops boards, power_off, power_on, radio, reset, crash); Ctrl-C stops
    them all."""
    from shoal.services.boards.layout import NoMicroPython, micropython
    from shoal.services.boards.service import BoardEmulator
    from shoal.services.runtime.service import main_for

    config = config_from(config_path)
    if broker_url is not None:
        config = external_broker(config, broker_url)
    changes: dict[str, object] = {}
    if count is not None:
        changes["count"] = count
    if heap is not None:
        changes["heap"] = heap
    if prefix is not None:
        changes["id_prefix"] = prefix
    config = with_overrides(config, "boards", **changes)
    config = checked(config)  # the flags checked as the file's keys are (id pattern, heap)
    try:
        micropython()
    except NoMicroPython as err:
        raise click.ClickException(str(err)) from None
    main_for(BoardEmulator, config)
