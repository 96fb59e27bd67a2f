"""Where a trained GenPlugin model's neighbours come from (issue 15): for every sample of a split,
the dual-path candidates (BM25 top-z, faiss top-z; the query user excluded) and the v users the
head keeps after its ID-view re-rank (§3.3), counted by path — BM25 only, faiss only, both — with
the per-query latency of each step (candidates, re-rank with the representation cache warm).

    python bench/genplugin_retrieval_share.py --registry artifacts --generator generator/industrial-tiger-genplugin@latest

Writes ``bench/results/genplugin_retrieval_share_<name>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from bench.common import write
    from components.data.dataset import Dataset
    from components.generator.recommend import Recommender
    from components.registry import Registry

    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", default="artifacts")
    ap.add_argument("--generator", required=True, help="a GenPlugin checkpoint with RAR")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--limit", type=int, default=0, help="first N samples (0 = all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    reg = Registry(args.registry)
    rec = Recommender.from_registry(reg, args.generator)
    head = rec.retrieval_head()
    if head is None:
        raise SystemExit(f"{args.generator} has no GenPlugin head with RAR")
    r = head.retriever()
    if r is None:
        raise SystemExit("the checkpoint's retrieval index is unavailable")
    ds = Dataset.from_artifact(reg.load(head.p.dataset))
    split = ds.splits[args.split]
    hists = split.histories()
    n = len(hists) if not args.limit else min(args.limit, len(hists))
    counts = {"bm25": 0, "cf": 0, "both": 0}
    pool = {"bm25": 0, "cf": 0, "both": 0}
    t_cand, t_rerank, kept = [], [], []
    for s in range(n):
        hist = hists[s][-rec.model.max_items :]
        user = r.user_index.get(ds.user_ids[int(split.user[s])], None)
        t0 = time.perf_counter()
        a, c, _ = r.candidates(history=hist, z=head.p.z, exclude_user=user)
        t1 = time.perf_counter()
        q = head._encode_users([hist])[0]
        chosen = head._rerank(r, hist, user, q)
        t2 = time.perf_counter()
        t_cand.append(t1 - t0)
        t_rerank.append(t2 - t1)
        sa, sc = set(a.tolist()), set(c.tolist())
        for u in sa | sc:
            pool["both" if u in sa and u in sc else ("bm25" if u in sa else "cf")] += 1
        for u in chosen:
            counts["both" if u in sa and u in sc else ("bm25" if u in sa else "cf")] += 1
        kept.append(len(chosen))
    total, ptotal = max(sum(counts.values()), 1), max(sum(pool.values()), 1)
    out = {
        "generator": rec_ref(reg, args.generator), "retrieval_index": head.p.retrieval_index, "split": args.split, "samples": n,
        "users_indexed": int(r.n_users), "z": head.p.z, "v": head.p.v,
        "kept_share": {k: v / total for k, v in counts.items()}, "kept_counts": counts,
        "candidate_share": {k: v / ptotal for k, v in pool.items()},
        "mean_kept": float(np.mean(kept)), "mean_candidates": ptotal / max(n, 1),
        "candidates_ms": _pct(t_cand), "rerank_ms": _pct(t_rerank),
    }
    write(f"genplugin_retrieval_share_{args.out or Path(args.generator.split('@')[0]).name}", out)


def _pct(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def rec_ref(reg, ref: str) -> str:
    return reg.load(ref, verify=False).ref


if __name__ == "__main__":
    main()
