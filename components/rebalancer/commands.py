"""``genrec rebalance``: the DVC ``rebalance`` stage (CRAB codebook rebalancing)."""

from __future__ import annotations

from components.registry.store import write_json_atomic as _write_json


def register(sub) -> None:
    r = sub.add_parser("rebalance", help="split over-popular codebook tokens (CRAB) and write codebook/<dataset>-crab")
    r.add_argument("--codebook", default=None, help="input codebook name or ref (default: rebalance.codebook param)")
    r.add_argument("--name", default=None, help="output codebook name (default: rebalance.name or <dataset>-crab)")
    r.add_argument("--metrics-out", default=None, help="write before/after statistics JSON here (a DVC metric)")
    r.add_argument("--plot-out", default=None, help="write a PNG of sorted token popularity before/after here")
    r.add_argument("--csv-out", default=None, help="write sorted token popularity before/after as CSV (DVC plot)")
    r.add_argument("--progress", action="store_true", help="progress bars")
    r.set_defaults(func=cmd_rebalance)


def cmd_rebalance(args, ctx) -> int:
    from components.rebalancer.pipeline import run_rebalance
    from components.rebalancer.plots import plot_popularity, write_popularity_csv

    p = ctx.params
    rp = p.rebalance
    updates = {k: v for k, v in (("codebook", args.codebook), ("name", args.name)) if v}
    if updates:
        rp = rp.model_copy(update=updates)
    out = run_rebalance(ctx.registry, rp, p.data.dataset, seed=p.seed, progress=args.progress)
    if out.result is None:
        print(f"rebalance disabled: {out.metrics['input']} passed through as {out.artifact.ref}")
    else:
        source = out.result.feature_source + (f" {out.metrics['embeddings']}" if out.metrics.get("embeddings") else "")
        print(f"wrote {out.artifact.ref} (sizes {out.result.codebook.sizes}, features: {source})")
        for lvl, row in out.metrics["levels"].items():
            if int(lvl.split("_")[1]) not in out.plot_levels:
                continue
            print(f"  {lvl}: top share {row['top_share_before']:.4f} -> {row['top_share_after']:.4f}, "
                  f"gini {row['gini_before']:.4f} -> {row['gini_after']:.4f}, vocab {row['vocab_before']} -> {row['vocab_after']}")
    if args.metrics_out:
        _write_json(args.metrics_out, out.metrics)
    if args.plot_out:
        plot_popularity(out.popularity_before, out.popularity_after, out.plot_levels, args.plot_out)
    if args.csv_out:
        write_popularity_csv(out.popularity_before, out.popularity_after, out.plot_levels, args.csv_out)
    return 0
