"""Merge the per-seed metrics of several experiment reports into one comparison.

For runs of one protocol that ended up in different registries (a registry lost between sessions,
a GPU box and a CPU box): each input is the metrics JSON of ``genrec experiment report`` (its
``per_seed``). Inputs must agree on dataset, split and ranking protocol; a variant x seed present in
more than one input must have the same metrics in each (within ``--tol``), which doubles as a
reproducibility check: rerun one seed of a variant the older report holds, and the merge proves (or
refutes) that the two runs are the same computation. Aggregation and the noise flag are the
experiment's own (``components.experiment.aggregate``).

    python bench/merge_seed_results.py OLD.json NEW.json --reference tiger-genplugin \
        --columns tiger tiger-genplugin "GenPlugin w/o DSA" --out bench/results/x/merged
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.experiment.aggregate import CHANGE_METRICS, aggregate, change_vs, fmt_change, fmt_mean_std  # noqa: E402
from components.registry.store import atomic_write_text  # noqa: E402

PROTOCOL_KEYS = ("dataset", "split", "ranking")
TABLE_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "DGU@10", "MGU@10", "DivR@10", "ORR@10", "HR_head@10", "HR_tail@10",
                 "NDCG_head@10", "NDCG_tail@10", "coverage@10")


class MergeError(ValueError):
    pass


def merge(reports: Sequence[tuple[str, dict[str, Any]]], tol: float = 1e-9, tags: Sequence[str] | None = None
          ) -> tuple[dict[str, dict[str, dict[str, float]]], list[dict[str, Any]]]:
    """``(per_seed, reproduced)``: the union of the reports' ``per_seed``; ``reproduced`` lists each
    variant x seed found in more than one report with the largest metric difference seen. ``tags[i]``
    is appended to every variant label of report ``i`` (keeps runs of different machines apart)."""
    if tags is not None and len(tags) != len(reports):
        raise MergeError(f"{len(tags)} tags for {len(reports)} reports")
    if not reports:
        raise MergeError("no report to merge")
    first_name, first = reports[0]
    for name, r in reports:
        if "per_seed" not in r:
            raise MergeError(f"{name}: no 'per_seed' (not a `genrec experiment report` metrics JSON)")
        for k in PROTOCOL_KEYS:
            if r.get(k) != first.get(k):
                raise MergeError(f"{name}: {k} {r.get(k)!r} differs from {first_name}'s {first.get(k)!r}")
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    source: dict[tuple[str, str], str] = {}
    reproduced = []
    for i, (name, r) in enumerate(reports):
        for label, seeds in r["per_seed"].items():
            variant = label + (tags[i] if tags else "")
            for seed, metrics in seeds.items():
                have = per_seed.setdefault(variant, {}).get(seed)
                if have is None:
                    per_seed[variant][seed] = metrics
                    source[variant, seed] = name
                    continue
                common = [k for k in have if k in metrics and isinstance(have[k], (int, float)) and isinstance(metrics[k], (int, float))]
                if not common:
                    raise MergeError(f"{variant} seed {seed}: no metric in common between {source[variant, seed]} and {name}")
                worst = max(common, key=lambda k: abs(have[k] - metrics[k]))
                diff = abs(have[worst] - metrics[worst])
                if diff > tol:
                    raise MergeError(f"{variant} seed {seed} differs between {source[variant, seed]} and {name}: {worst} "
                                     f"{have[worst]!r} vs {metrics[worst]!r} (|diff| {diff:.3g} > tol {tol:g}); not the same computation")
                reproduced.append({"variant": variant, "seed": seed, "in": [source[variant, seed], name], "max_abs_diff": diff,
                                   "metrics_compared": len(common)})
    return per_seed, reproduced


def summarize(per_seed: dict[str, dict[str, dict[str, float]]], columns: Sequence[str], reference: str, k: int = 10) -> dict[str, Any]:
    missing = [c for c in [*columns, reference] if c not in per_seed]
    if missing:
        raise MergeError(f"no results for {missing} (have {sorted(per_seed)})")
    agg = {c: aggregate([per_seed[c][s] for s in sorted(per_seed[c])]) for c in dict.fromkeys([*columns, reference])}
    return {"agg": agg, "change_vs": change_vs(agg, reference, k)}


def markdown(summary: dict[str, Any], columns: Sequence[str], reference: str, k: int = 10) -> str:
    agg, changes = summary["agg"], summary["change_vs"]
    out = ["| | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for m in TABLE_METRICS:
        out.append(f"| {m} | " + " | ".join(fmt_mean_std(agg[c].get(m)) for c in columns) + " |")
    out.append("| seeds | " + " | ".join(str(agg[c][f"HR@{k}"]["n"]) for c in columns) + " |")
    keys = [f"{m}@{k}" for m in CHANGE_METRICS]
    out += ["", f"Change vs {reference} (n.s. = within 2 std of either):", "", "| | " + " | ".join(keys) + " |",
            "| --- |" + " --- |" * len(keys)]
    for c in columns:
        if c != reference:
            out.append(f"| {c} | " + " | ".join(fmt_change(changes[c].get(key)) for key in keys) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="metrics JSONs of `genrec experiment report`")
    ap.add_argument("--columns", nargs="+", required=True, help="variant labels (as in per_seed), in table order")
    ap.add_argument("--reference", required=True, help="variant label the change table compares with")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-9, help="largest metric difference accepted for a variant x seed in two reports")
    ap.add_argument("--tags", nargs="+", default=None,
                    help="one suffix per report appended to its variant labels ('' = none): runs of different machines stay apart")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md (default: print the markdown)")
    args = ap.parse_args(argv)
    try:
        reports = [(p, json.loads(Path(p).read_text())) for p in args.reports]
        per_seed, reproduced = merge(reports, args.tol, args.tags)
        summary = summarize(per_seed, args.columns, args.reference, args.k)
    except (OSError, json.JSONDecodeError, MergeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = markdown(summary, args.columns, args.reference, args.k)
    if reproduced:
        md += "\nReproduced across reports (same variant x seed): " + "; ".join(
            f"{r['variant']} seed {r['seed']} (max |diff| {r['max_abs_diff']:.1g} over {r['metrics_compared']} metrics)" for r in reproduced) + "\n"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        first = reports[0][1]
        payload = {**{k: first.get(k) for k in PROTOCOL_KEYS}, "inputs": [p for p, _ in reports], "tags": args.tags, "reference": args.reference,
                   "methods": {c: {m: s["mean"] for m, s in summary["agg"][c].items()} for c in args.columns},
                   "std": {c: {m: s["std"] for m, s in summary["agg"][c].items()} for c in args.columns},
                   "n_seeds": {c: len(per_seed[c]) for c in args.columns},
                   "per_seed": {c: per_seed[c] for c in args.columns}, "change_vs": summary["change_vs"], "reproduced": reproduced}
        atomic_write_text(out.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
