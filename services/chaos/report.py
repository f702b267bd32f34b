"""Reports: the JSON a run writes, and the Markdown summary made from it.

The JSON holds everything a verdict stands on (scenario text and sha256, seed, resolved
targets, each fault's planned and actual times, probes, expectations with observed value
and limit, key metrics, the recorded history), so ``shoal chaos report`` can render it
later and ``--replay`` can run the same plan again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERDICT_MARK = {
    "passed": "PASSED",
    "failed": "FAILED",
    "aborted": "ABORTED",
    "undecided": "UNDECIDED",
}


class ReportError(ValueError):
    """Not a shoal chaos report."""


def write(report: dict[str, Any], path: Path) -> Path:
    """Write the JSON report and its Markdown summary next to it; returns the .md path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(report))
    return md


def read(path: str | Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read a report: {err}") from None
    if not isinstance(report, dict) or "shoal_chaos_report" not in report:
        raise ReportError(f"{path}: not a shoal chaos report")
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown(r: dict[str, Any]) -> str:
    s = r["scenario"]
    lines = [
        f"# {s['name']}: {VERDICT_MARK.get(r['verdict'], r['verdict'])} (exit {r['exit_code']})",
        "",
        s.get("description") or "",
        "",
        f"- reason: {r.get('reason') or '-'}",
        f"- seed {r['seed']}, time scale {r.get('time_scale', 1.0):g}, "
        f"{'attached to a running cluster' if r.get('attached') else 'own cluster'}"
        + (f" on {r['hosts']}" if r.get("hosts") else "")
        + (f" without {', '.join(r['without'])}" if r.get("without") else ""),
        f"- started {r['started_at']}, took {r['duration_s']:.1f} s",
        f"- scenario {s['path']} (sha256 {s['sha256'][:16]}...)",
        f"- fleet: {len(r['fleet']['nodes'])} nodes"
        + (f", hot spots {', '.join(r['fleet']['hot'])}" if r["fleet"].get("hot") else ""),
        "",
        "## Faults",
        "",
        "| fault | kind | targets | planned at | applied at | planned heal | healed at | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in r["faults"]:
        lines.append(
            f"| {f['id']} | {f['kind']} | {', '.join(f['targets'])} | {_fmt(f['planned_at'])} "
            f"| {_fmt(f['applied_at'])} | {_fmt(f['planned_heal'])} | {_fmt(f['healed_at'])} "
            f"| {f.get('error') or _via(f)} |"
        )
    if not r["faults"]:
        lines.append("| (none applied) | | | | | | | |")
    lines += [
        "",
        "Times are seconds since the run started.",
        "",
        "## Steady state",
        "",
        "| probe | phase | tolerance | checks | failures | worst | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in r["steady_state"]:
        result = (
            "ok"
            if p["passed"]
            else ("not measured" if not p["decided"] else f"FAILED by {_fmt(p['by'])}")
        )
        lines.append(
            f"| {p['name']} | {p['phase']} | {p['tolerance']} | {p['checks']} | {p['failures']} "
            f"| {_fmt(p['worst'])} | {result} |"
        )
    lines += [
        "",
        "## Expectations",
        "",
        "| expectation | kind | limit | observed | result |",
        "|---|---|---|---|---|",
    ]
    for e in r["expectations"]:
        if e["passed"]:
            result = "ok"
        else:
            by = e.get("by")
            more = "more than " if e.get("by_at_least") else ""
            result = "FAILED" + (f" by {more}{_fmt(by)}" if by else "")
            if e.get("missed"):
                result += f", {e['missed']} never seen"
        detail = f" ({e['detail']})" if e.get("detail") else ""
        lines.append(
            f"| {e['name']} | {e['kind']} | {e['limit']} | {_fmt(e['observed'])} | {result}{detail} |"
        )
    if not r["expectations"]:
        lines.append("| (not judged: no fault ran) | | | | |")
    lines += ["", "## Key metrics", "", "| metric | value |", "|---|---|"]
    for key, value in r["metrics"].items():
        lines.append(f"| {key} | {_fmt(value)} |")
    if r.get("cluster_log"):
        lines += ["", f"Cluster log: {r['cluster_log']}"]
    return "\n".join(lines) + "\n"


def _via(fault: dict[str, Any]) -> str:
    """What made a fault on a cluster of hosts, and what the kernel dropped under it."""
    via = fault.get("via") or ""
    if fault.get("kernel_dropped") is not None:
        via += f" ({fault['kernel_dropped']} packets dropped)"
    return via
