"""``genrec baselines`` (train / rank with the classical baselines) and ``genrec evaluate`` (the report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.dataset import Dataset
from components.evaluation.baselines import (
    SASRec,
    SASRecConfig,
    TrainConfig,
    most_popular_topk,
    popularity_penalty,
    popularity_weights,
    train_sasrec,
)
from components.evaluation.baselines.rerank import select_gamma
from components.evaluation.baselines.sasrec import TrainResult
from components.evaluation.bias import token_bias_from_topk
from components.evaluation.metrics import evaluate_topk
from components.evaluation.rankings import KIND, load_split_rankings, rankings_name, save_rankings
from components.evaluation.report import RANKING_NOTE, write_report
from components.registry.store import atomic_write_text

log = logging.getLogger(__name__)


def register(sub) -> None:
    b = sub.add_parser("baselines", help="train SASRec (+RW) and write rankings/<dataset>-<method> for the classical baselines")
    b.add_argument("--methods", nargs="+", default=None, help="override evaluation.baselines.methods")
    b.add_argument("--reuse-models", action="store_true", help="rank with the stored model/<dataset>-sasrec[-rw]@latest instead of training")
    b.add_argument("--summary-out", default=None, help="write valid/test HR@10, NDCG@10 and training curves as JSON")
    b.set_defaults(func=cmd_baselines)

    e = sub.add_parser("evaluate", help="accuracy + popularity-bias report over the rankings listed in evaluation.rankings")
    e.add_argument("--rankings", nargs="+", default=None, help="override evaluation.rankings (method names)")
    e.add_argument("--codebook", default=None, help="codebook ref for the token-level bias plot (default: evaluation.codebook)")
    e.add_argument("--split", default=None, choices=["valid", "test"], help="override evaluation.split")
    e.add_argument("--metrics-out", default="metrics/evaluation.json", help="DVC metrics JSON (default: metrics/evaluation.json)")
    e.add_argument("--plots-dir", default="plots/evaluation", help="plots CSV + PNG directory (default: plots/evaluation)")
    e.add_argument("--report", default="reports/evaluation.md", help="markdown report (default: reports/evaluation.md)")
    e.set_defaults(func=cmd_evaluate)


def _dataset(ctx) -> tuple[Dataset, str]:
    art = ctx.registry.load(f"dataset/{ctx.params.data.dataset}@latest")
    return Dataset.from_artifact(art), art.ref


def _sasrec_configs(params, ds: Dataset, seed: int) -> tuple[SASRecConfig, TrainConfig]:
    p = params.evaluation.baselines.sasrec
    mc = SASRecConfig(
        n_items=ds.n_items, max_len=p.max_len or ds.max_history, d_model=p.d_model, n_layers=p.n_layers, n_heads=p.n_heads, dropout=p.dropout
    )
    tc = TrainConfig(
        epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, patience=p.patience,
        seed=seed, max_minutes=p.max_minutes, num_threads=p.num_threads,
    )
    return mc, tc


def cmd_baselines(args, ctx) -> int:
    summary = run_baselines(ctx.registry, ctx.params, args.methods or ctx.params.evaluation.baselines.methods,
                            reuse_models=args.reuse_models)
    if args.summary_out:
        Path(args.summary_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.summary_out), json.dumps(summary, indent=2) + "\n")
    return 0


def _reusable_sasrec(registry, name: str, params: dict[str, Any], dataset_ref: str):
    """The stored SASRec model ``model/<name>@latest`` if it was trained on ``dataset_ref`` with exactly ``params``."""
    from components.registry import ArtifactNotFound

    try:
        art = registry.load(f"model/{name}@latest")
    except ArtifactNotFound:
        return None
    same = json.dumps(art.params, sort_keys=True, default=str) == json.dumps(params, sort_keys=True, default=str)
    return art if same and dataset_ref in art.manifest.parents else None


def baseline_run_key(method: str, seed: int, dataset_ref: str, params) -> str:
    """What determines a baseline's rankings (an experiment skips a run whose rankings carry this key)."""
    import hashlib

    ev = params.evaluation
    obj = {"method": method, "seed": seed, "dataset": dataset_ref, "baselines": ev.baselines.model_dump(mode="json"), "topk": max(ev.topk, max(ev.ks))}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_baselines(registry, params, methods: list[str], *, seed: int | None = None, suffix: str = "", reuse_models: bool = False,
                  t0: float | None = None) -> dict[str, Any]:
    """Fit and rank the classical baselines ``methods`` with ``seed`` (default: params.seed); write
    ``rankings/<dataset>-<method><suffix>`` and ``model/<dataset>-sasrec[-rw]<suffix>``. SASRec+RR
    alone reuses a stored SASRec trained with the same params and seed. Returns the summary."""
    import time

    t0 = time.perf_counter() if t0 is None else t0
    all_params = params
    seed = params.seed if seed is None else seed
    ev = params.evaluation
    bp = ev.baselines
    ds_art = registry.load(f"dataset/{params.data.dataset}@latest")
    ds, ds_ref = Dataset.from_artifact(ds_art), ds_art.ref
    counts = ds.train_item_counts()
    K = max(ev.topk, max(ev.ks))
    splits = {s: ds.splits[s] for s in ("valid", "test")}
    summary: dict[str, Any] = {"dataset": ds_ref, "k": K, "seed": seed, "ranking": RANKING_NOTE, "methods": {}}
    base_params = {"seed": seed, "topk": K}

    def record(method: str, topk: dict[str, np.ndarray], parents: list[str], params: dict[str, Any], scores=None, extra=None) -> None:
        meta = {"seed": seed, "variant": method, "run_seconds": round(time.perf_counter() - t0, 1),
                "run_key": baseline_run_key(method, seed, ds_ref, all_params)}
        art = save_rankings(registry, ds.name, method + suffix, topk, ds.n_items, parents=parents, params=params, scores=scores, meta=meta)
        kk = min(ev.report_k, K)
        row = {s: {m: evaluate_topk(topk[s], splits[s].target, counts, ks=(kk,))[m] for m in (f"HR@{kk}", f"NDCG@{kk}")} for s in topk}
        summary["methods"][method] = {"rankings": art.ref, **row, **(extra or {})}
        print(f"{art.ref}: " + " | ".join(f"{s} " + " ".join(f"{m} {v:.4f}" for m, v in r.items()) for s, r in row.items()))

    if "popular" in methods:
        record("popular", {s: most_popular_topk(counts, len(sp), K) for s, sp in splits.items()}, [ds_ref], base_params)

    mc, tc = _sasrec_configs(params, ds, seed)
    sasrec_params = {**base_params, "sasrec": bp.sasrec.model_dump(mode="json")}
    for variant, weights in (("sasrec", None), ("sasrec-rw", "rw")):
        wanted = [m for m in methods if m == variant or (variant == "sasrec" and m == "sasrec-rr")]
        if not wanted:
            continue
        iw = popularity_weights(counts, bp.rw_power) if weights else None
        mparams = {**sasrec_params, **({"rw_power": bp.rw_power} if weights else {})}
        model_name = f"{ds.name}-{variant}{suffix}"
        model_art = registry.load(f"model/{model_name}@latest") if reuse_models else \
            (_reusable_sasrec(registry, model_name, mparams, ds_ref) if variant not in methods else None)
        if model_art is not None:
            cfg = model_art.load_json("config.json")
            res = TrainResult(SASRec.from_artifact(model_art), cfg.get("history", []), cfg.get("best_epoch", 0), cfg.get("best_valid_ndcg10", 0.0), 0.0)
        else:
            res = train_sasrec(ds.train_sequences(), splits["valid"].history, splits["valid"].target, mc, tc, item_weights=iw)
            model_art = res.model.save(
                registry, model_name, parents=[ds_ref], params=mparams,
                extra={"train": tc.__dict__, "history": res.history, "best_epoch": res.best_epoch, "best_valid_ndcg10": res.best_valid_ndcg10},
            )
        extra = {"model": model_art.ref, "best_epoch": res.best_epoch, "epochs_run": len(res.history), "train_seconds": round(res.seconds, 1), "curve": res.history}
        print(f"{model_art.ref}: best epoch {res.best_epoch}/{len(res.history)}, valid NDCG@10 {res.best_valid_ndcg10:.4f}, {res.seconds:.0f}s")
        if variant in methods:
            out = {s: res.model.score_topk(sp.history, K) for s, sp in splits.items()}
            record(variant, {s: o[0] for s, o in out.items()}, [ds_ref, model_art.ref], mparams, scores={s: o[1] for s, o in out.items()}, extra=extra)
        if variant == "sasrec" and "sasrec-rr" in methods:
            gamma, sweep = bp.rr_gamma, None
            if gamma == "auto":
                vs = torch.from_numpy(res.model.encode(splits["valid"].history)) @ torch.from_numpy(res.model.item_embeddings()).T
                gamma, sweep = select_gamma(vs, splits["valid"].target, counts, bp.rr_grid, k=10, n_groups=ev.n_groups, max_ndcg_drop=bp.rr_max_ndcg_drop)
                print(f"RR: gamma {gamma} chosen on valid (lowest DGU@10 within {bp.rr_max_ndcg_drop:.0%} of the NDCG@10 at gamma 0)")
            pen = torch.from_numpy(popularity_penalty(counts, gamma))
            out = {s: res.model.score_topk(sp.history, K, adjust=lambda x: x - pen) for s, sp in splits.items()}
            record("sasrec-rr", {s: o[0] for s, o in out.items()}, [ds_ref, model_art.ref], {**mparams, "rr_gamma": bp.rr_gamma, "rr_grid": bp.rr_grid},
                   scores={s: o[1] for s, o in out.items()}, extra={"model": model_art.ref, "rr_gamma": gamma, "rr_valid_sweep": sweep})
    return summary


