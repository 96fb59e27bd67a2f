"""TIGER vs TIGER+GenPlugin and its ablations (w/o DSA, w/o SSG, w/o RAR) in one command:
each variant is ``genrec train`` + ``genrec rank --splits test`` with the same seed and budget, then
overall and head/tail HR/NDCG@5/10 (``components.evaluation.metrics.evaluate_topk``) on the ranked
test users.

    python bench/genplugin_ablation.py [--dataset ml-100k] [--variants tiger genplugin no-dsa no-ssg no-rar]
        [--registry /tmp/genplugin_bench] [--budget cpu|full] [--set generator.train.max_steps_per_epoch=20 ...]

Prerequisites are built into the (scratch) registry when missing: dataset, item embeddings
(``tokenizer.encoder``, default tfidf here), RQ-KMeans codebook, retrieval index. Extra ``--set``
overrides apply to every variant (the defaults are a CPU budget on top of the ``quick`` preset).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write  # noqa: E402
from components.cli import main as genrec  # noqa: E402

VARIANTS = {
    "tiger": None,
    "genplugin": {},
    "no-dsa": {"dsa": False},
    "no-ssg": {"ssg": False},
    "no-rar": {"rar": False},
}
# the `quick` preset's sizes, spelled out (a preset would override these keys), with a smaller step budget
CPU_BUDGET = ["generator.preset=none", "generator.tiger.d_model=64", "generator.tiger.d_ff=256", "generator.tiger.num_heads=4",
              "generator.tiger.d_kv=16", "generator.tiger.num_layers=2", "generator.tiger.num_decoder_layers=2",
              "generator.max_items=10", "generator.train.epochs=2", "generator.train.batch_size=128", "generator.train.lr=0.003",
              "generator.train.warmup_steps=10", "generator.train.max_steps_per_epoch=15", "generator.train.valid_samples=100",
              "generator.train.patience=2", "generator.decode.beam=20", "generator.decode.k=20", "generator.decode.max_samples=300",
              "generator.train.num_threads=2"]


def run(argv: list[str]) -> None:
    rc = genrec(argv)
    if rc != 0:
        raise SystemExit(f"genrec {' '.join(argv)} failed with {rc}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--registry", default="/tmp/genplugin_bench")
    ap.add_argument("--encoder", default="tfidf")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--budget", choices=["cpu", "full"], default="cpu",
                    help="cpu = CPU_BUDGET below; full = params.yaml as is (paper sizes, full training: the GPU table)")
    ap.add_argument("--set", action="append", default=[], help="extra params override for every variant")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--name", default=None, help="results name (default genplugin_ablation_<dataset>)")
    ap.add_argument("--eval-only", action="store_true", help="re-evaluate the variants' existing rankings (no training)")
    args = ap.parse_args()

    from components.data.dataset import Dataset
    from components.evaluation.metrics import evaluate_topk
    from components.registry import ArtifactNotFound, Registry

    reg = Registry(args.registry)
    base = ["--registry", args.registry, "--set", f"data.dataset={args.dataset}", "--set", f"tokenizer.encoder={args.encoder}",
            "--set", f"seed={args.seed}"]
    for kind, cmd in [("dataset", ["prepare"]), ("item-embeddings", ["embed"]), ("retrieval-index", ["retrieval", "build"])]:
        try:
            reg.load(f"{kind}/{args.dataset}@latest")
        except ArtifactNotFound:
            if kind == "dataset":
                run(base + ["data", "fetch", args.dataset])
            run(base + cmd)
    try:
        cb_ref = reg.load(f"codebook/{args.dataset}-rqkmeans@latest").ref
    except ArtifactNotFound:
        run(base + ["tokenize"])
        cb_ref = reg.load(f"codebook/{args.dataset}-rqkmeans@latest").ref
    budget = CPU_BUDGET if args.budget == "cpu" else []
    sets = [x for s in budget + args.set for x in ("--set", s)] + ["--set", f"generator.codebook={cb_ref}"]
    rows = []
    for v in args.variants:
        cfg = VARIANTS[v]
        heads = [] if cfg is None else [{"type": "genplugin", "finetune_epochs": args.finetune_epochs, **cfg}]
        name = f"{args.dataset}-bench-{v}"
        t0 = time.perf_counter()
        metrics_path = Path(args.registry) / f"{name}.train.json"
        if not args.eval_only:
            run(base + sets + ["--set", f"generator.heads={json.dumps(heads)}", "train", "--name", name,
                               "--run-dir", str(Path(args.registry) / ".runs" / f"{name}-{int(time.time())}"),
                               "--no-progress", "--metrics-out", str(metrics_path)])
            run(base + sets + ["rank", "--checkpoint", f"generator/{name}@latest", "--splits", "test", "--no-progress"])
        t_train = time.perf_counter() - t0
        rk = reg.load(f"rankings/{name}@latest")
        arr = rk.load_numpy("rankings.npz")
        ds = Dataset.from_artifact(reg.load(f"dataset/{args.dataset}@latest"))
        ev = evaluate_topk(arr["test_topk"], arr["test_targets"], ds.train_item_counts(), ks=(5, 10))
        tm = json.loads(metrics_path.read_text())
        row = {"variant": v, "n_test": int(ev["n"]), "train_rank_seconds": None if args.eval_only else round(t_train, 1),
               **{f"{m}@{k}": round(float(ev[f"{m}@{k}"]), 4) for k in (5, 10) for m in ("HR", "NDCG", "HR_head", "HR_tail", "NDCG_head", "NDCG_tail")},
               "valid_ndcg@10": tm.get("valid.ndcg@10"), "train_samples_per_s": tm.get("train_samples_per_s"),
               "rar_fallback": tm.get("genplugin.rar_fallback"), "pretrain_valid_ndcg@10": (tm.get("genplugin.pretrain_valid") or {}).get("ndcg@10")}
        rows.append(row)
        print(json.dumps(row))
    write(args.name or f"genplugin_ablation_{args.dataset}", {"dataset": args.dataset, "encoder": args.encoder, "seed": args.seed,
                                                            "budget": budget + args.set, "finetune_epochs": args.finetune_epochs,
                                                            "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
