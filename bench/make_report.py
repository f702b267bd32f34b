"""The benchmark report: PNG plots and one report.md, from the JSON the benchmarks saved.

``just bench`` runs every benchmark with ``--save bench/report`` and then this; ``shoal
bench report [DIR]`` (or ``python bench/make_report.py [DIR]``) rebuilds it from the saved
JSON alone, running nothing. A benchmark whose JSON is missing is named as not run; the
rest of the report is built all the same.

What it draws, each beside the baseline its benchmark measured in the same run:

- relay.png: relay throughput (single frame, batched) against raw pyzmq (relay_throughput),
  and the bus framings (framing);
- mqtt.png: the MQTT path (broker + shim) against the broker alone, per broker (mqtt_path);
- detection.png: CDFs of crash, hang and board power cut to dead (liveness, mqtt_path),
  with memberlist's and Akka's default detection times marked;
- handoff.png: the hand-off latency CDF of every run of the tail (delegation_tail, and
  delegation_tail_hog beside a CPU hog), the target marked;
- ledger.png: commit latency with SQLite's own checkpoints against the checkpointer thread
  (ledger);
- efficiency.png: efficiency second by second with delegation on and off (delegation);
- cost.png: CPU % and RSS of every service against fleet size (cost);
- the chaos library as a table (chaos_library): detection, re-delegation and recovery.

    python bench/make_report.py [DIR]      # default bench/report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shoal.bench import _markdown as markdown

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "bench" / "report"
# Default time to declare a crashed member dead (docs/architecture.md, "Liveness"), if the
# liveness JSON does not carry its own anchors.
ANCHORS_MS = {"memberlist": 5000, "akka": 5500}
# Every benchmark `just bench` saves, in the report's order.
BENCHES = (
    "relay_throughput",
    "framing",
    "relay_restart",
    "mqtt_path",
    "liveness",
    "delegation",
    "delegation_tail",
    "delegation_tail_hog",
    "ledger",
    "chaos_library",
    "cost",
    "tui",
    "nodecore_heap",
)
MACHINE_KEYS = ("cpu_model", "cpu_count", "platform")
VERSION_KEYS = ("shoal", "python", "pyzmq", "libzmq", "msgspec", "sqlite")


def load(directory: Path) -> dict[str, dict[str, Any]]:
    """Every saved benchmark JSON in directory, by name (the file's stem)."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"report: skipping {path.name}: {err}", file=sys.stderr)
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def _info(data: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's machine and version fields (top level, or under "versions")."""
    nested = data.get("versions")
    return {**(nested if isinstance(nested, dict) else {}), **data}


def cdf(ax: Any, values: list[float], label: str, **style: Any) -> None:
    xs = sorted(values)
    if not xs:
        return
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    label = label if label.startswith("_") else f"{label} (n={len(xs)})"
    ax.step([xs[0], *xs], [0.0, *ys], where="post", label=label, **style)
    ax.set_ylim(0, 1.02)


def _figure(ncols: int = 1, width: float = 7.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols / (1 if ncols == 1 else 1.6), 4.2))
    return fig, axes


def _save(fig: Any, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:,.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


# --- the plots: each returns its file name, or None when its JSON is missing ------------


def plot_relay(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    relay, framing = data.get("relay_throughput"), data.get("framing")
    if relay is None and framing is None:
        return None
    fig, axes = _figure(2)
    ax = axes[0]
    if relay is not None:
        _bars(
            ax,
            [
                "raw pyzmq\n(baseline)",
                "relay\nsingle frame",
                f"relay\nbatched {relay.get('batch_records', '')}",
            ],
            [relay["raw_msgs_per_s"], relay["relay_msgs_per_s"], relay["batched_records_per_s"]],
            ["grey", "tab:blue", "tab:green"],
        )
        ax.set_title(f"relay throughput (ratio {relay.get('ratio')})")
        ax.set_ylabel("records / s")
    ax = axes[1]
    if framing is not None:
        cases = {
            k.removesuffix("_records_per_s"): v
            for k, v in framing.items()
            if k.endswith("_records_per_s") and isinstance(v, int | float)
        }
        if cases:
            labels = [f"{k}\n(baseline)" if k == "single" else k for k in cases]
            colors = ["grey" if k == "single" else "tab:blue" for k in cases]
            _bars(ax, labels, list(cases.values()), colors)
        ax.set_title("bus framing, pyzmq (median of repeats)")
        ax.set_ylabel("records / s")
    return _save(fig, out, "relay.png")


def plot_mqtt(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    mqtt = data.get("mqtt_path")
    if mqtt is None:
        return None
    brokers = mqtt.get("brokers") or {"amqtt": mqtt}
    fig, ax = _figure()
    labels, values, colors = [], [], []
    for name, r in brokers.items():
        labels += [f"{name}\nalone (baseline)", f"{name}\n+ shim"]
        values += [r["raw_broker_msgs_per_s"], r["shim_msgs_per_s"]]
        colors += ["grey", "tab:blue"]
    _bars(ax, labels, values, colors)
    ax.set_ylabel("messages / s")
    ax.set_title("the MQTT path against the broker alone")
    return _save(fig, out, "mqtt.png")


def plot_detection(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    live, mqtt = data.get("liveness"), data.get("mqtt_path")
    series = []
    if live is not None:
        s = live.get("samples", {})
        series += [
            ("crash -> dead", s.get("crash_to_dead_ms", [])),
            ("hang -> dead", s.get("hang_to_dead_ms", [])),
        ]
    if mqtt is not None:
        series.append(
            ("board power cut -> dead", mqtt.get("samples", {}).get("power_cut_to_dead_ms", []))
        )
    series = [(label, values) for label, values in series if values]
    if not series:
        return None
    anchors = (live or {}).get("baseline_anchor_dead_ms") or ANCHORS_MS
    fig, ax = _figure()
    for label, values in series:
        cdf(ax, values, label)
    for (name, ms), color in zip(
        [(k, anchors[k]) for k in ("memberlist", "akka") if k in anchors],
        ["tab:red", "tab:purple"],
        strict=False,
    ):
        ax.axvline(ms, color=color, linestyle="--")
        ax.annotate(
            f"{name} default {ms / 1000:g} s",
            (ms, 0.5),
            rotation=90,
            color=color,
            fontsize=8,
            ha="right",
        )
    ax.set_xlabel("fault to verdict (ms)")
    ax.set_ylabel("fraction of faults")
    ax.set_title("detection latency")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "detection.png")


def _handoff_runs(data: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = [
        (name, data[name]) for name in ("delegation_tail", "delegation_tail_hog") if name in data
    ]
    if not found and "delegation" in data:
        single = data["delegation"]
        samples = single.get("details", {}).get("hot_spot", {}).get("handoff_samples_ms", [])
        found = [("delegation", {"per_run": [{"samples_ms": samples}], "target_p99_ms": 20.0})]
    return found


def ccdf(ax: Any, values: list[float], label: str, **style: Any) -> None:
    """1 - CDF on a log scale: the tail, where a p99 or a p99.9 can be read."""
    xs = sorted(values)
    if not xs:
        return
    ys = [1 - i / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label, **style)


def _where(tail: dict[str, Any]) -> str:
    """How busy the machine was: the CPU hogs started, and the load averages the runs saw
    (the "idle" target assumes an idle machine; a shared one is not)."""
    hogs = tail.get("cpu_hogs")
    where = f"beside {hogs} CPU hog(s)" if hogs else "no CPU hog"
    loads = [r["loadavg_1m_at_end"] for r in tail.get("per_run", []) if r.get("loadavg_1m_at_end")]
    if loads:
        where += f", load avg {min(loads):g}-{max(loads):g}"
    return where


def plot_handoff(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    found = _handoff_runs(data)
    if not found:
        return None
    fig, axes = _figure(2)
    colors = {
        "delegation_tail": "tab:blue",
        "delegation_tail_hog": "tab:orange",
        "delegation": "tab:blue",
    }
    for name, tail in found:
        runs = tail.get("per_run", [])
        every = [v for r in runs for v in r.get("samples_ms", [])]
        where = _where(tail)
        color = colors[name]
        for r in runs:
            cdf(axes[0], r.get("samples_ms", []), "_", color=color, alpha=0.25, linewidth=0.8)
        cdf(axes[0], every, f"{len(runs)} runs, {where}", color=color, linewidth=2)
        ccdf(axes[1], every, f"{len(runs)} runs, {where}", color=color, linewidth=2)
        target = tail.get("target_p99_ms")
        if target:
            for ax in axes:
                ax.axvline(target, color=color, linestyle="--")
            axes[0].annotate(
                f"p99 target {target:g} ms ({where})",
                (target, 0.3),
                rotation=90,
                fontsize=8,
                ha="right",
            )
    axes[0].axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
    axes[1].axhline(0.01, color="grey", linewidth=0.8, linestyle=":")
    axes[1].set_yscale("log")
    _log_ms_axes(axes, "offer taken -> peer accepted (ms, log)")
    axes[0].set_ylabel("fraction of hand-offs")
    axes[1].set_ylabel("fraction slower (log; dotted: p99)")
    axes[0].set_title("hand-off latency CDF (thin: each run)")
    axes[1].set_title("its tail")
    axes[0].legend(loc="lower right", fontsize=8)
    return _save(fig, out, "handoff.png")


def _log_ms_axes(axes: Any, xlabel: str) -> None:
    """A CDF panel pair's log x axes, labelled in plain milliseconds."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)


def plot_ledger(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    latency = (data.get("ledger") or {}).get("commit_latency")
    if not latency:
        return None

    fig, axes = _figure(2)
    styles = {
        "sqlite_autocheckpoint": ("SQLite checkpoints in the commit (baseline)", "grey"),
        "checkpointer_thread": ("checkpoints on a thread (the delegator)", "tab:blue"),
    }
    for name, values in latency.get("samples_ms", {}).items():
        label, color = styles.get(name, (name, None))
        cdf(axes[0], values, label, color=color)
        ccdf(axes[1], values, label, color=color)
    axes[1].set_yscale("log")
    axes[1].axhline(0.01, color="grey", linewidth=0.8, linestyle=":")
    _log_ms_axes(axes, "a pass: its changes and commit (ms, log)")
    axes[0].set_ylabel("fraction of passes")
    axes[1].set_ylabel("fraction slower (log)")
    axes[0].set_title("ledger commit latency at the delegator's pace")
    axes[1].set_title("its tail")
    axes[0].legend(loc="lower right", fontsize=7)
    return _save(fig, out, "ledger.png")


def plot_efficiency(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    run = data.get("delegation")
    series = (run or {}).get("details", {}).get("hot_spot", {}).get("efficiency_over_time")
    if not series:
        return None
    fig, ax = _figure()
    ax.plot(series["t_s"], series["on"], label="delegation on", color="tab:blue")
    ax.plot(series["t_s"], series["off"], label="delegation off (baseline)", color="grey")
    ax.axvline(series.get("warmup_s", 0), color="black", linestyle=":", linewidth=0.8)
    ax.annotate(
        "window starts", (series.get("warmup_s", 0), 0.05), rotation=90, fontsize=8, ha="right"
    )
    ax.set_ylim(0, 1.2)
    ax.set_xlabel("time since the clusters were ready (s)")
    ax.set_ylabel("efficiency (done / min(offered, capacity))")
    ax.set_title("hot spot: efficiency over the run")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "efficiency.png")


def plot_cost(data: dict[str, dict[str, Any]], out: Path) -> str | None:
    cost = data.get("cost")
    if cost is None or not cost.get("sizes"):
        return None
    sizes = cost["sizes"]
    fleet = [s["nodes"] for s in sizes]
    services = sorted({name for s in sizes for name in s["services"]})
    fig, axes = _figure(2)
    for name in services:
        style = {"linestyle": "--", "color": "grey"} if name == "sim" else {}
        label = f"{name} (load generator)" if name == "sim" else name
        cpu = [s["services"].get(name, {}).get("cpu_pct") for s in sizes]
        rss = [s["services"].get(name, {}).get("rss_mb") for s in sizes]
        axes[0].plot(fleet, cpu, marker="o", label=label, **style)
        axes[1].plot(fleet, rss, marker="o", label=label, **style)
    axes[0].set_ylabel("CPU % of one core")
    axes[1].set_ylabel("RSS (MB)")
    for ax in axes:
        ax.set_xlabel("simulated nodes")
        ax.set_xscale("log")
    axes[0].set_title("CPU against fleet size")
    axes[1].set_title("memory against fleet size")
    axes[1].legend(fontsize=7, loc="upper left")
    return _save(fig, out, "cost.png")


PLOTS = (
    ("Relay throughput", plot_relay),
    ("The MQTT path", plot_mqtt),
    ("Detection latency", plot_detection),
    ("Hand-off latency", plot_handoff),
    ("Ledger commit latency: where its checkpoints run", plot_ledger),
    ("Efficiency with and without delegation", plot_efficiency),
    ("Cost against fleet size", plot_cost),
)


# --- report.md ---------------------------------------------------------------------------


def chaos_table(chaos: dict[str, Any]) -> list[str]:
    columns = (
        ("scenario", "scenario"),
        ("verdict", "verdict"),
        ("suspect p50 ms", "detect_suspect_ms_p50"),
        *markdown.CHAOS_OUTCOME,
    )
    baseline = chaos.get("baseline")
    rows = list(chaos.get("results", []))
    if baseline:
        rows.append({**baseline, "scenario": "control (no fault, baseline)"})
    return markdown.table(columns, rows)


def _headline(name: str, r: dict[str, Any]) -> str:
    """The benchmark's top-level figures (numbers and flags), one line."""
    skip = {"cpu_count", "elapsed_s"}
    figures = [
        f"{k} {v}"
        for k, v in r.items()
        if isinstance(v, bool) or (isinstance(v, int | float) and k not in skip)
    ]
    return ", ".join(figures[:14]) or "(no scalar figures)"


def machine(data: dict[str, dict[str, Any]]) -> list[str]:
    infos = [_info(r) for r in data.values()]
    dates = sorted(str(i["date"]) for i in infos if i.get("date"))
    lines = []
    for key in MACHINE_KEYS:
        seen = sorted({str(i[key]) for i in infos if i.get(key) is not None})
        if seen:
            lines.append(f"- {key.replace('_', ' ')}: {', '.join(seen)}")
    versions = []
    for key in VERSION_KEYS:
        seen = sorted({str(i[key]) for i in infos if i.get(key) is not None})
        if seen:
            versions.append(f"{key} {'/'.join(seen)}")
    if versions:
        lines.append(f"- versions: {', '.join(versions)}")
    if dates:
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines.append(f"- date (UTC): {span}")
    return lines or ["- (no machine information in the saved JSON)"]


def handoff_lines(data: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name in ("delegation_tail", "delegation_tail_hog"):
        t = data.get(name)
        if t is None:
            continue
        where = _where(t)
        verdict = "met" if t.get("meets_target") else "MISSED"
        lines.append(
            f"- {t.get('runs')} quick runs, {where}: p99 per run {t.get('handoff_p99_ms_per_run')} ms;"
            f" worst {t.get('handoff_p99_ms_worst_run')} ms against a target of"
            f" {t.get('target_p99_ms')} ms: {verdict}"
        )
    return lines


def build(directory: Path = DEFAULT_DIR) -> Path:
    """Write the PNGs and report.md into directory, from its JSON; report.md's path."""
    directory.mkdir(parents=True, exist_ok=True)
    data = load(directory)
    md = [
        "# shoal benchmark report",
        "",
        "Built by `bench/make_report.py` from the JSON beside it.",
        "",
    ]
    md += ["## Machine", "", *machine(data), ""]
    for title, plot in PLOTS:
        md += [f"## {title}", ""]
        name = plot(data, directory)
        md.append(f"![{title}]({name})" if name else "Not run: its benchmark's JSON is missing.")
        md.append("")
        if plot is plot_handoff:
            md += [*handoff_lines(data), ""]
    md += ["## The chaos library", ""]
    md += [*chaos_table(data["chaos_library"]), ""] if "chaos_library" in data else ["Not run.", ""]
    from shoal.bench.report_scale import section as scale_section  # its own module

    md += scale_section(data, directory)
    md += ["## Every benchmark", "", "| benchmark | JSON | figures |", "|---|---|---|"]
    for name in [*BENCHES, *sorted(set(data) - set(BENCHES))]:
        if name in data:
            md.append(f"| {name} | [{name}.json]({name}.json) | {_headline(name, data[name])} |")
        else:
            md.append(f"| {name} | - | not run |")
    path = directory / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    print(build(directory))


if __name__ == "__main__":
    main()
