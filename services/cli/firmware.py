"""`shoal firmware build|flash|deploy`: from a new board to a cluster member.

Every failure is one line, ``error: ...``: exit 1 when the work failed (a bundle over the
heap budget, esptool could not flash, mpremote failed), 2 for a usage error (a bad node id,
an unknown chip), ``EXIT_NO_IMAGE`` when the image is missing or no ESP image,
``EXIT_NO_PORT`` when nothing answers on the port, ``EXIT_WRONG_CHIP`` when the board is
another chip than asked or than the image is for.
"""

from __future__ import annotations

from pathlib import Path

import click

from .config import CliError, CliUsageError

EXIT_NO_PORT = 3
EXIT_WRONG_CHIP = 4
EXIT_NO_IMAGE = 5
DEFAULT_OUT = "build/firmware"


class _Coded(CliError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def _target_choice() -> click.Choice:
    from shoal.services.firmware.targets import TARGETS

    return click.Choice(sorted(TARGETS))


@click.group()
def firmware() -> None:
    """Build the board's files, flash MicroPython, deploy shoal to a board."""


@firmware.command("build")
@click.option(
    "--out", "out_dir", default=DEFAULT_OUT, show_default=True, help="The bundle's folder."
)
@click.option("--target", default="esp32", type=_target_choice(), show_default=True)
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
