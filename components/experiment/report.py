"""The experiment report: every variant x seed evaluated on the same split, aggregated.

Writes (paths are arguments; `dvc repro` uses ``metrics/evaluation.json``, ``plots/evaluation/``,
``reports/evaluation.md``):

- metrics JSON: ``methods`` (mean of each scalar metric per variant: what ``dvc metrics diff``
  compares), ``std``, ``n_seeds``, ``per_seed``, ``change_vs`` (relative change vs the reference
  variant with the noise flag), ``paired_vs`` (the paired per-user bootstrap vs the reference:
  ``components.experiment.paired``), ``token_bias`` (per generative variant and SID level);
- plots: ``exposure.{csv,png}``, ``head_tail.{csv,png}`` (means over seeds),
  ``token_bias.{csv,png}`` (CARE Fig. 1, every generative variant on its own codebook),
  ``accuracy_bias.{csv,png}`` (HR@K vs DGU@K, one point per variant and seed);
- the markdown report: CRAB Table 1 layout with mean ± std, the change-vs-reference table, the
  paired per-user test, the accuracy table at every cutoff, token-level bias, and each run's training cost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from components.evaluation.bias import token_bias_from_topk
from components.evaluation.metrics import evaluate_topk
from components.evaluation.rankings import load_split_rankings
from components.evaluation.report import LOWER_IS_BETTER, RANKING_NOTE, TABLE_ROWS, _plt, _write_csv, plot_token_bias, scalar_metrics, write_report
from components.experiment.aggregate import aggregate, change_vs, fmt_change, fmt_mean_std
from components.experiment.paired import fmt_paired, paired_vs, per_user_stats
from components.registry import ArtifactNotFound, Registry
from components.registry.store import atomic_write_text


class ReportError(ValueError):
    """Nothing (or not enough) to report on."""


class Collected(NamedTuple):
    per_seed: dict[str, dict[int, dict[str, Any]]]        # variant -> seed -> metrics
    runs: dict[str, dict[int, Any]]                      # variant -> seed -> rankings artifact
    token_bias: dict[str, list[dict[str, Any]]]          # variant -> CARE Fig. 1 rows (first finished seed)
    missing: list[str]                                   # runs not finished or stale
    per_user: dict[str, dict[int, dict[str, np.ndarray]]]  # variant -> seed -> paired.per_user_stats @report_k
    train_counts: np.ndarray                             # training count per item


def collect(registry: Registry, experiment, variants: Sequence[str], seeds: Sequence[int], split: str, ev, allow_missing: bool = True):
    """Evaluate every finished (variant, seed) on ``split``: the latest rankings of each run whose
    ``run_key`` matches the current params and inputs (others are listed as missing or stale, never
    mixed in). Returns a :class:`Collected`."""
    from components.data.dataset import Dataset
    from components.tokenizer.codebook import Codebook

    ds_art = registry.load(experiment.dataset_ref)
    ds = Dataset.from_artifact(ds_art)
    counts = ds.train_item_counts()
    sp = ds.splits[split]
    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    runs: dict[str, dict[int, Any]] = {}
    token_bias: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    per_user: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    codebooks: dict[str, Any] = {}
    for v in variants:
        for seed in seeds:
            rs = experiment.spec(v, seed)
            try:
                art = registry.load(f"rankings/{rs.name}@latest")
            except ArtifactNotFound:
                missing.append(rs.name)
                continue
            if art.meta.get("run_key") != rs.key:  # made with other params / inputs than the current ones
                missing.append(f"{rs.name} (stale: made with other params or inputs; rerun it)")
                continue
            topk, tgts = load_split_rankings(art, split, sp.target, ds.n_items)
            if len(tgts) < len(sp):
                raise ReportError(f"{art.ref} ranked only {len(tgts):,} of {len(sp):,} {split} samples: an experiment column is on every sample "
                                  f"(set generator.decode.max_samples: 0 and rank again)")
            m = evaluate_topk(topk, tgts, counts, ks=ev.ks, n_groups=ev.n_groups, head_fraction=ev.head_fraction, orr_top=ev.orr_top)
            per_seed.setdefault(v, {})[seed] = m
            per_user.setdefault(v, {})[seed] = per_user_stats(topk, tgts, counts, ev.report_k, ev.n_groups)
            runs.setdefault(v, {})[seed] = art
            cb_ref = art.meta.get("codebook")
            if cb_ref and v not in token_bias:  # CARE Fig. 1 on the first finished seed
                if cb_ref not in codebooks:
                    codebooks[cb_ref] = Codebook.from_artifact(registry.load(cb_ref))
                token_bias[v] = token_bias_from_topk(codebooks[cb_ref], topk, tgts, counts, k=ev.token_k, n_groups=ev.token_groups)
    if missing and not allow_missing:
        raise ReportError(f"runs not finished: {missing}")
    if not per_seed:
        raise ReportError(f"no finished run among variants {list(variants)} x seeds {list(seeds)} (missing {missing[:6]}...)")
    return Collected(per_seed, runs, token_bias, missing, per_user, counts)


def _training(registry: Registry, rankings_art) -> dict[str, Any]:
    """Training summary of the checkpoint a generator's rankings came from ({} for baselines)."""
    ref = rankings_art.meta.get("checkpoint")
    if not ref:
        return {}
    try:
        m = registry.load(ref, verify=False).meta
    except ArtifactNotFound:
        return {}
    return {k: m.get(k) for k in ("epochs_run", "best_epoch", "stopped_early", "budget_hit")} if "epochs_run" in m else {}


