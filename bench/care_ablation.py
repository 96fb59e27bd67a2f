"""CARE on TIGER: accuracy / diversity / ablations / query scaling (trained models, through the
experiment code) and the time overhead vs plain TIGER (interleaved micro-benchmark), one command.

    python bench/care_ablation.py [--variants tiger tiger-care care-no-reasoning ...] [--seeds 3]
        [--set generator.preset=cpu ...] [--registry artifacts] [--timing-only]

Accuracy: every variant is an experiment variant block (``VARIANTS``) run by
``components.experiment.ablation.run_variants``: the params' preset (``cpu`` by default: trained to
early stopping), the pipeline's dataset and codebook, every test sample ranked, seeds, resume, and
the report ``reports/care_ablation.md`` (HR/NDCG@5/10, DivR@10, ORR@10, DGU/MGU@10, token-level
bias per level, mean ± std, change vs TIGER). ``tiger`` and ``tiger-care`` are the same blocks as
params.yaml's, so finished pipeline runs are reused.

Time overhead: an interleaved micro-benchmark (one training step of batch 256 and one decoding
batch of 64 requests, beam 20, alternating TIGER / TIGER+CARE at the preset's size, median of
``--rounds``) plus FLOP counts, which is what the overhead ratio is taken from on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write  # noqa: E402
from components.experiment.ablation import add_common_args, run_variants  # noqa: E402
from components.generator.commands import build_model  # noqa: E402
from components.generator.decoding import SIDTrie, constrained_beam_search  # noqa: E402
from components.generator.model import seed_everything  # noqa: E402
from components.generator.params import GeneratorParams  # noqa: E402
from components.generator.vocab import SIDVocab  # noqa: E402

CARE = {"type": "care", "alpha": 0.7}  # queries auto: 1-1-2-2 on a 4-level codebook
VARIANTS = {
    "tiger": {},
    "tiger-care": {"generator": {"heads": [CARE]}},
    "care-no-reasoning": {"generator": {"heads": [{**CARE, "queries": "0-0-0-0"}]}},  # n_t = 0: progressive mask on the fed tokens only
    "care-no-pa": {"generator": {"heads": [{**CARE, "progressive": False}]}},
    "care-no-div": {"generator": {"heads": [{**CARE, "alpha": 0.0}]}},
    "care-q1144": {"generator": {"heads": [{**CARE, "queries": "1-1-4-4"}]}},
    "care-q2244": {"generator": {"heads": [{**CARE, "queries": "2-2-4-4"}]}},
    # the paper's history encoding (the backbone's standard encoder mask; only the queries restricted)
    "care-std-history": {"generator": {"heads": [{**CARE, "progressive_history": False}]}},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--timing-only", action="store_true", help="only the interleaved timing + FLOP counts (untrained weights)")
    ap.add_argument("--out", default="care_ablation")
    add_common_args(ap)
    args = ap.parse_args()
    result = {}
    if not args.timing_only:
        result = run_variants({v: VARIANTS[v] for v in args.variants}, name=args.out, reference="tiger", seeds=args.seeds,
                              params_path=args.params, overrides=args.set, registry_root=args.registry, dry_run=args.dry_run)
        if args.dry_run:
            return 0
    timing = care_timing(args)
    write(args.out, {"command": "python bench/care_ablation.py " + " ".join(sys.argv[1:]), "report": f"reports/{args.out}.md",
                     "methods": result.get("methods"), "std": result.get("std"), "change_vs": result.get("change_vs"),
                     "token_bias": result.get("token_bias"), "timing": timing})
    return 0


def care_timing(args) -> dict:
    from components.params import load_params
    from components.registry import Registry
    from components.tokenizer.codebook import Codebook
    from components.data.dataset import Dataset

    params = load_params(args.params, args.set)
    reg = Registry(args.registry or params.registry.root)
    ds = Dataset.from_artifact(reg.load(f"dataset/{params.data.dataset}@latest"))
    cb = Codebook.from_artifact(reg.load(f"codebook/{params.data.dataset}-{params.tokenizer.method}@latest"))
    vocab = SIDVocab.from_codebook(cb)
    trie = SIDTrie(cb.sids, cb.sizes)
    gp = params.generator.effective()
    models = {}
    for name, heads in (("tiger", []), ("care", [CARE])):
        seed_everything(params.seed)
        models[name] = build_model(GeneratorParams.model_validate({**gp.model_dump(), "heads": heads}), vocab, ds.max_history)
    torch.set_num_threads(2)
    timing = interleaved_timing(models, ds, vocab, trie, args.rounds)
    timing["flops"] = flop_counts(models, ds, vocab, trie)
    print(timing)
    return timing


def interleaved_timing(models, ds, vocab, trie, rounds: int) -> dict:
    tr = ds.splits["train"]
    hist = models["tiger"].encode_history(tr.history[:256])
    tg = vocab.item_tokens[torch.as_tensor(tr.target[:256])]
    dec_hist = models["tiger"].encode_history(ds.splits["test"].history[:64])
    opts = {k: torch.optim.AdamW(models[k].parameters(), lr=1e-5) for k in ("tiger", "care")}
    t_train = {k: [] for k in opts}
    t_dec = {k: [] for k in opts}
    for r in range(rounds + 1):
        for k in ("tiger", "care"):
            m = models[k].train()
            t0 = time.perf_counter()
            loss = sum(m(hist, tg).losses.values())
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            dt = time.perf_counter() - t0
            m.eval()
            t0 = time.perf_counter()
            constrained_beam_search(m, dec_hist, trie, beam=20, k=10)
            dd = time.perf_counter() - t0
            if r:  # round 0 warms up
                t_train[k].append(dt)
                t_dec[k].append(dd)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return {"train_step_s": {k: med(v) for k, v in t_train.items()}, "decode_batch64_s": {k: med(v) for k, v in t_dec.items()},
            "train_overhead": med(t_train["care"]) / med(t_train["tiger"]) - 1,
            "inference_overhead": med(t_dec["care"]) / med(t_dec["tiger"]) - 1, "rounds": rounds}


def flop_counts(models, ds, vocab, trie) -> dict:
    """Matmul/attention FLOPs (torch.utils.flop_counter) of one training step (forward + backward,
    batch 256) and one constrained beam search (64 requests, beam 20): machine-independent."""
    from torch.utils.flop_counter import FlopCounterMode

    tr = ds.splits["train"]
    out = {}
    for k in ("tiger", "care"):
        m = models[k]
        hist = m.encode_history(tr.history[:256])
        tg = vocab.item_tokens[torch.as_tensor(tr.target[:256])]
        m.train()
        with FlopCounterMode(display=False) as fc:
            sum(m(hist, tg).losses.values()).backward()
        m.zero_grad(set_to_none=True)
        train_f = fc.get_total_flops()
        m.eval()
        with FlopCounterMode(display=False) as fc:
            constrained_beam_search(m, m.encode_history(ds.splits["test"].history[:64]), trie, beam=20, k=10)
        out[k] = {"train_step_gflops": train_f / 1e9, "decode_batch64_gflops": fc.get_total_flops() / 1e9}
    out["train_ratio"] = out["care"]["train_step_gflops"] / out["tiger"]["train_step_gflops"]
    out["decode_ratio"] = out["care"]["decode_batch64_gflops"] / out["tiger"]["decode_batch64_gflops"]
    return out


if __name__ == "__main__":
    sys.exit(main())
