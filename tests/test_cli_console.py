"""The operator's CLI (issue 14, part 8): `shoal tasks` filters and header, `shoal status
--watch` timestamps, `just` recipes that stop cleanly on Ctrl-C, and report wording."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shoal.protocol.messages import RelaySnapshot
from shoal.services.chaos.checks import plural
from shoal.services.chaos.load import expect_name, parse
from shoal.services.cli import status as status_module
from shoal.services.cli.main import main
from shoal.services.cli.tasks import HEADER, fetch, render, row_filter
from shoal.services.runtime import ctl_client
from shoal.services.testing import session_keys

ROOT = Path(__file__).resolve().parent.parent


def _row(i: int, state: str, owner: str | None) -> dict[str, Any]:
    return {"task_id": f"t-{i:04d}", "state": state, "owner": owner, "epoch": 1}


class FakeDelegator:
    """Serves `tasks` pages of ``page`` rows over ``rows`` (newest first)."""

    def __init__(self, rows: list[dict[str, Any]], page: int = 3) -> None:
        self.rows, self.page, self.calls = rows, page, 0

    def __enter__(self) -> FakeDelegator:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def call(self, op: str, args: dict[str, Any], **_: Any) -> dict[str, Any]:
        assert op == "tasks"
        self.calls += 1
        start = args.get("before", [0.0, 0])[1]
        n = min(args["latest"], self.page)
        rows = self.rows[start : start + n]
        more = start + n < len(self.rows)
        counts = {"pending": 0, "assigned": 0, "running": 0, "done": 0, "delivered": 0,
                  "dead_letter": 0}  # fmt: skip
        for r in self.rows:
            counts[r["state"]] += 1
        return {"counts": counts, "latest": rows, "next": [1.0, start + n] if more else None}


ROWS = [_row(i, "running" if i % 2 else "done", f"sim-00{i % 3}") for i in range(10)]


def test_tasks_without_a_filter_pages_to_the_count_asked() -> None:
    out = fetch(FakeDelegator(ROWS), 5)  # type: ignore[arg-type]
    assert [r["task_id"] for r in out["latest"]] == [f"t-{i:04d}" for i in range(5)]
    assert out["next"] is not None


def test_tasks_filter_by_node_and_state_looks_through_every_page() -> None:
    match = row_filter("sim-001", ("running",))
    out = fetch(FakeDelegator(ROWS), 20, match)  # type: ignore[arg-type]
    assert [r["task_id"] for r in out["latest"]] == ["t-0001", "t-0007"]
    assert out["scanned"] == 10 and out["next"] is None


def test_tasks_table_has_a_header_and_says_what_the_filter_kept() -> None:
    out = fetch(FakeDelegator(ROWS), 20, row_filter(None, ("done",)))  # type: ignore[arg-type]
    out["filter"] = {}
    lines = render(out, None, ("done",)).splitlines()
    assert lines[0].startswith("tasks by state: pending=0")
    assert lines[1] == "5 with state done among the latest 10 changed tasks"
    assert lines[2].split() == list(HEADER)
    assert len(lines) == 3 + 5
    empty = render({"counts": {}, "latest": [], "scanned": 0, "filter": {}}, "x", ())
    assert empty.splitlines()[-1] == "no tasks match"


@pytest.fixture
def keys_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands load their keys before they ask anything: the tests' keys."""
    path = tmp_path / "shoal.toml"
    path.write_text(f'[security]\nkeys = "{session_keys()}"\n')
    monkeypatch.setenv("SHOAL_CONFIG", str(path))


def test_shoal_tasks_node_and_state_options(
    monkeypatch: pytest.MonkeyPatch, keys_config: None
) -> None:
    monkeypatch.setattr(ctl_client, "CtlClient", lambda *_a, **_k: FakeDelegator(ROWS))
    run = CliRunner().invoke(main, ["tasks", "--json", "--node", "sim-002", "--state", "done"])
    assert run.exit_code == 0, run.output
    shown = json.loads(run.output)
    assert {r["owner"] for r in shown["latest"]} == {"sim-002"}
    assert {r["state"] for r in shown["latest"]} == {"done"}
    assert shown["filter"] == {"node": "sim-002", "states": ["done"]}
    bad = CliRunner().invoke(main, ["tasks", "--state", "lost"])
    assert bad.exit_code == 2 and "lost" in bad.output


class FakeRelay:
    def __enter__(self) -> FakeRelay:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def close(self) -> None:
        pass

    def call(self, op: str, *_: Any, **__: Any) -> Any:
        if op == "snapshot":
            return RelaySnapshot(pub=1, pseq=1, nodes=[], counters={}, rejects={})
        raise ctl_client.CtlUnavailable("no liveness here")


def test_status_watch_stamps_each_refresh_and_ctrl_c_exits_0(
    monkeypatch: pytest.MonkeyPatch, keys_config: None
) -> None:
    monkeypatch.setattr(ctl_client, "CtlClient", lambda *_a, **_k: FakeRelay())
    monkeypatch.setattr(status_module, "_failed_line", lambda _ctl: "")
    monkeypatch.setattr(status_module, "other_counters", lambda *_a: {})
    sleeps = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    run = CliRunner().invoke(main, ["status", "--watch", "0.5"])
    assert run.exit_code == 0, run.output
    stamps = [line for line in run.output.splitlines() if line.startswith("shoal status at ")]
    assert len(stamps) == 2 and stamps[0].endswith("(every 0.5 s; Ctrl-C stops)")
    header = status_module.watch_header(0.0, 2.0, as_json=True)
    assert json.loads(header) == {"at": 0.0, "every_s": 2.0}


def test_long_running_recipes_stop_cleanly_on_ctrl_c() -> None:
    """Without [continue], `just` prints "error: interrupted by SIGINT" and exits 130 after
    a Ctrl-C that shoal handled cleanly (exit 0)."""
    dump = subprocess.run(
        [str(ROOT / ".venv/bin/just"), "--dump", "--dump-format", "json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    recipes = json.loads(dump.stdout)["recipes"]
    for name in ("up", "tui", "status", "chaos"):
        assert {"continue": []} in recipes[name]["attributes"], name


def test_unnamed_expectations_and_counts_read_as_words() -> None:
    assert expect_name("lost_tasks", 1) == "lost tasks"
    assert expect_name("lost_tasks", 2) == "lost tasks 2"
    assert plural(1, "faulted node") == "1 faulted node"
    assert plural(3, "faulted node") == "3 faulted nodes"
    text = """
name = "x"
deadline = "2m"
[workload]
duration = "30s"
nodes = 2
[[fault]]
kind = "crash"
at = "5s"
duration = "10s"
target = "one"
[[expect]]
kind = "lost_tasks"
at_most = 0
[[expect]]
kind = "lost_tasks"
at_most = 1
"""
    names = [e.name for e in parse(text).scenario.expect]
    assert names == ["lost tasks", "lost tasks 2"]