def cmd_evaluate(args, ctx) -> int:
    from components.tokenizer.codebook import Codebook

    ev = ctx.params.evaluation
    methods = args.rankings or ev.rankings
    split = args.split or ev.split
    ds, ds_ref = _dataset(ctx)
    counts = ds.train_item_counts()
    sp = ds.splits[split]
    results, topks, tgts, partial = {}, {}, {}, []
    for m in methods:
        art = ctx.registry.load(f"{KIND}/{rankings_name(ds.name, m)}@latest")
        topks[m], tgts[m] = load_split_rankings(art, split, sp.target, ds.n_items)
        if len(tgts[m]) < len(sp):
            partial.append(f"{m} ranked only the first {len(tgts[m]):,} of {len(sp):,} {split} samples: its column is on that subset.")
        results[m] = evaluate_topk(topks[m], tgts[m], counts, ks=ev.ks, n_groups=ev.n_groups, head_fraction=ev.head_fraction, orr_top=ev.orr_top)
        log.info("%s: %s", art.ref, {k: round(results[m][k], 4) for k in (f"HR@{ev.report_k}", f"NDCG@{ev.report_k}") if k in results[m]})
    tb = None
    cb_ref = args.codebook or ev.codebook
    if cb_ref:
        cb_art = ctx.registry.load(cb_ref)
        cb = Codebook.from_artifact(cb_art)
        cb.check_dataset(ds_ref, ds.n_items)
        tb = {m: token_bias_from_topk(cb, t, tgts[m], counts, k=ev.token_k, n_groups=ev.token_groups) for m, t in topks.items()}
    notes = [f"dataset {ds_ref}; metrics: components/evaluation/metrics.py (formulas in its docstring)."] + partial
    if cb_ref:
        notes.append(f"token bias: codebook {cb_ref}, generated tokens = SIDs of each method's top-{ev.token_k} items, {ev.token_groups} token groups per level.")
    written = write_report(
        results, dataset=ds.name, split=split, ks=ev.ks, k=ev.report_k, metrics_path=args.metrics_out, plots_dir=args.plots_dir,
        report_path=args.report, token_bias=tb, notes=notes,
    )
    from components.evaluation.report import markdown_table

    print(markdown_table(results, ev.report_k))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0
