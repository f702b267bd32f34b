"""Shared pieces of the benchmarks: the JSON-on-stdout / progress-on-stderr output, the
machine and versions a figure is read beside, and the command line every benchmark takes.
The messages they send are made in _frames.py; the publisher and subscriber processes and
the bus listener are in _pubsub.py.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec
import zmq

# --- output ----------------------------------------------------------------------------


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (else what platform knows)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, Any]:
    """The machine, the versions and the date: what a figure must be read beside."""
    import datetime
    import sqlite3
    from importlib import metadata

    try:
        shoal = metadata.version("shoal")
    except metadata.PackageNotFoundError:
        shoal = "unknown"
    return {
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "sqlite": sqlite3.sqlite_version,
        "shoal": shoal,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# Where a benchmark also writes its JSON (``--save DIR``, or this variable): `just bench`
# points it at bench/report/, which bench/make_report.py builds the report from.
SAVE_ENV = "SHOAL_BENCH_SAVE"


def save(name: str, result: dict[str, Any]) -> Path | None:
    """Write result to $SHOAL_BENCH_SAVE/NAME.json, if that is set; the path written."""
    where = os.environ.get(SAVE_ENV)
    if not where:
        return None
    path = Path(where) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)  # a report built meanwhile never reads half a file
    progress(f"saved {path}")
    return path


def emit(result: dict[str, Any], as_json: bool, summary: list[str]) -> None:
    """The JSON object alone on stdout; a human summary on stderr unless as_json. Saved
    as well under $SHOAL_BENCH_SAVE (its ``bench`` field names the file)."""
    save(str(result.get("bench", "bench")), result)
    if not as_json:
        for line in summary:
            print(line, file=sys.stderr)
    print(json.dumps(result, indent=None if as_json else 2, sort_keys=False), flush=True)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds it (finally blocks stop the children)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_parser(doc: str | None, quick_help: str) -> Any:
    """[--quick] [--json] [--save DIR]: what every benchmark's command line has."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument(
        "--save", metavar="DIR", help=f"also write the JSON into DIR (or set ${SAVE_ENV})"
    )
    return parser


def apply_save(directory: str | None) -> None:
    if directory:
        os.environ[SAVE_ENV] = str(Path(directory).resolve())


def run_cli(main: Any, doc: str | None, quick_help: str, **extra: Any) -> None:
    """The command line every benchmark shares: [--quick] [--json] [--save DIR]; SIGTERM
    unwinds it. ``extra``: more options, name -> argparse keywords, passed to main."""
    parser = cli_parser(doc, quick_help)
    for name, kwargs in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)
    args = parser.parse_args()
    apply_save(args.save)
    with sigterm_as_exit():
        main(quick=args.quick, as_json=args.json, **{k: getattr(args, k) for k in extra})


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# Moved to _frames.py and _pubsub.py; still importable from here for the benchmarks that do.
from shoal.bench._frames import NODES, node_id, telemetry_stream  # noqa: E402, F401
from shoal.bench._pubsub import BusListener, PubSpec, SubSpec, pub_sub_run  # noqa: E402, F401
