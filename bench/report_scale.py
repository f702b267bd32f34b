"""The report's scale sections: bench/scale.py's JSON (a plot of every process's CPU and
RSS per scenario, and a table of the operator-facing figures) and bench/shards.py's (the
relay's records/s against its shard count, 1 shard the baseline). Kept out of
bench/make_report.py, which calls ``section`` once (and which this module does not import:
no import circle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(10.0, 4.2))


def _save(fig: Any, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _label(row: dict[str, Any]) -> str:
    return f"{row['nodes']:,} @ {row['telemetry_hz']:g} Hz"


def plot_scale(scale: dict[str, Any], out: Path, name: str = "scale") -> str:
    rows = scale["scenarios"]
    names = sorted({name for r in rows for name in r["services"]})
    fig, axes = _figure()
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [k + i * width for k in range(len(names))]
        cpu = [row["services"].get(n, {}).get("cpu_pct", 0) for n in names]
        rss = [row["services"].get(n, {}).get("rss_mb", 0) for n in names]
        axes[0].bar(xs, cpu, width, label=_label(row))
        axes[1].bar(xs, rss, width, label=_label(row))
    for ax, title in zip(axes, ("CPU % of one core", "RSS (MB)"), strict=True):
        ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(names))])
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(title)
    axes[0].axhline(100, color="grey", linestyle=":", linewidth=1)  # one core: a GIL's ceiling
    axes[0].legend(fontsize=7)
    return _save(fig, out, f"{name}.png")


def plot_shards(shards: dict[str, Any], out: Path) -> str:
    fig, axes = _figure()
    for batch, points in sorted(shards["curve"].items()):
        xs = [p["shards"] for p in points]
        axes[0].plot(xs, [p["records_per_s"] for p in points], marker="o", label=batch)
        axes[1].plot(xs, [p["speedup"] for p in points], marker="o", label=batch)
    xs = sorted({p["shards"] for points in shards["curve"].values() for p in points})
    axes[1].plot(xs, [x / xs[0] for x in xs], color="grey", linestyle=":", label="linear")
    for ax, title in zip(
        axes, ("records/s through every shard", "speedup over 1 shard"), strict=True
    ):
        ax.set_xticks(xs)
        ax.set_xlabel("relay shards")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _save(fig, out, "shards.png")


def shards_section(data: dict[str, dict[str, Any]], out: Path) -> list[str]:
    md = ["## Relay shards", ""]
    shards = data.get("shards")
    if not shards or not shards.get("curve"):
        return [*md, "Not run: shards.json is missing.", ""]
    md += [f"![Relay shards]({plot_shards(shards, out)})", ""]
    md += ["| stream | shards | records/s | speedup | relays' CPU % of a core | machine CPU % |"]
    md += ["|---|---|---|---|---|---|"]
    for batch, points in sorted(shards["curve"].items()):
        for p in points:
            md.append(
                f"| {batch} | {p['shards']} | {p['records_per_s']:,.0f} | x{p['speedup']}"
                f" | {p['relay_cpu_pct']} | {p['machine_cpu_pct']} |"
            )
    return [*md, "", f"Baseline: {shards.get('baseline')}; lost {shards.get('lost')}.", ""]


def section(data: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """The report.md lines of the scale sections (plots and tables), or "Not run."."""
    md = _scale_section(data, out)
    for key in sorted(k for k in data if k.startswith("scale_shards")):  # bench/scale.py --shards
        n = data[key].get("shards")
        md += _scale_section(data, out, key, f"Scale on one machine, {n} relay shards and shims")
    return md + shards_section(data, out)


def _scale_section(
    data: dict[str, dict[str, Any]],
    out: Path,
    key: str = "scale",
    title: str = "Scale on one machine",
) -> list[str]:
    md = [f"## {title}", ""]
    scale = data.get(key)
    if not scale or not scale.get("scenarios"):
        return [*md, f"Not run: {key}.json is missing.", ""]
    md += [f"![{title}]({plot_scale(scale, out, key)})", ""]
    columns = (
        ("fleet", None),
        ("msg/s", "messages_per_s"),
        ("sims", "sim_processes"),
        ("sims' CPU % (baseline)", "load_generator_cpu_pct"),
        ("CPU % of all its processes", "cluster_cpu_pct"),
        ("machine CPU %", "machine_cpu_pct"),
        ("status --json s", "status_json_s"),
        ("snapshot s", "relay_snapshot_s"),
        ("re-sync s", "delegator_resync_s"),
        ("false suspect", "false_suspect"),
        ("false dead", "false_dead"),
    )
    md += ["| " + " | ".join(h for h, _ in columns) + " | console CPU % |"]
    md += ["|" + "---|" * (len(columns) + 1)]
    for row in scale["scenarios"]:
        cells = [_label(row) if k is None else str(row.get(k, "-")) for _, k in columns]
        console = row.get("console_nodes_view", {}).get("cpu_pct", "-")
        md.append("| " + " | ".join(cells) + f" | {console} |")
    first = scale.get("first_bottleneck", {})
    md += [
        "",
        f"Busiest service: {first.get('service')} at {first.get('cpu_pct')}% of one core"
        f" ({'saturated' if first.get('saturated') else 'not saturated'};"
        f" {first.get('cpu_pct_in_first_scenario')}% in the first scenario); the machine"
        f" {first.get('machine_cpu_pct', '-')}% busy"
        f" ({'saturated' if first.get('machine_saturated') else 'not saturated'}).",
        "",
    ]
    return md
