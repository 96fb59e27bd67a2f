"""Benchmark the CRAB split: a synthetic 1M-item codebook (3 levels x 256, shared codes, Zipf
popularity, 32-d embeddings) and Industrial with the MiniOneRec reference SIDs.

    python bench/rebalance_split.py [--n-items 1000000] [--skip-synthetic]

Prints and writes bench/results/rebalance_split.json (+ a PNG of Industrial's sorted token
popularity before/after). CPU figures; the split has no GPU path.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg  # noqa: F401  (load BLAS users before threadpool caps apply)
import sklearn.decomposition  # noqa: F401
import sklearn.feature_extraction.text  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.rebalancer import rebalance_codebook  # noqa: E402
from components.rebalancer.plots import plot_popularity  # noqa: E402
from components.rebalancer.residuals import text_embeddings  # noqa: E402
from tests.helpers_codebook import reference_codebook, synthetic_codebook  # noqa: E402


def _levels(res) -> dict:
    return {
        f"level_{b['level']}": {
            "vocab": [b["vocab"], a["vocab"]],
            "max": [b["max"], a["max"]],
            "top_share": [round(b["top_share"], 5), round(a["top_share"], 5)],
            "top10pct_share": [round(b["top10pct_share"], 5), round(a["top10pct_share"], 5)],
            "gini": [round(b["gini"], 5), round(a["gini"], 5)],
        }
        for b, a in zip(res.before[: res.semantic_levels], res.after[: res.semantic_levels])
    }


def bench_synthetic(n_items: int) -> dict:
    t0 = time.perf_counter()
    cb, counts, emb = synthetic_codebook(n_items, K=256, levels=3, d=32, seed=0)
    gen = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    res = rebalance_codebook(cb, counts, embeddings=emb, seed=0)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert res.codebook.n_collisions() == 0
    out = {"n_items": n_items, "generate_s": round(gen, 2), "rebalance_s": round(dt, 2), "rebalance_cpu_s": round(cpu, 2), "n_split_tokens": len(res.splits),
           "solvers": {s: sum(x.solver == s for x in res.splits) for s in ("exact", "local")}, "levels": _levels(res)}
    print(f"synthetic {n_items:,} items: rebalance {dt:.2f} s wall, {cpu:.2f} s CPU ({len(res.splits)} tokens split; generation {gen:.1f} s)")
    return out


def bench_industrial(out_dir: Path) -> dict:
    from components.data import load_minionerec

    d = ROOT.parent / "shared" / "data" / "Industrial_and_Scientific"
    ds = load_minionerec(d, name="industrial", max_history=10)
    cb = reference_codebook(d / "reference" / "minionerec.index.json", ds.item_ids)
    counts = ds.train_item_counts()
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(1):
        emb = text_embeddings(ds.item_text, dim=64, seed=2024)
    t_emb = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    res = rebalance_codebook(cb, counts, embeddings=emb)
    t_split, c_split = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    res2 = rebalance_codebook(cb, counts, item_text=ds.item_text)
    t_all = time.perf_counter() - t0
    assert np.array_equal(res.codebook.sids, res2.codebook.sids)
    assert res.codebook.n_collisions() == 0
    png = plot_popularity(res.popularity_before, res.popularity_after, range(3), out_dir / "rebalance_industrial_popularity.png",
                          title="Industrial (MiniOneRec SIDs): token popularity before / after CRAB")
    print(f"industrial: split {t_split:.2f} s wall ({c_split:.2f} s CPU), TF-IDF+SVD features {t_emb:.2f} s, end to end {t_all:.2f} s")
    lv = _levels(res)
    for k, v in lv.items():
        print(f"  {k}: vocab {v['vocab'][0]}->{v['vocab'][1]}  max {v['max'][0]}->{v['max'][1]}  top share "
              f"{v['top_share'][0]:.4f}->{v['top_share'][1]:.4f}  top-10% share {v['top10pct_share'][0]:.4f}->"
              f"{v['top10pct_share'][1]:.4f}  gini {v['gini'][0]:.4f}->{v['gini'][1]:.4f}")
    return {"split_s": round(t_split, 2), "split_cpu_s": round(c_split, 2), "features_s": round(t_emb, 2), "end_to_end_s": round(t_all, 2),
            "n_split_tokens": len(res.splits), "plot": str(png.relative_to(ROOT)), "levels": lv}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-items", type=int, default=1_000_000)
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"2-core CPU (dev box), {platform.processor() or platform.machine()}", "date": time.strftime("%Y-%m-%d"),
              "params": {"split_ratio": 0.1, "max_splits": 4, "lam": 1.0, "n_init": 4, "levels": "all semantic"}}
    result["industrial"] = bench_industrial(out_dir)
    if not args.skip_synthetic:
        result["synthetic"] = bench_synthetic(args.n_items)
    (out_dir / "rebalance_split.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_dir / 'rebalance_split.json'}")


if __name__ == "__main__":
    main()
