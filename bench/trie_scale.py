"""SID trie at catalog scale: dense (``SIDTrie``) vs sparse CSR (``SparseSIDTrie``) on synthetic
catalogs of random unique SIDs (default 3 levels of 256 codes + a disambiguation level of 8).

For each catalog size and layout, in a fresh subprocess (so peak RSS is that layout's alone):
build time, bytes of the structure's tensors, peak RSS during the build (VmHWM reset after the
catalog is generated) and ms per decoding step = ``valid[l][nodes]`` (the [beams, size] mask) +
``child[l][nodes, tokens]`` for one beam batch (default 256 requests x beam 20 = 5,120 nodes drawn
at random among the level's nodes, one valid token each), median over repeats, averaged over the
levels (the best repeat is reported too). Dense runs only where it fits ``--max-entries`` (``sum_l n_l x size_l``, default 2^28).
Both layouts' masks and children on the same batches are hashed and must be identical.

    python bench/trie_scale.py [--sizes 1e5 1e6 1e7] [--codes 256 256 256 8] [--beams 5120]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from components.generator.decoding.trie import MAX_ENTRIES, _prefixes, build_trie  # noqa: E402

OUT = ROOT / "bench/results/trie_scale/trie_scale.json"


def synthetic_sids(n: int, codes: list[int], seed: int = 0) -> np.ndarray:
    """``n`` distinct SIDs drawn uniformly from the code space, in random item order (int32, like a codebook)."""
    total = int(np.prod(codes, dtype=np.float64))
    if n > total:
        raise SystemExit(f"{n} items do not fit in {codes} ({total} SIDs)")
    rng = np.random.default_rng(seed)
    vals = np.unique(rng.integers(0, total, int(n * 1.1) + 1000, dtype=np.int64))
    while len(vals) < n:
        vals = np.unique(np.concatenate([vals, rng.integers(0, total, n, dtype=np.int64)]))
    vals = rng.permutation(vals)[:n]
    sids = np.empty((n, len(codes)), dtype=np.int32)
    for lvl in range(len(codes) - 1, -1, -1):
        sids[:, lvl] = vals % codes[lvl]
        vals //= codes[lvl]
    return sids


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def one(n: int, layout: str, args) -> dict:
    """Build one layout for one catalog size and time its decoding steps (runs in a subprocess)."""
    torch.set_num_threads(1)
    sids = synthetic_sids(n, args.codes, args.seed)
    row: dict = {"items": n, "layout": layout}
    if layout == "dense":
        pre = _prefixes(sids, args.codes)
        row["dense_entries"] = pre.dense_entries
        if pre.dense_entries > args.max_entries:
            row["skipped"] = f"{pre.dense_entries} dense entries > max_entries {args.max_entries}"
            return row
        del pre
    reset = _reset_peak()
    rss0 = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    trie = build_trie(sids, args.codes, max_entries=args.max_entries, layout=layout)
    row["build_s"] = time.perf_counter() - t0
    row["peak_rss_mb"] = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["rss_before_build_mb"] = rss0
    row["build_peak_extra_mb"] = row["peak_rss_mb"] - rss0
    row["structure_mb"] = trie.nbytes / 2**20
    row["n_nodes"] = trie.n_nodes
    g = torch.Generator().manual_seed(args.seed)
    step_ms, step_min, digest = [], [], hashlib.sha1()
    for lvl in range(trie.n_levels):
        nodes = torch.randint(0, trie.n_nodes[lvl], (args.beams,), generator=g)
        mask = trie.valid[lvl][nodes]
        toks = (mask.float() * (torch.rand(mask.shape, generator=g) + 0.01)).argmax(1)  # one valid token per row
        child = trie.child[lvl][nodes, toks]
        digest.update(mask.numpy().tobytes())
        digest.update(child.numpy().tobytes())
        times = []
        for r in range(args.repeats + 3):
            t0 = time.perf_counter()
            trie.valid[lvl][nodes]
            trie.child[lvl][nodes, toks]
            if r >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
        step_ms.append(float(np.median(times)))
        step_min.append(float(np.min(times)))
    row["step_ms_per_level"] = step_ms  # median over repeats
    row["step_ms_mean"] = float(np.mean(step_ms))
    row["step_ms_min_per_level"] = step_min  # best of the repeats (less sensitive to a loaded machine)
    row["step_ms_min_mean"] = float(np.mean(step_min))
    row["digest"] = digest.hexdigest()
    return row


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="catalog sizes (items)")
    ap.add_argument("--codes", type=int, nargs="+", default=[256, 256, 256, 8], help="codebook size per level")
    ap.add_argument("--beams", type=int, default=256 * 20, help="beam nodes per decoding step (requests x beam)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--max-entries", type=int, default=MAX_ENTRIES, help="dense entries allowed (the dense guard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--one", nargs=2, metavar=("N", "LAYOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(float(args.one[0])), args.one[1], args)))
        return 0
    load = os.getloadavg()
    rows = []
    for n in [int(s) for s in args.sizes]:
        pair = {}
        for layout in ("sparse", "dense"):
            cmd = [sys.executable, __file__, "--one", str(n), layout, "--codes", *map(str, args.codes), "--beams", str(args.beams),
                   "--repeats", str(args.repeats), "--max-entries", str(args.max_entries), "--seed", str(args.seed)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                row = {"items": n, "layout": layout, "error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
            else:
                row = json.loads(r.stdout.strip().splitlines()[-1])
            pair[layout] = row
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        if "digest" in pair["sparse"] and "digest" in pair.get("dense", {}):
            pair["sparse"]["identical_to_dense"] = pair["sparse"]["digest"] == pair["dense"]["digest"]
            if not pair["sparse"]["identical_to_dense"]:
                print(f"MISMATCH at {n} items: sparse and dense masks/children differ", file=sys.stderr)
    result = {"benchmark": "trie_scale", "date": date.today().isoformat(), "machine": machine(), "cpu": cpu_model(),
              "threads": 1, "torch": torch.__version__, "loadavg_before": [round(x, 2) for x in load],
              "codes": args.codes, "beams": args.beams, "repeats": args.repeats, "max_entries": args.max_entries,
              "catalog": "uniform random unique SIDs, random item order", "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all("identical_to_dense" not in r or r["identical_to_dense"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
