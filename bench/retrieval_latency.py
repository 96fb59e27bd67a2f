"""Retrieval latency per query (p50/p99) for BM25, faiss and the merged path, on CPU.

Industrial (7,694 users; item vectors: TF-IDF + SVD, 64-d) and a synthetic scale-up to 35k users
(the Industrial users replicated with shuffled histories). Also the speed ratio of our sparse BM25
against rank_bm25's own ``get_scores`` on identical queries (scores checked equal).

    python -m bench.retrieval_latency [--data ../shared/data/Industrial_and_Scientific] [--queries 300]
"""

from __future__ import annotations

import argparse

import numpy as np
from rank_bm25 import BM25Okapi
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from bench.common import latencies_ms, write
from components.data import load_minionerec
from components.retrieval import UserRetriever


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/Industrial_and_Scientific")
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    ds = load_minionerec(args.data, name="industrial")
    texts = [" ".join(r.get(f, "") for f in ("title", "brand", "categories")) for r in ds.item_text]
    iv = TruncatedSVD(64, random_state=0).fit_transform(TfidfVectorizer(min_df=2).fit_transform(texts)).astype(np.float32)
    r = UserRetriever.build(ds, iv)
    users = [u for u, h in enumerate(r.train_histories) if h]
    rng = np.random.default_rng(0)
    q = [int(u) for u in rng.choice(users, args.queries, replace=False)]
    out = {"users": r.n_users, "queries": len(q)}
    none = np.zeros(r.n_users, dtype=bool)

    def toks(u):
        return r._query(u, None)[1]

    out["bm25"] = latencies_ms(lambda u: r.bm25_top(toks(u), 20, none), q)
    out["faiss_flat"] = latencies_ms(lambda u: r.cf_top(r.user_vectors[u], 20, none), q)
    out["merged"] = latencies_ms(lambda u: r.similar_users(user=u, z=20, v=10), q)

    lib = BM25Okapi([[t for i in h for t in r.item_tokens[i]] for h in r.train_histories])
    sample = q[:30]
    for u in sample[:3]:
        np.testing.assert_allclose(lib.get_scores(toks(u)), r.bm25.scores(toks(u)), rtol=1e-9, atol=1e-9)
    lib_ms = latencies_ms(lambda u: lib.get_scores(toks(u)), sample, warmup=1)
    ours_ms = latencies_ms(lambda u: r.bm25.scores(toks(u)), sample, warmup=1)
    out["bm25_scoring_rank_bm25_vs_sparse"] = {"rank_bm25_p50_ms": lib_ms["p50_ms"], "sparse_p50_ms": ours_ms["p50_ms"], "speedup": lib_ms["p50_ms"] / ours_ms["p50_ms"]}

    # synthetic scale-up: 35k users (Industrial histories resampled)
    from components.data.dataset import Dataset, Split

    hist = [r.train_histories[u] for u in rng.choice(users, 35_000)]
    big = Dataset(
        name="synthetic-35k", item_ids=ds.item_ids, item_text=ds.item_text, user_ids=[f"s{k}" for k in range(len(hist))],
        sequences=hist, splits={"train": Split.from_lists(range(len(hist)), [h[:-1] for h in hist], [h[-1] for h in hist], 10),
                                "valid": Split.from_lists([], [], [], 10), "test": Split.from_lists([], [], [], 10)}, max_history=10,
    )
    for kind in ("flat", "hnsw"):
        rb = UserRetriever.build(big, iv, index_kind=kind)
        qb = [int(u) for u in rng.choice(len(hist), args.queries, replace=False)]
        out[f"35k_merged_{kind}"] = latencies_ms(lambda u: rb.similar_users(user=u, z=20, v=10), qb)
    write("retrieval_latency", out)


if __name__ == "__main__":
    main()
