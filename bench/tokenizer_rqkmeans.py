"""RQ-KMeans (faiss) speed and peak memory on synthetic 384-d embeddings.

    python bench/tokenizer_rqkmeans.py --n 100000 1000000 --levels 3 --size 256

Each size runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own. Data: a mixture
of 2,000 Gaussian blobs in 384-d, L2-normalised (like sentence embeddings); generation is not
timed. Writes ``bench/results/tokenizer_rqkmeans.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(n: int, levels: int, size: int, niter: int, mppc: int, threads: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from components.tokenizer.rq_kmeans import faiss_threads, rq_kmeans

    faiss_threads(threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2000, 384), dtype=np.float32)
    x = np.empty((n, 384), dtype=np.float32)
    for s in range(0, n, 1 << 16):  # chunked, so generation does not set the peak
        c = centers[rng.integers(0, 2000, min(1 << 16, n - s))]
        c += 0.5 * rng.standard_normal(c.shape, dtype=np.float32)
        x[s : s + len(c)] = c / np.linalg.norm(c, axis=1, keepdims=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = rq_kmeans(x, [size] * levels, niter=niter, seed=0, max_points_per_centroid=mppc)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n, "dim": 384, "levels": levels, "size": size, "niter": niter, "max_points_per_centroid": mppc, "threads": threads,
        "seconds": round(dt, 2), "peak_rss_mb": round(peak), "data_mb": round(x.nbytes / 2**20), "peak_over_data_load_mb": round(peak - base),
        "quant_error": [round(e, 4) for e in res.quant_error], "collisions": int(n - len(np.unique(res.codes, axis=0))),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--max-points-per-centroid", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(one(a.child, a.levels, a.size, a.niter, a.max_points_per_centroid, a.threads)))
        return
    rows = []
    for n in a.n:
        cmd = [sys.executable, __file__, "--child", str(n), "--levels", str(a.levels), "--size", str(a.size), "--niter", str(a.niter),
               "--max-points-per-centroid", str(a.max_points_per_centroid), "--threads", str(a.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"n={n:>9,}: {row['seconds']:7.2f} s, peak RSS {row['peak_rss_mb']:,} MB (data {row['data_mb']:,} MB), collisions {row['collisions']:,}")
        rows.append(row)
    res = {"machine": f"{platform.node()} 2-core CPU (dev box, shared)", "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    tag = "" if (a.niter, a.max_points_per_centroid) == (20, 256) else f"_niter{a.niter}_mppc{a.max_points_per_centroid}"
    (ROOT / "bench" / "results" / f"tokenizer_rqkmeans{tag}.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
