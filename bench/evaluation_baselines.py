"""Classical baselines (most-popular, SASRec, SASRec+RR, SASRec+RW) through the real CLI on one
dataset: fetch → prepare → `genrec baselines` → `genrec evaluate`, in a throw-away registry.

    python bench/evaluation_baselines.py --dataset industrial
    python bench/evaluation_baselines.py --dataset ml-100k --max-history 20

Prints the CRAB-Table-1-style table and writes ``bench/results/evaluation_baselines_<dataset>.json``
plus the report (markdown, CSV, PNG) under ``bench/results/evaluation_<dataset>/``. CPU only; the
SASRec size and wall-clock budget come from params.yaml (``evaluation.baselines.sasrec``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.cli import main  # noqa: E402

KEYS = ["HR@10", "NDCG@10", "DGU@10", "MGU@10", "DivR@10", "ORR@10", "HR_head@10", "HR_tail@10", "NDCG_head@10", "NDCG_tail@10", "coverage@10", "HR@5", "NDCG@5", "HR@20", "NDCG@20"]


def run(cmd: list[str]) -> None:
    rc = main(cmd)
    if rc:
        raise SystemExit(f"command failed ({rc}): genrec {' '.join(cmd)}")


def minionerec_codebook(root: Path, mirror: Path) -> str:
    """MiniOneRec's released SIDs (3 x 256, 16 collisions) as a Codebook, with a 4th level that
    numbers colliding items, so token-level bias can be shown on real SIDs before our tokenizer lands."""
    import re

    import numpy as np

    from components.data.dataset import Dataset
    from components.registry import Registry
    from components.tokenizer.codebook import Codebook

    reg = Registry(root)
    ds_art = reg.load("dataset/industrial@latest")
    ds = Dataset.from_artifact(ds_art)
    index = json.loads((mirror / "Industrial_and_Scientific" / "reference" / "minionerec.index.json").read_text())
    sids = np.array([[int(re.findall(r"\d+", t)[0]) for t in index[i]] for i in ds.item_ids], dtype=np.int64)
    _, inv = np.unique(sids, axis=0, return_inverse=True)
    dis = np.zeros(len(sids), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inv.ravel()):
        dis[i] = seen.get(int(g), 0)
        seen[int(g)] = dis[i] + 1
    full = np.concatenate([sids, dis[:, None]], axis=1)
    cb = Codebook(sids=full, sizes=[256, 256, 256, int(dis.max()) + 1], item_ids=ds.item_ids, method="minionerec-reference", dataset_ref=ds_art.ref)
    return cb.save(reg, "industrial-minionerec", parents=[ds_art.ref], params={"source": "reference/minionerec.index.json"}).ref


def rr_sweep(root: Path, dataset: str, p) -> list[dict]:
    """SASRec + RR for several gamma on valid and test (one scoring pass each)."""
    import torch

    from components.data.dataset import Dataset
    from components.evaluation.baselines import SASRec, popularity_penalty
    from components.evaluation.metrics import evaluate_topk
    from components.registry import Registry

    reg = Registry(root)
    ds = Dataset.from_artifact(reg.load(f"dataset/{dataset}@latest"))
    model = SASRec.from_artifact(reg.load(f"model/{dataset}-sasrec@latest"))
    counts = ds.train_item_counts()
    items = torch.from_numpy(model.item_embeddings())
    out = []
    scores = {s: torch.from_numpy(model.encode(ds.splits[s].history)) @ items.T for s in ("valid", "test")}
    for g in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        row = {"gamma": g}
        for s, sc in scores.items():
            topk = (sc - torch.from_numpy(popularity_penalty(counts, g))).topk(10, dim=1).indices.numpy()
            m = evaluate_topk(topk, ds.splits[s].target, counts, ks=(10,), n_groups=p.evaluation.n_groups)
            row[s] = {k: round(m[k], 4) for k in ("HR@10", "NDCG@10", "DGU@10", "MGU@10", "HR_tail@10")}
        out.append(row)
    return out


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="industrial")
    ap.add_argument("--max-history", type=int, default=0, help="0 = dataset default (industrial 10, ml-100k 20)")
    ap.add_argument("--registry", default=None, help="artifacts root (default: a temp dir)")
    ap.add_argument("--mirror", default=os.environ.get("GENREC_DATA_MIRROR", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--set", action="append", default=[], help="extra param overrides KEY=VALUE")
    ap.add_argument("--reuse", action="store_true", help="registry already holds dataset + rankings: only evaluate (and sweep)")
    ap.add_argument("--reuse-models", action="store_true", help="registry holds dataset + SASRec models: rank again without training")
    args = ap.parse_args()
    work = Path(args.registry or tempfile.mkdtemp(prefix="genrec-bench-eval-"))
    out_dir = REPO / "bench" / "results" / f"evaluation_{args.dataset}"
    sets = ["--set", f"data.dataset={args.dataset}", "--set", f"data.max_history={args.max_history}"]
    for s in args.set:
        sets += ["--set", s]
    base = ["--params", str(REPO / "params.yaml"), "--registry", str(work / "artifacts")] + sets
    t0 = time.perf_counter()
    if not (args.reuse or args.reuse_models):
        run(base + ["data", "fetch", args.dataset, "--dest", str(work / "raw"), "--mirror", args.mirror])
        run(base + ["prepare", "--raw", str(work / "raw")])
    t1 = time.perf_counter()
    if args.reuse_models:
        prev = json.loads((out_dir / "baselines.json").read_text())
        run(base + ["baselines", "--reuse-models", "--summary-out", str(out_dir / "baselines.json")])
        cur = json.loads((out_dir / "baselines.json").read_text())
        for m, v in prev["methods"].items():  # keep the training record of the run that trained the models
            for key in ("best_epoch", "epochs_run", "train_seconds", "curve"):
                if key in v and m in cur["methods"]:
                    cur["methods"][m][key] = v[key]
        (out_dir / "baselines.json").write_text(json.dumps(cur, indent=2) + "\n")
    elif not args.reuse:
        run(base + ["baselines", "--summary-out", str(out_dir / "baselines.json")])
    t2 = time.perf_counter()
    extra = []
    if args.dataset == "industrial":
        extra = ["--codebook", minionerec_codebook(work / "artifacts", Path(args.mirror))]
    run(base + ["evaluate", "--metrics-out", str(out_dir / "metrics.json"), "--plots-dir", str(out_dir / "plots"), "--report", str(out_dir / "report.md")] + extra)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    summary = json.loads((out_dir / "baselines.json").read_text())
    result = {
        "name": f"evaluation_baselines_{args.dataset}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"2-core CPU (dev box), {platform.processor() or platform.machine()}, torch threads = evaluation.baselines.sasrec.num_threads",
        "command": f"python bench/evaluation_baselines.py --dataset {args.dataset} --max-history {args.max_history}" + "".join(f" --set {s}" for s in args.set),
        "seed": json.loads(json.dumps(summary)).get("seed", None),
        "split": metrics["split"],
        "ranking": metrics["ranking"],
        "seconds": {"prepare": round(t1 - t0, 1), "baselines": round(t2 - t1, 1)},
        "sasrec_training": {m: {k: v[k] for k in ("best_epoch", "epochs_run", "train_seconds") if k in v} for m, v in summary["methods"].items()},
        "metrics": {m: {k: v.get(k) for k in KEYS} for m, v in metrics["methods"].items()},
    }
    from components.params import load_params

    p = load_params(REPO / "params.yaml", [s for s in args.set])
    result["seed"] = p.seed
    result["sasrec_params"] = p.evaluation.baselines.sasrec.model_dump()
    result["rr_gamma"], result["rw_power"] = p.evaluation.baselines.rr_gamma, p.evaluation.baselines.rw_power
    result["rr_gamma_chosen"] = summary["methods"].get("sasrec-rr", {}).get("rr_gamma")
    result["rr_gamma_sweep"] = rr_sweep(work / "artifacts", args.dataset, p)
    if "token_bias" in metrics:
        result["token_bias_minionerec_sids"] = metrics["token_bias"]
    if args.reuse or args.reuse_models:
        old = REPO / "bench" / "results" / f"evaluation_baselines_{args.dataset}.json"
        if old.exists():
            prev = json.loads(old.read_text())
            result["seconds"] = prev.get("seconds", result["seconds"])
    path = REPO / "bench" / "results" / f"evaluation_baselines_{args.dataset}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main_bench()
