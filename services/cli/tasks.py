"""`shoal tasks`: the delegator's ledger, tasks by state and the latest ones."""

from __future__ import annotations

from typing import Any

import click

from .config import config_from, config_option


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--latest", type=click.IntRange(0, 1000), default=20, show_default=True)
def tasks(config_path: str | None, as_json: bool, latest: int) -> None:
    """The delegator's ledger: tasks by state, and the latest ones."""
    import json

    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    config = config_from(config_path)
    try:
        with CtlClient(config.delegator.ctl) as delegator:
            result: dict[str, Any] = delegator.call(
                "tasks", {"latest": latest}, timeout_s=2.0, retries=1
            )
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
