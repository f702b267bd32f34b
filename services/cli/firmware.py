"""`shoal firmware build|flash|deploy`: from a new board to a cluster member.

Every failure is one line, ``error: ...``: exit 1 when the work failed (a bundle over the
heap budget, esptool could not flash, mpremote failed), 2 for a usage error (a bad node id,
an unknown chip), ``EXIT_NO_IMAGE`` when the image is missing or no ESP image,
``EXIT_NO_PORT`` when nothing answers on the port, ``EXIT_WRONG_CHIP`` when the board is
another chip than asked or than the image is for.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from shoal.services.firmware.targets import TARGETS

from .config import CliError, CliUsageError

EXIT_NO_PORT = 3
EXIT_WRONG_CHIP = 4
EXIT_NO_IMAGE = 5
DEFAULT_OUT = "build/firmware"


class NoPortError(CliError):
    exit_code = EXIT_NO_PORT


class WrongChipError(CliError):
    exit_code = EXIT_WRONG_CHIP


class NoImageError(CliError):
    exit_code = EXIT_NO_IMAGE


@click.group()
def firmware() -> None:
    """Build the board's files, flash MicroPython, deploy shoal to a board."""


@firmware.command("build")
@click.option(
    "--out", "out_dir", default=DEFAULT_OUT, show_default=True, help="The bundle's folder."
)
@click.option("--target", default="esp32", type=click.Choice(sorted(TARGETS)), show_default=True)
@click.option(
    "--heap", default=None, help="The board's free heap, e.g. 110K (default: the target's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest.")
def build_cmd(out_dir: str, target: str, heap: str | None, as_json: bool) -> None:
    """firmware/esp32 and the node core as .mpy (main.py, config.py as source) with a
    manifest.json; refused when the heap at boot would not leave room to run."""
    import json

    from shoal.services.firmware.build import BuildError, build, target_named
    from shoal.services.firmware.targets import parse_size

    try:
        heap_bytes = parse_size(heap) if heap is not None else None
    except ValueError as err:
        raise CliUsageError(f"Invalid value for --heap: {err}") from None
    try:
        manifest = build(Path(out_dir), target_named(target), heap_bytes)
    except BuildError as err:
        raise CliError(f"firmware build: {err}") from None
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    h = manifest["heap"]
    click.echo(
        f"built {manifest['firmware']} for {target} (MicroPython {manifest['micropython']}, "
        f"mpy {manifest['mpy_abi']}): {len(manifest['files'])} files, "
        f"{manifest['bundle_bytes']:,} B in {out_dir}"
    )
    click.echo(
        f"heap at boot ~{h['boot_used_bytes']:,} B of {h['budget_bytes']:,} B "
        f"({h['budget_bytes'] - h['boot_used_bytes']:,} B free; {h['method']})"
    )


@firmware.command("flash")
@click.option("--port", default=None, help="The board's serial port (or socket://HOST:PORT).")
@click.option(
    "--chip",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", *sorted(TARGETS)]),
)
@click.option("--image", default=None, help="The MicroPython .bin for the chip.")
@click.option("--erase", is_flag=True, help="Erase the whole flash first (a new board).")
@click.option("--baud", type=click.IntRange(9600, 5_000_000), default=460_800, show_default=True)
def flash_cmd(port: str | None, chip: str, image: str | None, erase: bool, baud: int) -> None:
    """Write a MicroPython image to the board on PORT with esptool: detect the chip, run the
    stub, erase if asked, write at the chip's offset, verify, hard reset."""
    from shoal.services.firmware.flash import FlashError, flash

    if port is None:
        raise NoPortError("no --port: name the board's serial port (e.g. /dev/ttyUSB0)")
    if image is None:
        raise NoImageError(
            "no --image: the MicroPython .bin for the chip (micropython.org/download)"
        )
    errors = {"image": NoImageError, "port": NoPortError, "chip": WrongChipError}
    bar: Any = None
    done = 0

    def progress(cur: int, total: int) -> None:
        nonlocal bar, done
        if bar is None:
            bar = click.progressbar(length=total, label="writing", file=sys.stderr)
            bar.__enter__()
        bar.update(cur - done)
        done = cur

    try:
        result = flash(
            port, Path(image), chip, erase=erase, baud=baud, progress=progress, step=click.echo
        )
    except FlashError as err:
        raise errors.get(err.kind, CliError)(str(err)) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo(
        f"flashed {result.size:,} B at {result.offset:#x} on the {result.chip} {result.mac}: "
        f"verified, reset ({result.seconds:.1f} s)"
    )
