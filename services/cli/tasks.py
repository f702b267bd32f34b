"""`shoal tasks`: the delegator's ledger, tasks by state and the latest ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .config import config_from, config_option

if TYPE_CHECKING:
    from shoal.services.runtime.ctl_client import CtlClient

# The largest page the delegator serves (services/delegator/service.py, MAX_PAGE); more
# rows are fetched page by page.
PAGE = 1000


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
def tasks(config_path: str | None, as_json: bool, latest: int) -> None:
    """The delegator's ledger: tasks by state, and the latest ones."""
    import json

    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    config = config_from(config_path)
    try:
        with CtlClient(config.delegator.ctl) as delegator:
            result = _latest(delegator, latest)
    except (CtlUnavailable, CtlFailed) as err:
        raise click.ClickException(f"delegator at {config.delegator.ctl}: {err}") from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    counts = result["counts"]
    click.echo("  ".join(f"{state}={n}" for state, n in counts.items()))
    for row in result["latest"]:
        click.echo(
            f"{row['task_id']:<28} {row['state']:<12} {row.get('owner') or '-':<10}"
            f" epoch={row.get('epoch', 0)} redeliveries={row.get('redeliveries', 0)}"
            f" {row.get('reason') or ''}"
        )


def _latest(delegator: CtlClient, n: int) -> dict[str, Any]:
    """Counts (of the first page) and the n latest tasks, over as many pages as it takes: a
    page holds at most PAGE rows, fewer when they are large (its ``next`` goes on)."""
    first: dict[str, Any] = delegator.call(
        "tasks", {"latest": min(n, PAGE)}, timeout_s=2.0, retries=1
    )
    rows: list[Any] = list(first["latest"])
    page = first
    while len(rows) < n and page.get("next") is not None:
        args = {"latest": min(n - len(rows), PAGE), "before": page["next"]}
        page = delegator.call("tasks", args, timeout_s=2.0, retries=1)
        rows += page["latest"]
    return {"counts": first["counts"], "latest": rows, "next": page.get("next")}
