"""Writing the report: JSON summary, PNG plots and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report import STAGES, Received, stage_ns


def write_report(report: dict[str, Any], received: list[Received], out: Path, plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_without_timeline(report), indent=2) + "\n")
    if plots and received:
        _plot(report, received, out)


def _without_timeline(report: dict[str, Any]) -> dict[str, Any]:
    acc = {k: v for k, v in report.get("accuracy", {}).items() if k != "timeline"}
    return {**report, "accuracy": acc}


def _plot(report: dict[str, Any], received: list[Received], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e2e = np.sort([(r.t_received_ns - r.prediction.t_produce_ns) / 1e6 for r in received])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(e2e, np.arange(1, len(e2e) + 1) / len(e2e))
    ax.axvline(report["latency"]["budget_ms"], color="red", linestyle="--", label="budget")
    ax.set(
        xscale="log",
        xlabel="end-to-end latency (ms)",
        ylabel="fraction of predictions",
        title="Latency CDF (produce -> prediction received)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=100)
    plt.close(fig)

    stages = [stage_ns(r) for r in received]
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [np.maximum(np.array([s[k] for s in stages]) / 1e6, 1e-3) for k in STAGES]
    ax.boxplot(data, tick_labels=list(STAGES), showfliers=False, whis=(1, 99))
    ax.set(yscale="log", ylabel="ms", title="Latency by stage (whiskers p1-p99)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=100)
    plt.close(fig)

    timeline = report.get("accuracy", {}).get("timeline")
    if timeline and timeline["t_event_ns"]:
        t = (np.asarray(timeline["t_event_ns"]) - min(timeline["t_event_ns"])) / 1e9
        order = np.argsort(t)
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        fde = np.asarray(timeline["fde_m"])[order]
        window = max(1, len(fde) // 50)
        smooth = np.convolve(fde, np.ones(window) / window, mode="same")
        ax1.plot(t[order], smooth)
        ax1.set(ylabel="FDE (m), rolling", title="Accuracy and model version over time")
        ax1.grid(True, alpha=0.3)
        versions = np.asarray(timeline["version"])[order]
        served = versions >= 0
        ax2.step(t[order][served], versions[served], where="post", label="model version")
        fallback = np.convolve(~served, np.ones(window) / window, mode="same")
        ax3 = ax2.twinx()
        ax3.plot(t[order], 100 * fallback, color="tab:red", alpha=0.6, label="fallback %")
        ax3.set(ylabel="fallback share (%), rolling", ylim=(0, 100))
        ax2.set(xlabel="stream time (s)", ylabel="model version serving")
        ax2.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=100)
        plt.close(fig)


def _budget_split(lat: dict[str, Any]) -> str:
    """The misses of the warm-up and of the steady state, with the steady p99."""
    steady = lat.get("steady_end_to_end_ms")
    if "warmup_s" not in lat:
        return ""
    split = f" (first {lat['warmup_s']:g} s: {lat['warmup_misses']:,d} of {lat['warmup_count']:,d}"
    if steady is None:
        return split + ")"
    return split + f"; after: {100 * lat['steady_miss_rate']:.2f} %, p99 {steady['p99']:.2f} ms)"


def format_table(report: dict[str, Any]) -> str:
    """A readable terminal summary of a report dict."""
    lines = []
    lat = report["latency"]
    if lat.get("count"):
        e = lat["end_to_end_ms"]
        lines += [
            f"predictions      {lat['count']:>10,d}   throughput {lat['throughput_per_s']:,.0f}/s",
            "latency (ms)          p50      p90      p99    p99.9      max",
            "  end-to-end   "
            + " ".join(f"{e[k]:8.2f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
        ]
        for stage in STAGES:
            s = lat["stages_ms"][stage]
            lines.append(
                f"  {stage:<11s}  "
                + " ".join(f"{s[k]:8.2f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            )
        lines.append(
            f"budget {lat['budget_ms']:g} ms: missed by {100 * lat['budget_miss_rate']:.2f} %"
            + _budget_split(lat)
        )
    else:
        lines.append("no predictions received")
    models = report["models"]
    lines.append(
        f"model versions served: {models['model_versions_served'] or 'none'}; "
        f"fallback share {100 * models['fallback_share']:.1f} % {models['fallback_reasons'] or ''}"
    )
    acc = report["accuracy"]
    if acc.get("scored"):
        horizons = list(acc["served"]["per_horizon_m"])
        lines.append(
            f"accuracy on {acc['scored']:,d} predictions (truth: {report['truth_source']})"
        )
        lines.append("  mean error (m)  " + " ".join(f"{h:>7s}" for h in horizons) + "      ADE")
        for name in [n for n in ("served", "cv", "ctrv", "ca") if n in acc]:
            row = acc[name]
            lines.append(
                f"  {name:<14s}  "
                + " ".join(f"{row['per_horizon_m'][h]:7.2f}" for h in horizons)
                + f"  {row['ade_m']:7.2f}"
            )
        lines.extend(_never_worse_lines(acc))
    else:
        lines.append("accuracy: no prediction with ground truth yet")
    return "\n".join(lines)


def _never_worse_lines(acc: dict[str, Any]) -> list[str]:
    """Who answered, when, and served beside the best physics predictor over time."""
    lines = [
        f"  scored {acc['scored']:,d} of {acc['frames']:,d} frames "
        f"({100 * acc['scored_share']:.0f} %: a frame is scored once truth covers its horizons)"
    ]
    shares = ", ".join(
        f"{name} {100 * row['share']:.1f} %"
        + (
            " (" + ", ".join(f"{r} {100 * v:.1f} %" for r, v in row["reasons"].items()) + ")"
            if row["reasons"]
            else ""
        )
        for name, row in acc["predictors"].items()
    )
    lines.append(f"answered by: {shares}")
    parts = [
        f"{s['start_s']}-{s['end_s']} s {s['predictor']}"
        + (f" ({s['reason']})" if s["reason"] else "")
        for s in acc["stretches"]
    ]
    more = f" ... (+{len(parts) - 8})" if len(parts) > 8 else ""
    lines.append("stretches: " + " | ".join(parts[:8]) + more)
    roll = acc["rolling_fde"]
    if roll["windows"]:
        last = roll["windows"][-1]
        lines.append(
            f"FDE over the last {roll['window_s']:g} s: served {last['served']:.2f} m, "
            f"cv {last['cv']:.2f} m, ctrv {last['ctrv']:.2f} m"
        )
    if roll.get("worst_ratio") is not None:
        lines.append(
            f"never worse than physics: worst {roll['window_s']:g} s window after the first "
            f"{roll['after_s']:g} s: served/best physics = {roll['worst_ratio']:.3f} "
            f"({roll['windows_checked']} windows)"
        )
    return lines
