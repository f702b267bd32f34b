"""The `shoal` group: every command module's commands under one name."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

from .bench import bench
from .boards import boards
from .chaos import chaos
from .config import show_config
from .run import run, sim
from .status import status
from .tasks import tasks
from .up import tui, up


def _version() -> str:
    try:
        return version("shoal")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="shoal")
def main() -> None:
    """shoal: run and prove a fault-tolerant cluster of ESP32-class edge nodes."""


for command in (up, tui, run, sim, boards, status, tasks, bench, show_config, chaos):
    main.add_command(command)
