"""The bias report: DVC metrics JSON, DVC plots CSV, PNGs and a markdown table laid out like CRAB's
Table 1 (rows: metrics; columns: methods).

Outputs (``write_report``):

- ``metrics_path`` (e.g. ``metrics/evaluation.json``): ``{"dataset", "split", "ranking",
  "methods": {method: {metric: float}}}``: scalar metrics only (per-group lists go to plots)
- ``plots_dir/exposure.csv``  method, group, exposure (E_g@K), history_share (H_g), gu
- ``plots_dir/head_tail.csv`` method, part (head/tail), hr, ndcg, n
- ``plots_dir/token_bias.csv`` method, level, group, generated_share, test_share (codebook given)
- ``plots_dir/{exposure,head_tail,token_bias}.png``
- ``report_path`` (e.g. ``reports/evaluation.md``): the tables
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from components.registry.store import atomic_write_text

RANKING_NOTE = "All items ranked; history items NOT excluded."
TABLE_ROWS = ("HR", "NDCG", "DGU", "MGU", "DivR", "ORR", "HR_head", "HR_tail", "NDCG_head", "NDCG_tail", "coverage", "invalid")
LOWER_IS_BETTER = {"DGU", "MGU", "ORR", "invalid"}


def scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """Drop the per-group lists (they go to the plots); keep numbers and ``None``."""
    return {k: v for k, v in m.items() if not isinstance(v, (list, tuple, np.ndarray))}


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown_table(results: dict[str, dict[str, Any]], k: int, rows: Sequence[str] = TABLE_ROWS) -> str:
    """CRAB Table 1 layout: one row per metric@k, one column per method."""
    methods = list(results)
    lines = ["| Metric | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for r in rows:
        key = f"{r}@{k}"
        if not any(key in results[m] for m in methods):
            continue
        arrow = "↓" if r in LOWER_IS_BETTER else "↑"
        lines.append(f"| {key} {arrow} | " + " | ".join(_fmt(results[m].get(key)) for m in methods) + " |")
    return "\n".join(lines)


def accuracy_table(results: dict[str, dict[str, Any]], ks: Sequence[int]) -> str:
    methods = list(results)
    lines = ["| Metric | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for name in ("HR", "NDCG"):
        for k in ks:
            lines.append(f"| {name}@{k} | " + " | ".join(_fmt(results[m].get(f"{name}@{k}")) for m in methods) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_exposure(results: dict[str, dict[str, Any]], k: int, path: Path) -> None:
    """Grouped bars: exposure share E_g@K per method next to the training history share H_g."""
    plt = _plt()
    methods = [m for m in results if results[m].get(f"exposure@{k}") is not None]
    hist = np.asarray(next(iter(results.values()))["history_share"])
    G = hist.size
    width = 0.8 / (len(methods) + 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * G, 3.6))
    x = np.arange(G)
    ax.bar(x, hist, width, label="training history", color="0.6")
    for j, m in enumerate(methods):
        ax.bar(x + (j + 1) * width, results[m][f"exposure@{k}"], width, label=m)
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels([f"G{g + 1}" for g in range(G)])
    ax.set_xlabel("item popularity group (G1 = most popular)")
    ax.set_ylabel(f"share of top-{k} slots")
    ax.set_title(f"Exposure by popularity group vs history share (@{k})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_head_tail(results: dict[str, dict[str, Any]], k: int, path: Path) -> None:
    plt = _plt()
    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.3 * len(methods), 3.4))
    x = np.arange(len(methods))
    for ax, metric in zip(axes, ("HR", "NDCG")):
        for off, part in ((-0.2, "head"), (0.2, "tail")):
            vals = [results[m].get(f"{metric}_{part}@{k}") or 0.0 for m in methods]
            ax.bar(x + off, vals, 0.4, label=f"{part} targets")
        top = max([results[m].get(f"{metric}_{p}@{k}") or 0.0 for m in methods for p in ("head", "tail")] + [1e-6])
        ax.set_ylim(0, top * 1.3)  # room for the legend
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=20, fontsize=8)
        ax.set_title(f"{metric}@{k} by target popularity")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_token_bias(token_bias: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """CARE Fig. 1: one panel per SID level, the test-target token share per token popularity group
    next to each method's generated share. Methods may differ in their number of levels (each is
    drawn on the levels it has; the test bars come from the first method having the level)."""
    plt = _plt()
    methods = list(token_bias)
    L = max(len(tb) for tb in token_bias.values())
    fig, axes = plt.subplots(1, L, figsize=(4.4 * L, 3.6), squeeze=False)
    for lvl in range(L):
        ax = axes[0, lvl]
        have = [m for m in methods if len(token_bias[m]) > lvl]
        test = np.asarray(token_bias[have[0]][lvl]["test_share"])
        # codebooks may group a level into fewer groups (a level with fewer used tokens than groups)
        G = max(test.size, *(len(token_bias[m][lvl]["generated_share"]) for m in have))
        width = 0.8 / (len(have) + 1)
        x = np.arange(G)
        ax.bar(np.arange(test.size), test, width, label="test targets" + (f" ({have[0]} codebook)" if len(methods) > 1 else ""), color="0.6")
        for j, m in enumerate(have):
            share = token_bias[m][lvl]["generated_share"]
            ax.bar(np.arange(len(share)) + (j + 1) * width, share, width, label=m)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels([f"G{g + 1}" for g in range(G)], fontsize=8)
        ax.set_title(f"SID level {lvl + 1}")
        ax.set_xlabel("token popularity group (G1 = most popular)")
        if lvl == 0:
            ax.set_ylabel("share of tokens")
            ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    results: dict[str, dict[str, Any]],
    *,
    dataset: str,
    split: str,
    ks: Sequence[int],
    k: int,
    metrics_path: str | Path,
    plots_dir: str | Path,
    report_path: str | Path | None = None,
    token_bias: dict[str, list[dict[str, Any]]] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write metrics JSON, plots CSV + PNG and the markdown report; returns the paths written."""
    if not results:
        raise ValueError("no method to report on")
    plots_dir = Path(plots_dir)
    out: dict[str, Path] = {}
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": dataset, "split": split, "ranking": RANKING_NOTE, "methods": {m: scalar_metrics(v) for m, v in results.items()}}
    if token_bias:
        payload["token_bias"] = {m: {f"level{b['level'] + 1}": {"amp_top": b["amp_top"], "tv": b["tv"]} for b in tb} for m, tb in token_bias.items()}
    atomic_write_text(metrics_path, json.dumps(payload, indent=2) + "\n")
    out["metrics"] = metrics_path

    rows = []
    for m, r in results.items():
        if r.get(f"exposure@{k}") is None:
            continue
        for g, (e, h, gu) in enumerate(zip(r[f"exposure@{k}"], r["history_share"], r[f"GU@{k}"])):
            rows.append([m, g + 1, round(e, 6), round(h, 6), round(gu, 6)])
    _write_csv(plots_dir / "exposure.csv", ["method", "group", "exposure", "history_share", "gu"], rows)
    rows = [[m, part, r.get(f"HR_{part}@{k}"), r.get(f"NDCG_{part}@{k}"), r.get(f"n_{part}")] for m, r in results.items() for part in ("head", "tail")]
    _write_csv(plots_dir / "head_tail.csv", ["method", "part", "hr", "ndcg", "n"], rows)
    plot_exposure(results, k, plots_dir / "exposure.png")
    plot_head_tail(results, k, plots_dir / "head_tail.png")
    out.update({"exposure_csv": plots_dir / "exposure.csv", "head_tail_csv": plots_dir / "head_tail.csv", "exposure_png": plots_dir / "exposure.png", "head_tail_png": plots_dir / "head_tail.png"})
    if token_bias:
        rows = [
            [m, b["level"] + 1, g + 1, round(gs, 6), round(ts, 6)]
            for m, tb in token_bias.items()
            for b in tb
            for g, (gs, ts) in enumerate(zip(b["generated_share"], b["test_share"]))
        ]
        _write_csv(plots_dir / "token_bias.csv", ["method", "level", "group", "generated_share", "test_share"], rows)
        plot_token_bias(token_bias, plots_dir / "token_bias.png")
        out.update({"token_bias_csv": plots_dir / "token_bias.csv", "token_bias_png": plots_dir / "token_bias.png"})

    if report_path is not None:
        report_path = Path(report_path)
        any_r = next(iter(results.values()))
        md = [
            f"# Evaluation: {dataset} ({split})",
            "",
            f"{RANKING_NOTE} {any_r['n']:,} samples, {any_r['n_items']:,} items; head = top 20% items by training count "
            f"({any_r['n_head']:,} head / {any_r['n_tail']:,} tail targets). Popularity groups: {len(any_r['history_share'])} equal-size item groups by training count.",
            "",
            f"## Accuracy and bias @{k} (CRAB Table 1 layout)",
            "",
            markdown_table(results, k),
            "",
            "## Accuracy at every cutoff",
            "",
            accuracy_table(results, ks),
            "",
        ]
        if token_bias:
            md += ["## Token-level bias (share of the most popular token group: generated / test = amplification)", ""]
            methods = list(token_bias)
            md.append("| Level | " + " | ".join(methods) + " |")
            md.append("| --- |" + " --- |" * len(methods))
            for lvl in range(len(token_bias[methods[0]])):
                md.append(f"| {lvl + 1} | " + " | ".join(_fmt(token_bias[m][lvl]["amp_top"]) for m in methods) + " |")
            md.append("")
        md += [f"- {n}" for n in notes]
        rel = os.path.relpath(plots_dir, report_path.parent)
        md += ["", f"Plots: `{rel}/exposure.png`, `{rel}/head_tail.png`" + (f", `{rel}/token_bias.png`" if token_bias else "") + f" (relative to {report_path.name})."]
        report_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report_path, "\n".join(md) + "\n")
        out["report"] = report_path
    return out
