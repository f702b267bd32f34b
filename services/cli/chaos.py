"""``shoal chaos``: validate, run and report fault-injection scenarios.

Exit codes: 0 passed, 1 an expectation or steady-state check failed, 2 aborted (safety,
kill switch, Ctrl-C), 3 undecided, 4 invalid scenario.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from shoal.services.chaos.library import library
from shoal.services.chaos.load import ScenarioError, hot_ids, load, node_ids, parse
from shoal.services.chaos.scenario import attach_errors, hosts_errors

INVALID = 4
EXIT_UNDECIDED = 3


def _invalid(err: Exception) -> None:
    click.echo(str(err), err=True)
    sys.exit(INVALID)


@click.group()
def chaos() -> None:
    """Fault-injection scenarios: a scenario file in, a verdict with numbers out."""


@chaos.command("list")
def list_cmd() -> None:
    """The scenario library: each name (what `shoal chaos run NAME` takes) and its file."""
    for path in library():
        click.echo(f"{path.stem:<22} {path}")


@chaos.command()
@click.argument("files", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.option("--library", "whole_library", is_flag=True, help="Every shipped scenario.")
def validate(files: tuple[str, ...], whole_library: bool) -> None:
    """Check scenario FILES (paths or library names); exit 4 naming the file, entry and
    field of each error."""
    if whole_library:
        files = (*files, *map(str, library()))
    if not files:
        raise click.UsageError("give scenario FILES or --library")
    bad = 0
    for path in files:
        try:
            loaded = load(path)
        except ScenarioError as err:
            click.echo(str(err), err=True)
            bad += 1
            continue
        s = loaded.scenario
        click.echo(f"{path}: ok ({s.name}: {len(s.fault)} faults, {len(s.expect)} expectations)")
    if bad:
        sys.exit(INVALID)


@chaos.command()
@click.argument("file", required=False)
@click.option("--seed", type=int, default=None, help="Overrides the scenario's seed.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where the JSON report goes (a .md summary is written next to it). "
    "Default: chaos-reports/NAME-seedN.json",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved plan; start nothing.")
@click.option(
    "--attach", is_flag=True, help="Use the running cluster (--config) instead of starting one."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --attach: the running cluster's config file.",
)
@click.option(
    "--replay",
    "replay",
    type=click.Path(dir_okay=False),
    default=None,
    help="Run a recorded report's scenario again, with its seed and time scale.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(0.01, 10),
    default=None,
    help="Scale the fault timeline (the test suite runs the library at 0.2-0.3).",
)
@click.option(
    "--without",
    multiple=True,
    type=click.Choice(["liveness", "delegator"]),
    help="Start our cluster without this service (a deliberately broken cluster).",
)
@click.option(
    "--hosts",
    is_flag=True,
    help="Start our cluster on hosts: Linux network namespaces joined by veths (needs "
    "root), one for the services, one per part of the fleet; link faults by the kernel.",
)
@click.option("--quiet", is_flag=True, help="No progress line.")
def run(
    file: str | None,
    seed: int | None,
    report_path: str | None,
    dry_run: bool,
    attach: bool,
    config_path: str | None,
    replay: str | None,
    time_scale: float | None,
    without: tuple[str, ...],
    hosts: bool,
    quiet: bool,
) -> None:
    """Run scenario FILE and write its report; the exit code is the verdict."""
    from shoal.services.chaos import report as reports
    from shoal.services.chaos.plan import PlanError, make_plan
    from shoal.services.chaos.runner import Options
    from shoal.services.chaos.runner import run as run_scenario

    recorded: dict[str, Any] | None = None
    try:
        if replay is not None:
            recorded = reports.read(replay)
            scale = time_scale if time_scale is not None else float(recorded.get("time_scale", 1.0))
            loaded = parse(
                recorded["scenario"]["text"], recorded["scenario"]["path"], time_scale=scale
            )
            seed = recorded["seed"] if seed is None else seed
            time_scale = scale
        elif file is None:
            raise click.UsageError("give a scenario FILE or --replay REPORT")
        else:
            loaded = load(file, time_scale=time_scale or 1.0)
    except (ScenarioError, reports.ReportError) as err:
        _invalid(err)
    except (KeyError, TypeError, ValueError):  # a report with its scenario or seed cut out
        _invalid(reports.ReportError(f"{replay}: not a complete shoal chaos report"))
    s = loaded.scenario
    seed = s.seed if seed is None else seed
    attached = None
    if hosts and attach:
        raise click.UsageError("--hosts starts its own cluster: not with --attach")
    if hosts and (errors := hosts_errors(s)):
        _invalid(ScenarioError(loaded.path, errors))
    if attach:
        from .config import config_from, use_keys

        attached = config_from(config_path)
        use_keys(attached, "scenarios")  # the injector acts as an operator, with its own key
        if errors := attach_errors(s):
            _invalid(ScenarioError(loaded.path, errors))
    if dry_run:
        nodes, hot = node_ids(s.workload), hot_ids(s.workload)
        if attached is not None:
            from shoal.services.chaos.runner import ctl_call

            fleet = ctl_call(attached.sim.ctl, "nodes", timeout_s=3.0)
            if not isinstance(fleet, dict):
                raise click.ClickException(f"no simulated fleet answers at {attached.sim.ctl}")
            nodes = sorted(fleet)
            hot = hot_ids(s.workload, nodes)
        try:
            plan = make_plan(s, seed, nodes, hot)
        except PlanError as err:
            _invalid(ScenarioError(loaded.path, [str(err)]))
        click.echo(json.dumps(msgspec.to_builtins(plan), indent=1))
        return
    default = f"chaos-reports/{s.name}-seed{seed}.json"
    if replay is not None:  # never over the report being replayed
        default = str(Path(replay).with_suffix("")) + "-replay.json"
    out = Path(report_path or default)
    progress = None if quiet else _progress_line()
    options = Options(
        seed=seed,
        time_scale=time_scale or 1.0,
        attach=attached,
        without=without,
        keep_logs=None if attached else out.with_suffix(".cluster.log"),
        progress=progress,
    )
    try:
        result = _run_on_hosts(loaded, options) if hosts else run_scenario(loaded, options)
    except ScenarioError as err:
        _invalid(err)
    except Exception:  # a bug in the injector is no verdict on the cluster
        import traceback

        traceback.print_exc()
        click.echo(f"{s.name}: undecided (the injector failed)", err=True)
        sys.exit(EXIT_UNDECIDED)
    if progress is not None:
        progress("")
    md = reports.write(result, out)
    if recorded is not None:
        same = result["plan"] == recorded.get("plan")
        click.echo(
            f"replay of {replay}: {'the same plan' if same else 'a DIFFERENT plan'}", err=True
        )
    click.echo(f"{s.name}: {result['verdict']} ({result['reason']}); report {out}, summary {md}")
    sys.exit(result["exit_code"])


def _run_on_hosts(loaded: Any, options: Any) -> dict[str, Any]:
    """The run on a cluster of hosts: namespaces made (leftovers of dead runs removed
    first), each host's config written, link faults readied on each host, the injector
    moved to the ops host; afterwards, whatever happened, every namespace removed."""
    import contextlib
    import shutil
    import signal
    import tempfile

    from shoal.services.chaos.plan import make_plan
    from shoal.services.chaos.runner import run as run_scenario
    from shoal.services.chaos.topology import link_groups
    from shoal.services.hosts import linkfaults, netns
    from shoal.services.hosts.layout import OPS, plan_layout, write_configs

    why = netns.unavailable()
    if why is not None:
        click.echo(f"{loaded.scenario.name}: undecided (--hosts: {why})", err=True)
        sys.exit(EXIT_UNDECIDED)
    s, seed = loaded.scenario, options.seed
    w = s.workload
    nodes = node_ids(w)
    plan = make_plan(s, seed, nodes, hot_ids(w))
    workdir = tempfile.mkdtemp(prefix="shoal-hosts-")
    layout = plan_layout(workdir, nodes, link_groups(plan), without=options.without)
    sim = {
        "arrival_rate_hz": w.rate,
        "task_cost_ms": w.task_cost_ms,
        "hot_spots": w.hot_spots,
        "hot_spot_factor": w.hot_factor,
        "seed": seed,
    }
    write_configs(layout, sim)
    net = layout.net()
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # -> finally
    try:
        net.build()
        layout.way = linkfaults.probe(net.netns(OPS))
        if layout.way is not None:
            kernel = linkfaults.KernelLinks(
                {h.name: (net.netns(h.name), net.address(h.name)) for h in layout.hosts},
                layout.way,
            )
            for h in layout.hosts:
                kernel.prepare(h.name)
        layout.save()
        options.hosts = layout
        with netns.entered(net.netns(OPS)):
            return run_scenario(loaded, options)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second stop half way
        net.teardown()
        signal.signal(signal.SIGTERM, old_term)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


def _progress_line() -> Any:
    tty = sys.stderr.isatty()

    broken = False

    def show(line: str) -> None:
        nonlocal broken
        if broken:
            return
        try:
            if tty:
                click.echo("\r\x1b[2K" + line[:200], err=True, nl=not line)
            elif line:
                click.echo(line, err=True)
        except OSError:  # whoever read our stderr is gone (a console killed): run on
            broken = True

    return show


@chaos.command("report")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
def report_cmd(path: str, fmt: str) -> None:
    """Print a run's report (Markdown summary or the JSON)."""
    from shoal.services.chaos import report as reports

    try:
        r = reports.read(path)
    except reports.ReportError as err:
        raise click.ClickException(str(err)) from None
    click.echo(reports.markdown(r) if fmt == "md" else json.dumps(r, indent=1), nl=fmt == "json")
