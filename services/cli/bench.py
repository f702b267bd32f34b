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
}


def _bench_command(name: str, module: str, doc: str) -> None:
    @bench.command(name, help=doc)
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
    @click.option("--quick", is_flag=True, help="Smaller counts; finishes within 60 s.")
    def command(as_json: bool, quick: bool) -> None:
        import importlib

        importlib.import_module(f"shoal.bench.{module}").main(quick=quick, as_json=as_json)


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)
