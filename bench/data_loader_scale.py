"""Raw Amazon 2018 loader at scale: the columnar (polars) engine against the Python reference.

Writes a synthetic raw category (``<Cat>.json.gz`` with N reviews in the 2018 field layout, Zipf
item popularity, heavy-tailed user activity, day-granular timestamps with ties, ~0.5% exact
duplicate reviews, file sorted by asin as the real dumps; ``meta_<Cat>.json.gz`` with titles of
which some are empty, over 300 characters or HTML-escaped, and a few reviewed items without
metadata), then loads it with each engine in a fresh subprocess (MiniOneRec settings: 5-core,
windows of 10, 8:1:1 by time), recording wall time and the child's peak RSS. Sizes at or under
``--reference-max`` are also loaded by the reference engine and the two datasets must hash equal.

    python -m bench.data_loader_scale [--sizes 1000000 10000000] [--reference-max 1000000] [--work /tmp/genrec_data_scale] [--out NAME.json]

Results: ``bench/results/data_loader_scale/<--out>`` (default ``data_loader_scale.json``). The
synthetic files are kept in ``--work`` (~370 MB gzip at 10^7) and reused when present. Wall time
is sensitive to other load on the machine: each run also records its CPU time and the load average.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "data_loader_scale"
TEXTS = [
    "Works as described. " * (1 + n % 12) + f"Would buy again ({n})." for n in range(997)
]  # 20..260 characters, like short reviews
NAMES = ["Amazon Customer", "J. Smith", "Kindle reader", "Pat", "M. Garcia", "Tool guy", "Anna K"]
DAY0 = int(datetime(2010, 1, 1, tzinfo=timezone.utc).timestamp()) // 86400


def user_id(u: int) -> str:
    return f"A{(u * 0x9E3779B97F4A7) % (1 << 52):013X}"  # odd multiplier mod 2^52: a bijection, 14 characters


def asin(i: int) -> str:
    return f"B0{(i * 0x2545F491) % (1 << 32):08X}"  # bijection mod 2^32, 10 characters


def generate(d: Path, n: int, seed: int = 0) -> dict:
    """Write the synthetic category into ``d`` (skipped when complete); returns its description."""
    marker = d / "generated.info"  # not *.json: the loader takes every *.json file
    if marker.exists():
        return json.loads(marker.read_text())
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_users, n_items = max(int(n * 0.15), 100), max(int(n * 0.05), 50)
    # Zipf-like popularity over ranks; ranks shuffled onto ids
    pi = 1.0 / (np.arange(n_items) + 10.0) ** 1.0
    pu = 1.0 / (np.arange(n_users) + 5.0) ** 0.75
    items = rng.permutation(n_items)[np.searchsorted(np.cumsum(pi / pi.sum()), rng.random(n), side="right").clip(0, n_items - 1)]
    users = rng.permutation(n_users)[np.searchsorted(np.cumsum(pu / pu.sum()), rng.random(n), side="right").clip(0, n_users - 1)]
    base = rng.integers(0, 3000, n_users)  # each user is active in a ~1-year window: many same-day ties
    days = base[users] + rng.integers(0, 365, n)
    n_dup = n // 200
    dup = rng.integers(0, n, n_dup)
    items, users, days = np.concatenate([items, items[dup]]), np.concatenate([users, users[dup]]), np.concatenate([days, days[dup]])
    n_meta_missing = n_items // 100  # the last 1% of items have no metadata
    uid = [user_id(u) for u in range(n_users)]
    aid = [asin(i) for i in range(n_items)]
    rank = np.empty(n_items, dtype=np.int64)
    rank[np.argsort(np.asarray(aid))] = np.arange(n_items)
    order = np.lexsort((rng.random(len(items)), rank[items]))  # grouped by asin, as the real dumps
    stars = rng.integers(1, 6, len(items))
    day_str = {}
    with gzip.open(d / "Synthetic.json.gz", "wt", encoding="utf-8", compresslevel=1) as f:
        for a in range(0, len(order), 200_000):
            sel = order[a : a + 200_000]
            lines = []
            for i, u, dd, s in zip(items[sel].tolist(), users[sel].tolist(), days[sel].tolist(), stars[sel].tolist()):
                ts = (DAY0 + dd) * 86400
                rt = day_str.get(dd)
                if rt is None:
                    rt = day_str[dd] = datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%m %d, %Y").lstrip("0").replace(" 0", " ")
                lines.append(
                    f'{{"overall": {s}.0, "verified": true, "reviewTime": "{rt}", "reviewerID": "{uid[u]}", "asin": "{aid[i]}", '
                    f'"reviewerName": "{NAMES[(u + i) % 7]}", "reviewText": "{TEXTS[(u * 31 + i) % 997]}", "summary": "Five Stars", '
                    f'"unixReviewTime": {ts}}}\n'
                )
            f.write("".join(lines))
    with gzip.open(d / "meta_Synthetic.json.gz", "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(n_items - n_meta_missing):
            r = i % 100
            title = "" if r == 0 else ("Long " * 70 if r == 1 else (f"Widget &amp; <b>Co</b> {i}" if r < 20 else f"Widget model {i} for the workshop"))
            f.write(json.dumps({"category": ["Industrial & Scientific", f"Sub {i % 50}"], "description": [f"A widget, number {i}.", "Sturdy."],
                                "title": title, "also_buy": [aid[(i + 1) % n_items]], "brand": f"Brand{i % 997}", "price": "$9.99",
                                "asin": aid[i]}) + "\n")
    info = {"n_reviews": len(items), "n_users": n_users, "n_items": n_items, "exact_duplicates": n_dup,
            "reviews_gz_mb": round((d / "Synthetic.json.gz").stat().st_size / 2**20, 1),
            "meta_gz_mb": round((d / "meta_Synthetic.json.gz").stat().st_size / 2**20, 1), "generate_s": round(time.perf_counter() - t, 1)}
    marker.write_text(json.dumps(info))
    return info


def digest(ds) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([ds.name, ds.item_ids, ds.item_text, ds.user_ids, ds.max_history, ds.text_fields, ds.source]).encode())
    h.update(np.asarray([len(s) for s in ds.sequences], dtype=np.int64).tobytes())
    h.update(np.fromiter((i for s in ds.sequences for i in s), dtype=np.int32).tobytes())
    for s in ("train", "valid", "test"):
        sp = ds.splits[s]
        for a in (sp.user, sp.history, sp.target):
            h.update(str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def child(engine: str, d: str) -> None:
    import polars  # noqa: F401  (imported before the baseline RSS, both engines alike)

    from components.data import load_amazon2018

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    c = time.process_time()
    ds = load_amazon2018(d, k=5, max_history=10, engine=engine)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"engine": engine, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak, 1), "rss_after_imports_mb": round(rss0, 1),
           "n_items": ds.n_items, "n_users": ds.n_users, "n_interactions": ds.n_interactions,
           "samples": [len(ds.splits[s]) for s in ("train", "valid", "test")], "digest": digest(ds)}
    print("RESULT " + json.dumps(out), flush=True)


def run(engine: str, d: Path) -> dict:
    load = os.getloadavg()
    p = subprocess.run([sys.executable, "-m", "bench.data_loader_scale", "--child", engine, "--work", str(d)], cwd=ROOT, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{engine} on {d} failed:\n{p.stderr[-3000:]}")
    res = json.loads([line for line in p.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    res["load_avg_before"] = [round(x, 2) for x in load]
    print(f"  {engine:7s} {res['wall_s']:8.1f} s  peak RSS {res['peak_rss_mb']:8.0f} MB  ({res['n_users']:,} users, {res['n_items']:,} items, "
          f"{res['n_interactions']:,} interactions)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reference-max", type=int, default=1_000_000, help="also run the Python reference up to this size")
    ap.add_argument("--work", default="/tmp/genrec_data_scale")
    ap.add_argument("--out", default="data_loader_scale.json", help="file name under bench/results/data_loader_scale/")
    ap.add_argument("--child", choices=["polars", "python"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.work)
    import polars as pl

    runs = []
    for n in args.sizes:
        d = Path(args.work) / f"n{n}"
        info = generate(d, n)
        print(f"N={n:,}: {info}", flush=True)
        row = {"n": n, "data": info, "engines": {}}
        for engine in (["python"] if n <= args.reference_max else []) + ["polars"]:
            row["engines"][engine] = run(engine, d)
        if "python" in row["engines"]:
            row["identical"] = row["engines"]["python"]["digest"] == row["engines"]["polars"]["digest"]
            assert row["identical"], f"N={n}: the engines' datasets differ"
        runs.append(row)
    payload = {
        "benchmark": "data_loader_scale",
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
        "threads": {k: os.environ.get(k) for k in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS")},
        "affinity": sorted(os.sched_getaffinity(0)),
        "polars": pl.__version__,
        "python": platform.python_version(),
        "settings": {"k_core": 5, "max_history": 10, "split_ratio": [0.8, 0.1, 0.1], "chunk_bytes": None},
        "runs": runs,
    }
    from components.data import columnar

    payload["settings"]["chunk_bytes"] = columnar.CHUNK_BYTES
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / args.out
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
