"""Tokenization at 10^7 items in bounded memory: streaming RQ-KMeans on a memory-mapped ``.npy``.

    OMP_NUM_THREADS=1 taskset -c 1 python -m bench.tokenizer_scale [--n 10000000] [--base-n 1000000] [--dim 64] [--tmp /tmp]

1. writes synthetic float32 ``[n, dim]`` embeddings (a mixture of 4,096 Gaussian blobs, L2-normalised)
   as ``.npy`` under ``--tmp`` in chunks (never the whole matrix in memory);
2. in a fresh subprocess (its own ``ru_maxrss``): :func:`rq_kmeans_streaming` with sizes
   ``[256, 256, 256]``, ``sample`` rows per level, ``chunk`` rows per assignment step; then the
   vectorised collision handling (``extra_level``). Time per phase, peak RSS vs the matrix size;
3. at ``--base-n`` rows: in-memory :func:`rq_kmeans` vs streaming, each in its own subprocess
   (peak RSS ratio);
4. on the ``--base-n`` codes, in another subprocess: the reference
   :func:`~components.tokenizer.collisions.add_extra_level` (``np.unique(axis=0)``) vs the
   vectorised one, checked equal (CPU seconds).

Times are wall (``*_s``) and process CPU (``*_cpu_s``): on a shared box the CPU times are the
comparable figures.

The ``.npy`` files are deleted at the end. Writes ``bench/results/tokenizer_scale/tokenizer_scale.json``.
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
OUT = ROOT / "bench" / "results" / "tokenizer_scale"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gen(path: str, n: int, d: int, seed: int = 0) -> dict:
    import numpy as np

    from components.tokenizer.streaming import write_npy

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4096, d), dtype=np.float32)

    def chunks():
        for s in range(0, n, 1 << 18):
            c = centers[rng.integers(0, 4096, min(1 << 18, n - s))]
            c += 0.4 * rng.standard_normal(c.shape, dtype=np.float32)
            yield c / np.linalg.norm(c, axis=1, keepdims=True)

    t = time.perf_counter()
    write_npy(path, n, d, chunks())
    return {"write_s": round(time.perf_counter() - t, 1), "file_mb": round(os.path.getsize(path) / 2**20), "peak_rss_mb": round(_rss_mb())}


def _stream(path: str, sizes: list[int], sample: int, chunk: int, niter: int, codes_out: str | None) -> dict:
    import numpy as np

    from components.tokenizer.rq_kmeans import faiss_threads
    from components.tokenizer.streaming import add_extra_level_fast, count_collisions, open_embeddings, rq_kmeans_streaming

    faiss_threads(1)
    x = open_embeddings(path)
    base = _rss_mb()
    tm: dict = {}
    t, c = time.perf_counter(), time.process_time()
    res = rq_kmeans_streaming(path, sizes, sample=sample, chunk=chunk, niter=niter, seed=0, timings=tm)
    total, cpu = time.perf_counter() - t, time.process_time() - c
    rss_quant = _rss_mb()
    t, c = time.perf_counter(), time.process_time()
    n_raw = count_collisions(res.codes, sizes)
    sids, out_sizes, n_res = add_extra_level_fast(res.codes, sizes)
    t_coll, c_coll = time.perf_counter() - t, time.process_time() - c
    if codes_out:
        np.save(codes_out, res.codes)
    return {
        "n": len(x), "dim": x.shape[1], "sizes": sizes, "sample": min(sample, len(x)), "chunk": chunk, "niter": niter,
        "matrix_mb": round(x.nbytes / 2**20), "codes_mb": round(res.codes.nbytes / 2**20),
        **{k: round(v, 2) for k, v in tm.items()}, "quantize_total_s": round(total, 2), "quantize_total_cpu_s": round(cpu, 2),
        "assign_rows_per_cpu_s": round(len(x) / tm["assign_cpu_s"]),
        "rows_per_s_assign": round(len(x) / tm["assign_s"]),
        "collisions_raw": n_raw, "collisions_resolved": n_res, "extra_level_size": out_sizes[-1] if len(out_sizes) > len(sizes) else 0,
        "collisions_fast_s": round(t_coll, 2), "collisions_fast_cpu_s": round(c_coll, 2), "unique_sids_after": bool(count_collisions(sids, out_sizes) == 0),
        "quant_error": [round(e, 5) for e in res.quant_error],
        "rss_after_imports_mb": round(base), "peak_rss_after_quantize_mb": round(rss_quant), "peak_rss_mb": round(_rss_mb()),
        "peak_rss_over_matrix": round(_rss_mb() / (x.nbytes / 2**20), 3),
    }


def _inmem(path: str, sizes: list[int], niter: int) -> dict:
    import numpy as np

    from components.tokenizer.rq_kmeans import faiss_threads, rq_kmeans

    faiss_threads(1)
    base = _rss_mb()
    x = np.load(path)
    t, c = time.perf_counter(), time.process_time()
    res = rq_kmeans(x, sizes, niter=niter, seed=0)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    return {"n": len(x), "matrix_mb": round(x.nbytes / 2**20), "quantize_total_s": round(dt, 2), "quantize_total_cpu_s": round(cpu, 2), "quant_error": [round(e, 5) for e in res.quant_error],
            "rss_after_imports_mb": round(base), "peak_rss_mb": round(_rss_mb()), "peak_rss_over_matrix": round(_rss_mb() / (x.nbytes / 2**20), 3)}


def _coll_ref(codes_path: str, sizes: list[int]) -> dict:
    import numpy as np

    from components.tokenizer.collisions import add_extra_level
    from components.tokenizer.streaming import add_extra_level_fast

    codes = np.load(codes_path)
    c = time.process_time()
    ref = add_extra_level(codes, sizes)
    t_ref = time.process_time() - c
    c = time.process_time()
    fast = add_extra_level_fast(codes, sizes)
    t_fast = time.process_time() - c
    same = bool(np.array_equal(ref[0], fast[0]) and ref[1:] == fast[1:])
    return {"n": len(codes), "reference_np_unique_cpu_s": round(t_ref, 2), "fast_packed_argsort_cpu_s": round(t_fast, 2), "speedup": round(t_ref / t_fast, 1), "equal": same}


def _child(kind: str, args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.tokenizer_scale", "--child", kind, "--child-args", json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--base-n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--sample", type=int, default=256 * 256)
    ap.add_argument("--chunk", type=int, default=1 << 16)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="[]", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        sys.path.insert(0, str(ROOT))
        ca = json.loads(a.child_args)
        fn = {"gen": _gen, "stream": _stream, "inmem": _inmem, "coll_ref": _coll_ref}[a.child]
        print(json.dumps(fn(*ca)))
        return
    sizes = [a.size] * a.levels
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("load before:", load, flush=True)
    res: dict = {"machine": "2-core AMD EPYC CPU (dev box, shared; pinned to 1 core, 1 thread)", "host": platform.node(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uptime_before": load,
                 "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}
    big = os.path.join(a.tmp, f"genrec_tok_scale_{a.n}x{a.dim}.npy")
    small = os.path.join(a.tmp, f"genrec_tok_scale_{a.base_n}x{a.dim}.npy")
    codes = os.path.join(a.tmp, f"genrec_tok_scale_codes_{a.n}.npy")
    try:
        res["write_big"] = _child("gen", [big, a.n, a.dim])
        print("write", res["write_big"], flush=True)
        res["stream_big"] = _child("stream", [big, sizes, a.sample, a.chunk, a.niter, None])
        print("stream", res["stream_big"], flush=True)
        os.remove(big)
        res["write_base"] = _child("gen", [small, a.base_n, a.dim])
        res["base_inmem"] = _child("inmem", [small, sizes, a.niter])
        print("inmem", res["base_inmem"], flush=True)
        res["base_stream"] = _child("stream", [small, sizes, a.sample, a.chunk, a.niter, codes])
        print("stream base", res["base_stream"], flush=True)
        res["collisions_reference_base"] = _child("coll_ref", [codes, sizes])
        print("collisions", res["collisions_reference_base"], flush=True)
        res["base_rss_ratio_stream_over_inmem"] = round(res["base_stream"]["peak_rss_mb"] / res["base_inmem"]["peak_rss_mb"], 3)
    finally:
        for p in (big, small, codes):
            if os.path.exists(p):
                os.remove(p)
    res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"tokenizer_scale{'' if a.n == 10_000_000 else f'_{a.n}'}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