def _mean_lists(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every metric (numbers and per-group lists), for the plots."""
    out: dict[str, Any] = {}
    for k, v in results[0].items():
        vals = [r.get(k) for r in results]
        if any(x is None for x in vals):
            out[k] = None
        elif isinstance(v, (list, tuple, np.ndarray)):
            out[k] = np.mean(np.asarray(vals, dtype=np.float64), axis=0).tolist()
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(np.mean(vals))
        else:
            out[k] = v
    return out


def plot_accuracy_bias(points: list[tuple[str, int, float, float]], k: int, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    variants = list(dict.fromkeys(p[0] for p in points))
    cmap = plt.get_cmap("tab20")
    for i, v in enumerate(variants):
        xs = [p[3] for p in points if p[0] == v]
        ys = [p[2] for p in points if p[0] == v]
        ax.scatter(xs, ys, color=cmap(i % 20), label=v, s=28)
    ax.set_xlabel(f"DGU@{k} (popularity bias, lower is fairer)")
    ax.set_ylabel(f"HR@{k} (accuracy)")
    ax.set_title(f"Accuracy vs popularity bias (@{k}), one point per variant and seed")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_experiment_report(registry: Registry, experiment, variants: Sequence[str], seeds: Sequence[int], *, ev, split: str,
                            metrics_path: str | Path, plots_dir: str | Path, report_path: str | Path, reference: str | None = None,
                            labels: dict[str, str] | None = None) -> dict[str, Path]:
    per_seed, runs, token_bias, missing, per_user, counts = collect(registry, experiment, variants, seeds, split, ev)
    k = ev.report_k
    names = [v for v in variants if v in per_seed]
    labels = {v: (labels or {}).get(v) or v for v in names}
    agg = {v: aggregate([per_seed[v][s] for s in sorted(per_seed[v])]) for v in names}
    ref = reference if reference in agg else None
    changes = change_vs(agg, ref, k) if ref else {}
    paired = {}
    if ref and ev.bootstrap > 0:
        stats = {v: [per_user[v][s] for s in sorted(per_user[v])] for v in names}
        paired = paired_vs(stats, ref, counts, k, ev.n_groups, n_resamples=ev.bootstrap)
    plots_dir, metrics_path, report_path = Path(plots_dir), Path(metrics_path), Path(report_path)

    means = {labels[v]: _mean_lists([per_seed[v][s] for s in sorted(per_seed[v])]) for v in names}
    written = write_report(means, dataset=experiment.dataset, split=split, ks=ev.ks, k=k, metrics_path=metrics_path,
                           plots_dir=plots_dir, report_path=None, token_bias=None)
    points = [(labels[v], s, per_seed[v][s][f"HR@{k}"], per_seed[v][s][f"DGU@{k}"]) for v in names for s in sorted(per_seed[v])]
    _write_csv(plots_dir / "accuracy_bias.csv", ["variant", "seed", f"hr@{k}", f"dgu@{k}"], [[a, b, round(c, 6), round(d, 6)] for a, b, c, d in points])
    plot_accuracy_bias(points, k, plots_dir / "accuracy_bias.png")
    written.update({"accuracy_bias_png": plots_dir / "accuracy_bias.png", "accuracy_bias_csv": plots_dir / "accuracy_bias.csv"})
    tb = {labels[v]: token_bias[v] for v in names if v in token_bias}
    if tb:
        rows = [[m, b["level"] + 1, g + 1, round(gs, 6), round(ts, 6)] for m, t in tb.items() for b in t
                for g, (gs, ts) in enumerate(zip(b["generated_share"], b["test_share"]))]
        _write_csv(plots_dir / "token_bias.csv", ["variant", "level", "group", "generated_share", "test_share"], rows)
        plot_token_bias(tb, plots_dir / "token_bias.png")
        written["token_bias_png"] = plots_dir / "token_bias.png"

    payload = {
        "dataset": experiment.dataset, "split": split, "ranking": RANKING_NOTE, "seeds": list(seeds), "reference": ref,
        "methods": {labels[v]: {m: s["mean"] for m, s in agg[v].items()} for v in names},
        "std": {labels[v]: {m: s["std"] for m, s in agg[v].items()} for v in names},
        "n_seeds": {labels[v]: len(per_seed[v]) for v in names},
        "per_seed": {labels[v]: {str(s): scalar_metrics(per_seed[v][s]) for s in sorted(per_seed[v])} for v in names},
        "change_vs": {labels[v]: c for v, c in changes.items()},
        "paired_vs": {labels[v]: c for v, c in paired.items()},
        "token_bias": {m: {f"level{b['level'] + 1}": {"amp_top": b["amp_top"], "tv": b["tv"]} for b in t} for m, t in tb.items()},
        "runs": {labels[v]: {str(s): {"rankings": a.ref, **{x: a.meta.get(x) for x in ("train_seconds", "wall_seconds", "rank_seconds", "run_seconds")},
                                      **_training(registry, a)}
                             for s, a in runs[v].items()} for v in names},
        "missing": missing,
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(metrics_path, json.dumps(payload, indent=2, default=float) + "\n")

    cols = [labels[v] for v in names]
    n_any = next(iter(per_seed[names[0]].values()))
    md = [f"# Evaluation: {experiment.dataset} ({split}), {len(cols)} methods x seeds {list(seeds)}", "",
          f"{RANKING_NOTE} Every column is on all {n_any['n']:,} {split} samples, {n_any['n_items']:,} items. Cells: mean ± sample std over "
          f"the seeds that finished (a single number = one seed). Head = top {ev.head_fraction:.0%} items by training count; "
          f"{ev.n_groups} equal-size popularity groups for DGU/MGU.", "",
          f"## Accuracy and bias @{k} (CRAB Table 1 layout)", "",
          "| Metric | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for r in TABLE_ROWS:
        key = f"{r}@{k}"
        if any(key in agg[v] for v in names):
            arrow = "↓" if r in LOWER_IS_BETTER else "↑"
            md.append(f"| {key} {arrow} | " + " | ".join(fmt_mean_std(agg[v].get(key)) for v in names) + " |")
    md.append("| seeds | " + " | ".join(str(len(per_seed[v])) for v in names) + " |")
    md.append("")
    if changes:
        cm = list(next(iter(changes.values())).keys()) if changes else []
        md += [f"## Change vs {labels[ref]} (relative change of the mean; n.s. = within 2 std of either, 1 seed = no std to judge)", "",
               "| Variant | " + " | ".join(cm) + " |", "| --- |" + " --- |" * len(cm)]
        for v, row in changes.items():
            md.append(f"| {labels[v]} | " + " | ".join(fmt_change(row.get(m)) for m in cm) + " |")
        md.append("")
    if paired:
        pm = list(next(iter(paired.values())).keys())
        first = next(iter(next(iter(paired.values())).values()))
        md += [f"## Paired per-user test vs {labels[ref]} (test-set sampling error: seeds averaged, {first['n_resamples']:,} bootstrap "
               f"resamples of the {first['n_users']:,} {split} users; relative change [95% interval]; n.s. = the interval includes 0)", "",
               "A difference is beyond noise when both this test and the seed test above say so: the seed std is the model's noise, "
               "this interval the noise of which users are in the split.", "",
               "| Variant | " + " | ".join(pm) + " |", "| --- |" + " --- |" * len(pm)]
        for v, row in paired.items():
            md.append(f"| {labels[v]} | " + " | ".join(fmt_paired(row.get(m)) for m in pm) + " |")
        md.append("")
    md += ["## Accuracy at every cutoff (mean over seeds)", "", "| Metric | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for name in ("HR", "NDCG"):
        for kk in ev.ks:
            md.append(f"| {name}@{kk} | " + " | ".join(fmt_mean_std(agg[v].get(f"{name}@{kk}")) for v in names) + " |")
    md.append("")
    if tb:
        L = max(len(t) for t in tb.values())
        md += ["## Token-level bias per SID level (share of the most popular token group, generated / test; 1 = no amplification)", "",
               "| Level | " + " | ".join(tb) + " |", "| --- |" + " --- |" * len(tb)]
        for lvl in range(L):
            md.append(f"| {lvl + 1} | " + " | ".join(f"{t[lvl]['amp_top']:.3f}" if len(t) > lvl else "n/a" for t in tb.values()) + " |")
        md.append("")
    md += ["## Runs (a run the wall-clock budget stopped says so: on a slower or loaded machine it trains fewer epochs)", "",
           "| Variant | seed | rankings | epochs (best) | stopped by | train s | wall s (train + valid) | rank s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in names:
        for s, a in sorted(runs[v].items()):
            t = _training(registry, a)
            why = "budget" if t.get("budget_hit") else ("patience" if t.get("stopped_early") else ("epochs" if t else ""))
            ep = f"{t['epochs_run']} ({t['best_epoch']})" if t else ""
            md.append(f"| {labels[v]} | {s} | `{a.ref}` | {ep} | {why} | {a.meta.get('train_seconds', '')} | {a.meta.get('wall_seconds', '')} | {a.meta.get('rank_seconds', '')} |")
    md.append("")
    if missing:
        md += [f"Not finished (left out): {', '.join(missing)}.", ""]
    rel = os.path.relpath(plots_dir, report_path.parent)
    md.append(f"Plots (relative to {report_path.name}): `{rel}/accuracy_bias.png`, `{rel}/exposure.png`, `{rel}/head_tail.png`"
              + (f", `{rel}/token_bias.png`" if tb else "") + ".")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_path, "\n".join(md) + "\n")
    written["report"] = report_path
    return written
