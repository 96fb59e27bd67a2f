"""Data-parallel training throughput: samples/s of TIGER (``cpu`` preset size) trained by the real
:class:`~components.generator.train.Trainer` on 1 process vs N processes (PyTorch DDP, gloo on
CPU, NCCL on GPU, started by torchrun), one torch thread per process on a CPU, the same global
batch (256). Industrial with its reference SIDs, or, without the data, a synthetic dataset of the
same shape (3,686 items, 4-level SIDs, histories of <= 10 items). Each run trains ``--steps``
optimizer steps of one epoch; samples/s counts the steps after ``--warmup`` (timed at the same
point of every step, after the backward) and excludes the start-up and validation. 1 and N
processes alternate for ``--rounds`` rounds; the median round is reported.

    python bench/generator_ddp.py [--procs 1,2] [--steps 30] [--rounds 3] [--pin]

``--pin`` pins rank r to the r-th CPU this process may use (``taskset`` is honoured). Results:
``bench/results/generator_ddp/<dataset>.json`` (``--out`` to change). A quick smoke check on one
core: ``taskset -c 1 python bench/generator_ddp.py --steps 4 --warmup 1 --rounds 1 --out smoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dataset(data: str):
    """(dataset, sids, sizes, source): Industrial + reference SIDs, else a synthetic stand-in of its shape."""
    import numpy as np

    from components.data.dataset import Dataset, Split

    path = Path(data)
    if (path / "reference/minionerec.index.json").exists():
        from components.data import load_minionerec
        from components.tokenizer.reference import codebook_from_index_json

        ds = load_minionerec(str(path), name="industrial", max_history=10)
        cb = codebook_from_index_json(path / "reference/minionerec.index.json", ds)
        return ds, cb.sids, list(cb.sizes), "industrial"
    rng = np.random.default_rng(0)
    n_items, sizes = 3686, [256, 256, 256, 4]
    sids = np.stack([rng.integers(0, s, n_items) for s in sizes[:3]] + [np.zeros(n_items, dtype=np.int64)], 1)
    _, first = np.unique(sids[:, :3], axis=0, return_inverse=True)
    for g in np.unique(first):  # colliding prefixes get distinct last tokens
        members = np.flatnonzero(first == g)
        sids[members, 3] = np.arange(len(members)) % sizes[3]
    rows = {}
    for split, n in (("train", 36259), ("valid", 4532), ("test", 4533)):
        lens = rng.integers(1, 11, n)
        hist = [rng.integers(0, n_items, k).tolist() for k in lens]
        rows[split] = Split.from_lists(list(rng.integers(0, 5000, n)), hist, list(rng.integers(0, n_items, n)), max_history=10)
    ds = Dataset(name="industrial-shape", item_ids=[str(i) for i in range(n_items)], item_text=[{"title": str(i)} for i in range(n_items)],
                 user_ids=[str(u) for u in range(5000)], sequences=[[0]] * 5000, splits=rows, max_history=10)
    return ds, sids, sizes, "synthetic"


def worker(args) -> None:
    """One rank (or the single process): train ``--steps`` steps, rank 0 writes the timings."""
    import torch

    from components.generator.backbones.tiger import TigerBackbone
    from components.generator.decoding import SIDTrie
    from components.generator.hardware import dist_env
    from components.generator.model import GenerativeRecommender
    from components.generator.params import GeneratorParams
    from components.generator.train import Trainer
    from components.generator.vocab import SIDVocab

    d = dist_env()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[d.local_rank % len(cpus)]})
    torch.set_num_threads(args.threads)
    ds, sids, sizes, source = _dataset(args.data)
    gp = GeneratorParams(preset="cpu").effective()
    torch.manual_seed(0)
    vocab = SIDVocab(sids, sizes)
    model = GenerativeRecommender(TigerBackbone(vocab, **gp.tiger.model_dump()), [], max_items=10)
    tp = gp.train.model_copy(update={"epochs": 1, "max_steps_per_epoch": args.steps, "valid_samples": 1, "max_minutes": 0.0,
                                     "device": args.device, "num_threads": args.threads, "batch_size": args.batch})
    stamps: list[float] = []
    tr = Trainer(model, ds, SIDTrie(sids, sizes), tp, eval_beam=10, progress=False)
    tr.step_hook = lambda epoch, step, m, losses: stamps.append(time.perf_counter())
    res = tr.fit()
    if d.main:
        timed = len(stamps) - 1 - args.warmup
        sps = timed * args.batch / (stamps[-1] - stamps[args.warmup])
        Path(args.result).write_text(json.dumps({"processes": d.world, "samples_per_s": sps, "steps": len(stamps), "source": source,
                                                 "n_train": len(ds.splits["train"]), "loss.rec": res.history[-1]["loss.rec"],
                                                 "params": sum(p.numel() for p in model.parameters())}))
    if d.enabled:
        import torch.distributed as td

        td.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run (global batch --batch)")
    ap.add_argument("--warmup", type=int, default=3, help="steps not timed at the start of each run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pin", action="store_true", help="pin rank r to the r-th allowed CPU")
    ap.add_argument("--out", default=None, help="results name under bench/results/generator_ddp/ (default: the dataset)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.steps <= args.warmup + 1:
        ap.error("--steps must exceed --warmup + 1")
    procs = [int(p) for p in args.procs.split(",")]
    times: dict[int, list[dict]] = {p: [] for p in procs}
    common = ["--data", args.data, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
              "--threads", str(args.threads), "--device", args.device, *(["--pin"] if args.pin else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for p in procs:
                out = Path(tmp) / f"r{r}p{p}.json"
                me = [str(Path(__file__).resolve()), "--worker", "--result", str(out), *common]
                cmd = [sys.executable, *me] if p == 1 else \
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(p), *me]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, cwd=ROOT)
                row = json.loads(out.read_text())
                times[p].append(row)
                print(f"round {r + 1}: {p} process(es): {row['samples_per_s']:.1f} samples/s ({time.perf_counter() - t0:.0f} s with start-up)",
                      flush=True)
    rows = []
    for p in procs:
        sps = statistics.median(x["samples_per_s"] for x in times[p])
        rows.append({"processes": p, "threads_per_process": args.threads, "samples_per_s": round(sps, 1),
                     "rounds": [round(x["samples_per_s"], 1) for x in times[p]]})
    for row in rows:
        row[f"speedup_vs_{procs[0]}"] = round(row["samples_per_s"] / rows[0]["samples_per_s"], 2)
    first = times[procs[0]][0]
    import torch

    from bench.common import write

    name = args.out or first["source"]
    (ROOT / "bench/results/generator_ddp").mkdir(parents=True, exist_ok=True)
    write(f"generator_ddp/{name}", {"bench": "generator_ddp", "dataset": first["source"], "n_train": first["n_train"],
                                    "model": "tiger cpu preset", "params": first["params"], "device": args.device,
                                    "backend": "nccl" if args.device.startswith("cuda") else "gloo", "global_batch": args.batch,
                                    "steps": args.steps, "warmup": args.warmup, "pinned": args.pin,
                                    "affinity": sorted(os.sched_getaffinity(0)), "torch": torch.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
