"""The deploy files say what the code does: the dashboard queries metrics the services
serve, and the scrape config targets the [metrics] defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shoal.services.runtime.config import MetricsConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROTOCOL = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_the_scrape_config_targets_every_default_metrics_address() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    targets = set(re.findall(r"- (127\.0\.0\.1:\d+)", text))
    assert targets == set(msgspec_values(MetricsConfig()))


def test_the_dashboard_queries_only_documented_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "shoal.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"shoal_[a-z_]+", e)}
    for name in names:
        base = re.sub(r"_bucket$", "", name)
        documented = base in PROTOCOL or base.split("_")[1] in {"relay", "delegator"}
        assert documented, name


def msgspec_values(cfg: MetricsConfig) -> list[str]:
    return [getattr(cfg, f) for f in cfg.__struct_fields__]


def test_every_service_has_a_systemd_unit_that_runs_it() -> None:
    from shoal.services.cli.run import SERVICES

    units = {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("*.service")}
    assert "shoal@.service" in units
    for service in ("relay", "liveness", "delegator", "registry", "shim", "broker", "sim"):
        text = units[f"shoal-{service}.service"]
        assert f"ExecStart=/opt/shoal/bin/shoal run {service}\n" in text
        assert "RestartPreventExitStatus=78" in text  # a refused config is not retried
    for text in units.values():
        for service in re.findall(r"^ExecStart=\S+ run (\S+)$", text, re.M):
            assert service == "%i" or service in SERVICES


def test_the_deploy_guide_ports_are_the_config_defaults() -> None:
    from shoal.services.runtime.config import load_config

    guide = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    config = load_config(env={})
    for row in re.findall(r"^\| (\d+) \| `(\w+)\.(\w+)` \|", guide, re.M):
        port, section, key = row
        assert getattr(getattr(config, section), key).endswith(f":{port}"), row


def test_the_shard_and_instance_units_pass_their_number_to_an_option_run_takes() -> None:
    from shoal.services.cli.run import run

    options = {opt for param in run.params for opt in getattr(param, "opts", [])}
    for unit, flag in (("shoal-relay@.service", "--shard"), ("shoal-shim@.service", "--instance")):
        text = (DEPLOY / "systemd" / unit).read_text()
        service = unit.split("-")[1].split("@")[0]
        assert f"ExecStart=/opt/shoal/bin/shoal run {service} {flag} %i\n" in text
        assert flag in options and "RestartPreventExitStatus=78" in text
