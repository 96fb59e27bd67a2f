"""Retrieval at 10^6 users: faiss flat / HNSW / IVF / IVF-PQ and the chunked BM25 matrix, one run.

    OMP_NUM_THREADS=1 taskset -c 1 python -m bench.retrieval_scale [--users 1000000] [--queries 1000]

Synthetic data: user vectors ``d = 64``, a mixture of 2,000 Gaussian clusters (L2-normalised, as
:func:`~components.retrieval.vectors.build_faiss` does); queries are fresh draws from the same
mixture. BM25 pseudo-documents: ``1 + Poisson(9)`` tokens from a Zipf(1.1) vocabulary of 50,000
terms, produced lazily per chunk (the corpus is never held as Python lists).

Per index (built by :func:`build_faiss`, except ``ivfpq``, a bench-only ``IndexIVFPQ``): build
time, memory (serialized bytes and RSS growth), recall against exact ``flat`` search —
``recall@v`` = |top-z of the index ∩ exact top-v| / v with ``v = 10``, ``z = 20`` (the retriever
asks each path for ``z`` candidates and keeps ``v``), and ``10@10`` — and single-query latency
p50/p99 at one thread. BM25: chunked :meth:`SparseBM25.fit` time / peak RSS in a subprocess, on the
lazy corpus (``chunked-lazy``) and on a list-of-lists corpus (``chunked-list``; the list itself is
not counted), and the former ``rank_bm25``-based :meth:`fit_reference` at ``--ref-users`` for
comparison; matrix bytes and top-``z`` query latency (scores + partial sort, 1 thread). Writes ``bench/results/retrieval_scale/retrieval_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "retrieval_scale"
VOCAB = 50_000


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LazyCorpus:
    """``n`` documents of Zipf-distributed tokens, materialised as lists of strings per slice."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lens = 1 + rng.poisson(9, n)
        self.off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.lens, out=self.off[1:])
        p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
        self.tok = rng.choice(VOCAB, int(self.off[-1]), p=p / p.sum()).astype(np.int32)
        self.words = [f"t{i}" for i in range(VOCAB)]

    def __len__(self) -> int:
        return len(self.lens)

    def doc(self, i: int) -> list[str]:
        w = self.words
        return [w[t] for t in self.tok[self.off[i] : self.off[i + 1]].tolist()]

    def __getitem__(self, s):
        if isinstance(s, slice):
            return [self.doc(i) for i in range(*s.indices(len(self)))]
        return self.doc(int(s))


def _bm25_child(n: int, how: str, chunk: int) -> dict:
    from components.retrieval.bm25 import SparseBM25

    corpus = LazyCorpus(n)
    if how != "chunked-lazy":  # the corpus as lists of strings, as UserRetriever.build passes it (not timed)
        corpus = corpus[0 : len(corpus)]
    base = _peak_mb()
    rss0 = _rss_now_mb()
    t, c = time.perf_counter(), time.process_time()
    if how.startswith("chunked"):
        m = SparseBM25.fit(corpus, chunk=chunk)
    else:
        m = SparseBM25.fit_reference(corpus)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    w = m.weights
    return {"users": n, "fit": how, "chunk": chunk if how.startswith("chunked") else None, "fit_s": round(dt, 2), "fit_cpu_s": round(cpu, 2), "nnz": int(w.nnz), "vocab": len(m.vocab),
            "matrix_mb": round((w.data.nbytes + w.indices.nbytes + w.indptr.nbytes) / 2**20, 1),
            "rss_before_fit_mb": round(rss0), "peak_rss_mb": round(_peak_mb()), "peak_before_fit_mb": round(base),
            "peak_minus_before_fit_mb": round(_peak_mb() - rss0)}


def _mixture(n: int, d: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(got: np.ndarray, exact: np.ndarray, v: int) -> float:
    return float(np.mean([len(set(g.tolist()) & set(e[:v].tolist())) / v for g, e in zip(got, exact)]))


def _pct(wall: list[float], cpu: list[float]) -> dict:
    w, c = np.asarray(wall), np.asarray(cpu)
    return {"p50_ms": round(float(np.percentile(w, 50)), 3), "p99_ms": round(float(np.percentile(w, 99)), 3),
            "cpu_p50_ms": round(float(np.percentile(c, 50)), 3), "cpu_p99_ms": round(float(np.percentile(c, 99)), 3)}


def _latency(index, q: np.ndarray, k: int) -> dict:
    """Single-query wall and thread-CPU latency (faiss at one OpenMP thread runs in this thread)."""
    wall, cpu = [], []
    for i in range(min(5, len(q))):
        index.search(q[i : i + 1], k)
    for i in range(len(q)):
        t, c = time.perf_counter(), time.thread_time()
        index.search(q[i : i + 1], k)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - t) * 1000)
    return _pct(wall, cpu)


