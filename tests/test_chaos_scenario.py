"""Scenario files: validation (exit 4 naming file, entry and field), seeded plans, tolerances,
and the checks judged from a recorded history."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.services.chaos.checks import Applied, Context, check_probe, evaluate
from shoal.services.chaos.load import ScenarioError, compress, hot_ids, node_ids, parse
from shoal.services.chaos.plan import make_plan
from shoal.services.chaos.runner import Options, run
from shoal.services.chaos.scenario import (
    Detected,
    NoFalseDead,
    Partition,
    Probe,
    Recovered,
    attach_errors,
    parse_seconds,
    service_links,
)
from shoal.services.testing import config_on_free_ports

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

BASE = """
name = "t"
seed = 7
deadline = "2m"

[workload]
duration = "30s"
nodes = 8
hot_spots = 2

[[fault]]
name = "c"
kind = "crash"
at = "5s"
jitter = "2s"
duration = "10s"
target = "one"

[[expect]]
kind = "detected"
within = "2s"
"""


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as err:
        parse(text, "x.toml")
    return str(err.value)


def test_durations_take_numbers_and_units() -> None:
    assert parse_seconds(1.5) == 1.5
    assert parse_seconds("500ms") == 0.5
    assert parse_seconds("2 s") == 2.0
    assert parse_seconds("1.5m") == 90.0
    for bad in ("soon", "-1s", -3, True, "5 parsecs"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_a_valid_scenario_gets_names_for_its_unnamed_entries() -> None:
    s = parse(BASE).scenario
    assert s.fault[0].name == "c"
    assert s.expect[0].name == "detected"
    assert isinstance(s.expect[0], Detected)
    assert s.expect[0].within == 2.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace('name = "t"', 'name = "t'), "x.toml: TOML syntax"),
        (
            lambda t: t + "\n[safety]\nmax_concurent_faults = 2\n",
            "[safety]: unknown field `max_concurent_faults`",
        ),
        (
            lambda t: t.replace('kind = "crash"', 'kind = "meteor"'),
            "fault[0] (\"c\"): field `kind`: Invalid value 'meteor' (one of crash,",
        ),
        (
            lambda t: t.replace('target = "one"', 'target = "sim-042"'),
            "fault[0] (\"c\"): field `target`: 'sim-042' is not a node",
        ),
        (
            lambda t: t.replace('target = "one"', 'target = "relay"'),
            "'relay' is a service; crash applies to nodes",
        ),
        (
            lambda t: t.replace('duration = "10s"', 'duration = "40s"'),
            'fault[0] ("c"): field `duration`: ends at',
        ),
        (
            lambda t: t.replace('deadline = "2m"', 'deadline = "30s"'),
            "top level: field `deadline`: 30 s does not fit",
        ),
        (
            lambda t: t.replace('at = "5s"', 'at = "5s"\npercent = 50'),
            'fault[0] ("c"): unknown field `percent`',
        ),
        (
            lambda t: t.replace('within = "2s"', 'within = "2 fortnights"'),
            "expect[0]: field `within`",
        ),
        (
            lambda t: t + '\n[[expect]]\nkind = "detected"\nwithin = 1\nfaults = ["nope"]\n',
            "no fault named 'nope'",
        ),
        (
            lambda t: t + '\n[[fault]]\nkind = "reboot"\nat = 1\nduration = 2\n',
            "field `duration`: not for reboot",
        ),
    ],
)
def test_invalid_scenarios_name_the_file_entry_and_field(change, expected) -> None:
    assert expected in error_of(change(BASE))


def _partition(target: str, services: str | None = None, at: str = "5s") -> str:
    extra = f"services = {services}\n" if services is not None else ""
    return (
        f'\n[[fault]]\nname = "p"\nkind = "partition"\nat = "{at}"\nduration = "5s"\n'
        f"target = {target}\n{extra}"
    )


def test_a_partition_between_services_resolves_to_its_link_and_touches_no_node() -> None:
    s = parse(BASE + _partition('"liveness"')).scenario
    cut = s.fault[1]
    assert isinstance(cut, Partition) and cut.services == ["relay"]  # the monitor's only link
    assert parse(BASE + _partition('"delegator"')).scenario.fault[1].services == [
        "relay",
        "liveness",
    ]
    assert parse(BASE + _partition('"sim-001"')).scenario.fault[1].services == [
        "relay",
        "delegator",
    ]
    assert service_links(s) == [("liveness", "relay")]
    ids = node_ids(s.workload)
    plan = make_plan(s, 7, ids, hot_ids(s.workload))
    step = next(f for f in plan.faults if f.fault == "p")
    assert step.targets == ["liveness"] and step.params == {"services": ["relay"]}
    assert plan.touched == [f.targets[0] for f in plan.faults if f.fault == "c"]
    # Adding it leaves the node faults' draws as they were.
    assert make_plan(parse(BASE).scenario, 7, ids, hot_ids(s.workload)).faults[0] in plan.faults
    both = parse(BASE + _partition('"delegator"', '["liveness", "relay"]')).scenario
    assert service_links(both) == [("delegator", "liveness"), ("delegator", "relay")]


@pytest.mark.parametrize(
    ("target", "services", "expected"),
    [
        ('"relay"', '["relay"]', "field `target`: 'relay' listens to no other service"),
        ('"relay"', '["liveness"]', "name the one on the other side as the target"),
        ('"liveness"', '["delegator"]', "liveness <-> delegator is not a link between services"),
        ('"liveness"', '["liveness"]', "liveness <-> liveness is not a link"),
        ('"delegator"', '["delegator"]', "delegator <-> delegator is not a link"),
        ('"liveness"', "[]", "field `services`: an empty list"),
        ('["liveness", "delegator"]', None, "a partition between services takes one service"),
        ('["liveness", "sim-001"]', None, "a partition between services takes one service"),
        ('"one"', '["liveness"]', "field `services`: nodes do not talk to the liveness monitor"),
        ('"sim-001"', '["relay", "liveness"]', "nodes do not talk to the liveness monitor"),
        ('"liveness"', '["kafka"]', "field `services[0]`: Invalid enum value 'kafka'"),
    ],
)
def test_a_partition_that_is_not_a_link_is_invalid(target, services, expected) -> None:
    message = error_of(BASE + _partition(target, services))
    assert 'x.toml: fault[1] ("p"): ' in message and expected in message


def test_detected_cannot_name_a_partition_between_services() -> None:
    text = BASE + _partition('"liveness"')
    text += '\n[[expect]]\nkind = "detected"\nwithin = 1\nfaults = ["p"]\n'
    assert "field `faults`: 'p' is a partition of a service" in error_of(text)


def test_a_partition_between_services_needs_the_injectors_own_cluster() -> None:
    loaded = parse(BASE + _partition('"liveness"'), "x.toml")
    assert attach_errors(loaded.scenario) == [
        'fault[1] ("p"): field `target`: a partition between services needs the injector\'s '
        "own cluster (its fault proxy is in the cluster's config); not with --attach"
    ]
    assert attach_errors(parse(BASE + _partition('"sim-001"')).scenario) == []
    options = Options(attach=config_on_free_ports())
    with pytest.raises(ScenarioError, match="needs the injector's own cluster") as err:
        run(loaded, options)  # refused before anything runs: nothing answers there
    assert err.value.path == "x.toml"


def test_default_detection_skips_a_partition_between_services() -> None:
    cut = Applied("p#1", "p", "partition", ["liveness"], 11.0, 15.0, applied_at=11.0)
    dead = {"node": "sim-001", "event": "dead", "t": 12.5}
    ctx = _ctx([dead])
    ctx.applied.append(cut)
    result = evaluate(Detected(name="d", within=3.0), ctx)
    assert result["passed"] and [r["node"] for r in result["latencies"]] == ["sim-001"]


def test_more_concurrent_faults_than_safety_allows_is_invalid() -> None:
    text = (
        BASE
        + "\n[safety]\nmax_concurrent_faults = 1\n"
        + ('\n[[fault]]\nname = "h"\nkind = "hang"\nat = "6s"\nduration = "5s"\n')
    )
    assert "2 faults can be active at once (c, h), more than the 1 allowed" in error_of(text)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    text = (
        BASE + '\n[[fault]]\nname = "r"\nkind = "reboot"\nat = "1s"\nevery = "5s"\njitter = "1s"\n'
    )
    s = parse(text).scenario
    ids, hot = node_ids(s.workload), hot_ids(s.workload)
    a, b = make_plan(s, 7, ids, hot), make_plan(s, 7, ids, hot)
    assert a == b
    plans = {str(make_plan(s, seed, ids, hot).faults) for seed in range(10)}
    assert len(plans) > 1
    reboots = [f for f in a.faults if f.fault == "r"]
    assert len(reboots) == 6  # at 1 + 5k (+ up to 1 s) until it no longer fits 30 s
    assert all(f.heal_at_s == f.at_s for f in reboots)  # instant
    assert a.untouched == sorted(set(ids) - set(a.touched))


def test_selections_and_roles_resolve_within_the_fleet() -> None:
    text = BASE.replace('target = "one"', 'target = { select = "minority", role = "cold" }')
    s = parse(text).scenario
    ids, hot = node_ids(s.workload), hot_ids(s.workload)
    assert hot == ["sim-000", "sim-004"]
    step = make_plan(s, 1, ids, hot).faults[0]
    assert len(step.targets) == 2 and not set(step.targets) & set(hot)  # minority of 6
    majority = parse(BASE.replace('target = "one"', 'target = "majority"')).scenario
    assert len(make_plan(majority, 1, ids, hot).faults[0].targets) == 5


def test_flap_expands_into_down_up_cycles() -> None:
    text = BASE.replace(
        'kind = "crash"', 'kind = "flap"\ndown = "2s"\nup = "3s"\ncycles = 2'
    ).replace('duration = "10s"\n', "")
    s = parse(text).scenario
    steps = make_plan(s, 1, node_ids(s.workload), []).faults
    assert [(round(f.heal_at_s - f.at_s, 3)) for f in steps] == [2.0, 2.0]
    assert round(steps[1].at_s - steps[0].at_s, 3) == 5.0


def test_compress_scales_the_timeline_but_not_the_limits() -> None:
    s = compress(parse(BASE).scenario, 0.25)
    assert (s.workload.duration, s.fault[0].at, s.fault[0].duration) == (7.5, 1.25, 2.5)
    assert s.expect[0].within == 2.0
    assert s.deadline == 120 - 22.5


def test_probes_hold_when_every_known_value_is_within_tolerance() -> None:
    probe = Probe(metric="alive", at_least=7)
    samples = [{"t": 1.0, "values": {"alive": 8}}, {"t": 2.0, "values": {"alive": None}}]
    assert check_probe(probe, "during", samples)["passed"]
    samples.append({"t": 3.0, "values": {"alive": 5}})
    result = check_probe(probe, "during", samples)
    assert (result["passed"], result["failures"], result["by"], result["first_failure_t"]) == (
        False,
        1,
        2.0,
        3.0,
    )
    assert not check_probe(probe, "after", [])["decided"]


def _ctx(members: list[dict], **kw) -> Context:
    applied = [
        Applied("c#1", "c", "crash", ["sim-001"], 10.0, 20.0, applied_at=10.0, healed_at=20.0)
    ]
    base = dict(
        nodes=["sim-000", "sim-001"],
        untouched=["sim-000"],
        applied=applied,
        members=members,
        final={},
        last_heal=20.0,
        all_alive=[(5.0, 10.5), (20.5, None)],
        revoked={},
        phase_start=5.0,
        run_end=40.0,
    )
    base.update(kw)
    return Context(**base)


def test_expectations_report_what_was_observed_and_by_how_much() -> None:
    dead = {"node": "sim-001", "event": "dead", "t": 12.5}
    ok = evaluate(Detected(name="d", within=3.0), _ctx([dead]))
    assert (ok["passed"], ok["observed"]) == (True, 2.5)
    late = evaluate(Detected(name="d", within=2.0), _ctx([dead]))
    assert (late["passed"], late["by"]) == (False, 0.5)
    never = evaluate(Detected(name="d", within=2.0), _ctx([]))
    assert (never["passed"], never["missed"]) == (False, 1)
    assert evaluate(Recovered(name="r", within=1.0), _ctx([]))["observed"] == 0.5
    false_dead = {"node": "sim-000", "event": "dead", "t": 15.0}
    nfd = evaluate(NoFalseDead(name="n"), _ctx([dead, false_dead]))
    assert (nfd["passed"], nfd["observed"], nfd["nodes"]) == (False, 1, ["sim-000"])


def test_the_cli_exits_4_on_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace('kind = "crash"', 'kind = "meteor"'))
    run = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "chaos", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 4
    assert f'{bad}: fault[0] ("c"): field `kind`' in run.stderr


def test_every_library_scenario_is_valid() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    for path in files:
        parse(path.read_text(), str(path))


def test_avoid_leaves_out_an_earlier_faults_targets() -> None:
    text = BASE.replace('target = "one"', 'target = { select = 3, role = "cold" }') + (
        '\n[[fault]]\nname = "after"\nkind = "crash"\nat = "6s"\nduration = "5s"\n'
        'target = { select = "all", role = "cold", avoid = ["c"] }\n'
    )
    s = parse(text).scenario
    ids, hot = node_ids(s.workload), hot_ids(s.workload)
    for seed in range(5):
        steps = {f.fault: f for f in make_plan(s, seed, ids, hot).faults}
        first, second = steps["c"], steps["after"]
        assert len(second.targets) == 3
        assert not set(first.targets) & set(second.targets)
        assert not set(second.targets) & set(hot)
    later = text.replace('avoid = ["c"]', 'avoid = ["after"]')
    assert "field `target.avoid`: no earlier fault named 'after'" in error_of(later)
