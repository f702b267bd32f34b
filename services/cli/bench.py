"""`shoal bench NAME`: the benchmarks in bench/, each printing JSON with its baseline."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks (each prints JSON with a baseline measured in the same run)."""


# shoal bench NAME: each runs bench/MODULE.py's main (the same as `python bench/MODULE.py`).
BENCHMARKS = {
    "relay": (
        "relay_throughput",
        "Relay throughput against raw pyzmq, loss, and relay RSS at 1,000 nodes.",
    ),
    "liveness": (
        "liveness",
        "Detection latency, false verdicts under loss, relay restarts, monitor cost.",
    ),
    "tui": ("tui", "The console's CPU with 1,000 live nodes, against its feed alone."),
    "delegation": (
        "delegation",
        "Hot-spot efficiency against delegation off, hand-off latency, chaos, flapping.",
    ),
    "mqtt": (
        "mqtt_path",
        "The device path: throughput against the broker alone, 1,000 clients, detection.",
    ),
    "cost": ("cost", "CPU % and RSS of every service against fleet size."),
    "scale": (
        "scale",
        "1,000 nodes at 4 Hz and 10,000 at 1 Hz: CPU, RSS, status, re-sync, first bottleneck.",
    ),
    "shards": ("shards", "Relay records/s through 2 shards against 1 (same run)."),
}


def _bench_command(name: str, module: str, doc: str) -> None:
    @bench.command(name, help=doc)
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
    @click.option("--quick", is_flag=True, help="Smaller counts; finishes within 60 s.")
    @click.option("--save", metavar="DIR", help="Also write the JSON into DIR.")
    def command(as_json: bool, quick: bool, save: str | None) -> None:
        import importlib

        from shoal.bench._util import apply_save

        apply_save(save)
        importlib.import_module(f"shoal.bench.{module}").main(quick=quick, as_json=as_json)


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)


@bench.command("report")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def report(directory: str | None) -> None:
    """Rebuild the report (PNG plots, report.md) from the JSON saved in DIRECTORY
    (default bench/report/), running no benchmark."""
    from pathlib import Path

    from shoal.bench import make_report as builder

    try:
        path = builder.build(Path(directory) if directory else builder.DEFAULT_DIR)
    except ImportError as err:
        raise click.ClickException(f"{err}: the report needs matplotlib (the dev extra)") from None
    click.echo(str(path))