def _save(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"retrieval_scale{'' if res['users'] == 1_000_000 else '_' + str(res['users'])}{res.get('tag', '')}.json").write_text(json.dumps(res, indent=2) + "\n")


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.retrieval_scale", *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--bm25-queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--v", type=int, default=10)
    ap.add_argument("--z", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--ref-users", type=int, default=200_000, help="users for the rank_bm25-based reference fit (0 = skip)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--pq-m", type=int, default=16)
    ap.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw", help="faiss indexes to build (flat is always searched for the exact answer)")
    ap.add_argument("--skip-bm25", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the results file (e.g. to run hnsw in a separate process)")
    ap.add_argument("--bm25-child", nargs=3, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bm25_child:
        sys.path.insert(0, str(ROOT))
        n, how, chunk = a.bm25_child
        print(json.dumps(_bm25_child(int(n), how, int(chunk))))
        return
    import faiss

    from components.retrieval.bm25 import SparseBM25
    from components.retrieval.retriever import _top
    from components.retrieval.vectors import build_faiss, serialize

    faiss.omp_set_num_threads(1)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("load before:", load, flush=True)
    res: dict = {"machine": "2-core AMD EPYC CPU (dev box, shared; pinned to 1 core, 1 thread)", "host": platform.node(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uptime_before": load, "users": a.users, "dim": a.dim,
                 "queries": a.queries, "v": a.v, "z": a.z, "faiss_version": faiss.__version__, "tag": a.tag}

    # ---- BM25 matrix: fit in subprocesses (own peak RSS) ------------------------------------------
    kinds = a.kinds.split(",")
    res["bm25_fit"] = []
    for how in () if a.skip_bm25 else ("chunked-lazy", "chunked-list"):
        res["bm25_fit"].append(_child(["--bm25-child", str(a.users), how, str(a.chunk)]))
        print("bm25", res["bm25_fit"][-1], flush=True)
        _save(res)
    if a.ref_users and not a.skip_bm25:
        for how in ("chunked-list", "reference"):
            res["bm25_fit"].append(_child(["--bm25-child", str(a.ref_users), how, str(a.chunk)]))
            print("bm25", res["bm25_fit"][-1], flush=True)

    # ---- BM25 query latency at full size ---------------------------------------------------------
    corpus = LazyCorpus(a.users) if not a.skip_bm25 else None
    t = time.perf_counter()
    bm = SparseBM25.fit(corpus, chunk=a.chunk) if corpus is not None else None
    res["bm25_fit_in_process_s"] = round(time.perf_counter() - t, 2)
    rng = np.random.default_rng(1)
    qdocs = [] if bm is None else [corpus.doc(int(u)) for u in rng.choice(a.users, a.bm25_queries, replace=False)]
    none = np.zeros(a.users, dtype=bool)
    lat, lcpu = [], []
    for i, q in enumerate(qdocs):
        t, c = time.perf_counter(), time.thread_time()
        _top(bm.scores(q), a.z, none)
        if i >= 3:
            lcpu.append((time.thread_time() - c) * 1000)
            lat.append((time.perf_counter() - t) * 1000)
    res["bm25_query"] = None if bm is None else {"n": len(lat), **_pct(lat, lcpu), "mean_query_tokens": round(float(np.mean([len(q) for q in qdocs])), 1)}
    lat_old = []
    for q in qdocs[:30]:  # the former scoring: sparse query x sparse matrix product, densified
        c = time.thread_time()
        old = np.asarray((bm.weights @ bm.query_vector(q).T).todense()).ravel()
        lat_old.append((time.thread_time() - c) * 1000)
        np.testing.assert_allclose(old, bm.scores(q), rtol=1e-12, atol=1e-12)
    if bm is not None:
        res["bm25_query"]["former_sparse_x_sparse_scores_only"] = {"n": len(lat_old), "cpu_p50_ms": round(float(np.percentile(lat_old, 50)), 2)}
    print("bm25 query", res["bm25_query"], flush=True)
    _save(res)
    del bm, corpus

    # ---- faiss --------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2000, a.dim)).astype(np.float32)
    x = np.concatenate([_mixture(min(100_000, a.users - s), a.dim, rng, centers) for s in range(0, a.users, 100_000)])
    q = _mixture(a.queries, a.dim, rng, centers)
    kmax = max(a.z, a.v)
    settings = {"flat": [None], "ivf": [8, 32], "ivfpq": [8, 32], "hnsw": [16, 64, 128]}
    res["faiss"] = []
    exact = None
    for kind, values in settings.items():
        if kind not in kinds and kind != "flat":
            continue
        r0 = _rss_now_mb()
        t, c = time.perf_counter(), time.process_time()
        if kind == "ivfpq":
            nlist = int(np.sqrt(a.users))
            ix = faiss.IndexIVFPQ(faiss.IndexFlatIP(a.dim), a.dim, nlist, a.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            ix.cp.seed = 0
            ix.train(x)
            ix.add(x)
        else:
            ix = build_faiss(x, kind, **({"hnsw_m": a.hnsw_m} if kind == "hnsw" else {}))
        build = {"build_s": round(time.perf_counter() - t, 2), "build_cpu_s": round(time.process_time() - c, 2),
                 "index_mb": round(len(serialize(ix)) / 2**20, 1), "rss_growth_mb": round(_rss_now_mb() - r0)}
        print(kind, build, flush=True)
        if kind == "flat":
            t = time.perf_counter()
            _, exact = ix.search(q, kmax)
            res["flat_batch_search_s"] = round(time.perf_counter() - t, 2)
        for val in values if kind in kinds else []:
            knob = {}
            if kind == "hnsw":
                ix.hnsw.efSearch = val
                knob = {"efSearch": val}
            elif kind in ("ivf", "ivfpq"):
                ix.nprobe = val
                knob = {"nprobe": val}
            _, got = ix.search(q, kmax)
            row = {"index": kind, **knob, **build,
                   f"recall@{a.v}_in_top{a.z}": round(_recall(got[:, : a.z], exact, a.v), 4),
                   f"recall_{a.v}@{a.v}": round(_recall(got[:, : a.v], exact, a.v), 4),
                   **_latency(ix, q, a.z)}
            res["faiss"].append(row)
            print(row, flush=True)
            _save(res)
        del ix
    res["peak_rss_mb"] = round(_peak_mb())
    res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    _save(res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
