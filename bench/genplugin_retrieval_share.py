"""Where a trained GenPlugin model's neighbours come from (issue 15): for every sample of a split,
the dual-path candidates (BM25 top-z, faiss top-z; the query user excluded) and the v users the
head keeps after its ID-view re-rank (§3.3), counted by path — BM25 only, faiss only, both — with
the per-query latency of each step (candidates, re-rank with the representation cache warm), and
the time of the same queries' candidates asked one at a time vs in batches (``candidates_batch``,
what RAR does per training / ranking batch).

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
    ap.add_argument("--batch-rounds", type=int, default=3, help="rounds of the batched vs one-at-a-time candidates timing (0 = skip)")
    ap.add_argument("--batch-size", type=int, default=256, help="queries per candidates_batch call (the training batch)")
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
        chosen = head._rerank(r, a, c, q)
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
    if args.batch_rounds:
        qs = [hists[s][-rec.model.max_items :] for s in range(n)]
        users = [r.user_index.get(ds.user_ids[int(split.user[s])], None) for s in range(n)]
        out["batched_candidates"] = batched_vs_one_at_a_time(r, qs, users, head.p.z, args.batch_size, args.batch_rounds)
        print("candidates, one query at a time vs batched:", out["batched_candidates"])
    write(f"genplugin_retrieval_share_{args.out or Path(args.generator.split('@')[0]).name}", out)


def batched_vs_one_at_a_time(r, qs: list, users: list, z: int, batch: int, rounds: int) -> dict:
    """Seconds for the candidates of every query: ``candidates`` per query vs ``candidates_batch``
    per ``batch`` queries (what RAR asks for a training or ranking batch), interleaved rounds,
    medians; the two must return the same BM25 lists."""
    one, many = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        single = [r.candidates(history=h, z=z, exclude_user=u) for h, u in zip(qs, users)]
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched = [x for s in range(0, len(qs), batch) for x in r.candidates_batch(qs[s : s + batch], z=z, exclude_users=users[s : s + batch])]
        many.append(time.perf_counter() - t0)
    same = sum(a.tolist() == b[0].tolist() for (a, _, _), b in zip(single, batched))
    o, m = float(np.median(one)), float(np.median(many))
    return {"queries": len(qs), "batch": batch, "rounds": rounds, "one_at_a_time_s": o, "batched_s": m, "speedup": o / m,
            "same_bm25_lists": same, "user_vectors": r.user_vectors_kind}


def _pct(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def rec_ref(reg, ref: str) -> str:
    return reg.load(ref, verify=False).ref


if __name__ == "__main__":
    main()
