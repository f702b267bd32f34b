"""`shoal tasks`: the delegator's ledger, tasks by state and the latest ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .config import config_from, config_option, use_keys

if TYPE_CHECKING:
    from shoal.services.runtime.ctl_client import CtlClient

# The largest page the delegator serves (services/delegator/service.py, MAX_PAGE); more
# rows are fetched page by page.
PAGE = 1000
# With a filter, how many of the latest tasks are looked through at most: the delegator
# does not filter, and a big ledger must not make `shoal tasks --node X` take minutes.
SCAN_LIMIT = 50_000
TASK_STATES = ("pending", "assigned", "running", "done", "delivered", "dead_letter")
HEADER = ("task", "state", "owner", "epoch", "redeliveries", "reason")


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--latest",
    "--limit",
    "latest",
    type=click.IntRange(0, 100_000),
    default=20,
    show_default=True,
    help="How many of the latest changed tasks to show (fetched 1,000 at most at a time).",
)
@click.option("--node", default=None, metavar="NODE_ID", help="Only tasks this node owns.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(TASK_STATES),
    help="Only tasks in this state (repeat for more).",
)
def tasks(
    config_path: str | None,
    as_json: bool,
    latest: int,
    node: str | None,
    states: tuple[str, ...],
) -> None:
    """The delegator's ledger: tasks by state, and the latest ones (newest first)."""
    import json

    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    config = config_from(config_path)
    use_keys(config, "reader")
    match = row_filter(node, states)
    try:
        with CtlClient(config.delegator.ctl) as delegator:
            result = fetch(delegator, latest, match)
    except (CtlUnavailable, CtlFailed) as err:
        raise click.ClickException(f"delegator at {config.delegator.ctl}: {err}") from None
    if match is not None:
        result["filter"] = {"node": node, "states": list(states)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(render(result, node, states))


def row_filter(node: str | None, states: tuple[str, ...]) -> Callable[[Any], bool] | None:
    """What --node and --state keep (None: everything)."""
    if node is None and not states:
        return None
    wanted = set(states)

    def match(row: Any) -> bool:
        if node is not None and row.get("owner") != node:
            return False
        return not wanted or row.get("state") in wanted

    return match


def render(result: dict[str, Any], node: str | None, states: tuple[str, ...]) -> str:
    """The counts, what the filter kept, then one row per task under a header."""
    counts = result["counts"]
    lines = ["tasks by state: " + "  ".join(f"{state}={n}" for state, n in counts.items())]
    if "filter" in result:
        what = [f"node {node}"] if node else []
        what += [f"state {' or '.join(states)}"] if states else []
        lines.append(
            f"{len(result['latest'])} with {', '.join(what)} among the latest"
            f" {result['scanned']} changed tasks"
        )
    rows = [HEADER]
    for row in result["latest"]:
        rows.append(
            (
                str(row["task_id"]),
                str(row["state"]),
                str(row.get("owner") or "-"),
                str(row.get("epoch", 0)),
                str(row.get("redeliveries", 0)),
                str(row.get("reason") or ""),
            )
        )
    if len(rows) == 1:
        lines.append("no tasks" + (" match" if "filter" in result else " yet"))
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fetch(
    delegator: CtlClient, n: int, match: Callable[[Any], bool] | None = None
) -> dict[str, Any]:
    """Counts (of the first page) and the n latest tasks ``match`` keeps, over as many
    pages as it takes: a page holds at most PAGE rows, fewer when they are large (its
    ``next`` goes on). With a filter, at most SCAN_LIMIT tasks are looked through."""
    ask = PAGE if match is not None else min(n, PAGE)
    first: dict[str, Any] = delegator.call("tasks", {"latest": ask}, timeout_s=2.0, retries=1)
    page = first
    scanned = len(page["latest"])
    rows: list[Any] = [r for r in page["latest"] if match is None or match(r)][:n]
    while (
        len(rows) < n and page.get("next") is not None and (match is None or scanned < SCAN_LIMIT)
    ):
        want = PAGE if match is not None else min(n - len(rows), PAGE)
        page = delegator.call(
            "tasks", {"latest": want, "before": page["next"]}, timeout_s=2.0, retries=1
        )
        scanned += len(page["latest"])
        rows += [r for r in page["latest"] if match is None or match(r)][: n - len(rows)]
    return {"counts": first["counts"], "latest": rows, "next": page.get("next"), "scanned": scanned}
