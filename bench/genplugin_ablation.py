"""TIGER vs TIGER+GenPlugin and its ablations (w/o DSA, w/o SSG, w/o its KL alone, w/o RAR, RAR with the BM25 or the
collaborative retrieval path alone: ``rar_paths``) through the experiment
code: each variant is an experiment block (``VARIANTS``) run by
``components.experiment.ablation.run_variants`` with the params' preset (``cpu`` by default: trained
to early stopping, every test sample ranked), seeds and resume; the report is
``reports/genplugin_ablation-<dataset>.md`` (overall and head/tail HR/NDCG, bias, mean ± std,
change vs TIGER).

    python bench/genplugin_ablation.py [--dataset ml-100k] [--variants tiger tiger-genplugin gp-no-dsa ...]
        [--seeds 3] [--registry /tmp/genplugin_bench] [--set generator.preset=paper ...]

Missing inputs (dataset, item embeddings, codebook, retrieval index) are built first. The default
registry is a scratch one, so the ML-100k runs stay out of the pipeline's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write  # noqa: E402
from components.experiment.ablation import add_common_args, run_variants  # noqa: E402

GP = {"type": "genplugin"}
VARIANTS = {
    "tiger": {},
    "tiger-genplugin": {"generator": {"heads": [GP]}},
    "gp-no-dsa": {"generator": {"heads": [{**GP, "dsa": False}]}},
    "gp-no-ssg": {"generator": {"heads": [{**GP, "ssg": False}]}},
    "gp-no-kl": {"generator": {"heads": [{**GP, "lambda_kl": 0.0}]}},  # SSG's substitution kept, its symmetric KL dropped
    "gp-no-rar": {"generator": {"heads": [{**GP, "rar": False}]}},
    "gp-bm25-only": {"generator": {"heads": [{**GP, "rar_paths": "bm25"}]}},  # RAR with the content path alone
    "gp-cf-only": {"generator": {"heads": [{**GP, "rar_paths": "cf"}]}},  # RAR with the collaborative path alone
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=None, help="results / report name (default genplugin_ablation-<dataset>)")
    add_common_args(ap)
    ap.set_defaults(registry="/tmp/genplugin_bench")
    args = ap.parse_args()
    name = args.out or f"genplugin_ablation-{args.dataset}"
    res = run_variants({v: VARIANTS[v] for v in args.variants}, name=name, reference="tiger", seeds=args.seeds, params_path=args.params,
                       overrides=[f"data.dataset={args.dataset}", *args.set], registry_root=args.registry, need_retrieval=True,
                       dry_run=args.dry_run)
    if not args.dry_run:
        write(name, {"command": "python bench/genplugin_ablation.py " + " ".join(sys.argv[1:]), "report": f"reports/{name}.md",
                     "methods": res["methods"], "std": res["std"], "change_vs": res["change_vs"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
