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
