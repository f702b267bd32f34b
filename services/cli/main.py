"""The `shoal` group: every command module's commands under one name."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from .bench import bench
from .boards import boards
from .chaos import chaos
from .config import CliError, CliUsageError, show_config
from .devices import devices
from .firmware import firmware
from .keys import keys
from .run import run, sim
from .status import status
from .tasks import tasks
from .up import tui, up


def _version() -> str:
    try:
        return version("shoal")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class ShoalGroup(click.Group):
    """Every error of a command is one line, ``error: ...``, with click's exit code (2 for
    a usage error): never a usage block, never a traceback for what the user can fix."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as err:
            raise _one_line(err, ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            raise _one_line(err, ctx) from None


def _one_line(err: click.ClickException, ctx: click.Context) -> click.ClickException:
    if isinstance(err, CliError | click.exceptions.NoArgsIsHelpError):
        return err  # one line already; or the help a bare group prints
    if isinstance(err, click.UsageError):
        where = err.ctx.command_path if err.ctx else ctx.command_path
        return CliUsageError(f"{err.format_message()} (see '{where} -h')")
    return CliError(err.format_message())


@click.group(cls=ShoalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="shoal")
def main() -> None:
    """shoal: run and prove a fault-tolerant cluster of ESP32-class edge nodes."""


for command in (
    up,
    tui,
    run,
    sim,
    boards,
    status,
    tasks,
    bench,
    show_config,
    chaos,
    firmware,
    devices,
    keys,
):
    main.add_command(command)
