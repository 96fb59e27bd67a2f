"""CARE on TIGER: accuracy / diversity / ablations and the time overhead vs plain TIGER, one command.

Every variant is the generator's ``quick`` preset (``generator.preset=quick``) on Industrial with the
released MiniOneRec SIDs, trained and ranked through the same core `genrec train` / `genrec rank` run
(Trainer, constrained beam search); each row corresponds to ``--set generator.heads=<heads>``:

    python bench/care_ablation.py [--variants tiger,care,no_reasoning,no_pa,no_div] [--seed 2024]

Metrics on the first ``decode.max_samples`` test rows (HR/NDCG@5/10, DivR@10, ORR@10 from
``components.evaluation.metrics.evaluate_topk``). Time overhead: (1) the Trainer's training time
(validation excluded) and the ranking wall time of each variant, (2) an interleaved micro-benchmark
(one training step of batch 256 and one decoding batch of 64 requests, beam 20, alternating
TIGER / TIGER+CARE, median of ``--rounds``), which is what the overhead ratio is taken from on a
shared machine.
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
from components.data import load_minionerec  # noqa: E402
from components.evaluation.metrics import evaluate_topk  # noqa: E402
from components.generator.commands import build_model  # noqa: E402
from components.generator.decoding import SIDTrie, constrained_beam_search  # noqa: E402
from components.generator.model import seed_everything  # noqa: E402
from components.generator.params import GeneratorParams  # noqa: E402
from components.generator.ranking import rank_histories  # noqa: E402
from components.generator.train import Trainer  # noqa: E402
from components.generator.vocab import SIDVocab  # noqa: E402
from components.tokenizer.reference import codebook_from_index_json  # noqa: E402

CARE = {"type": "care", "alpha": 0.7}
VARIANTS = {
    "tiger": [],
    "care": [CARE],
    "no_reasoning": [{**CARE, "queries": "zeros"}],  # n_t = 0 at every step (progressive mask on the fed tokens)
    "no_pa": [{**CARE, "progressive": False}],
    "no_div": [{**CARE, "alpha": 0.0}],
}


def heads_for(name: str, n_levels: int) -> list[dict]:
    heads = [dict(h) for h in VARIANTS[name]]
    for h in heads:
        if h.get("queries") == "zeros":
            h["queries"] = "-".join(["0"] * n_levels)
    return heads


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="train.max_steps_per_epoch override (0 = the preset's 30)")
    ap.add_argument("--valid", type=int, default=0, help="train.valid_samples override (0 = the preset's 200)")
    ap.add_argument("--test", type=int, default=0, help="decode.max_samples override (0 = the preset's 500)")
    ap.add_argument("--out", default="care_ablation_industrial")
    ap.add_argument("--timing-only", action="store_true", help="only the interleaved timing + FLOP counts (untrained weights), "
                                                                  "merged into an existing results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_minionerec(args.data, name="industrial", max_history=10)
    cb = codebook_from_index_json(Path(args.data) / "reference/minionerec.index.json", ds)
    vocab = SIDVocab.from_codebook(cb)
    trie = SIDTrie(cb.sids, cb.sizes)
    counts = ds.train_item_counts()
    test = ds.splits["test"]
    rows, models = [], {}
    if args.timing_only:
        import json

        from bench.common import RESULTS

        for name in ("tiger", "care"):
            seed_everything(args.seed)
            models[name] = build_model(GeneratorParams(preset="cpu", heads=heads_for(name, vocab.n_levels)).effective(), vocab, 10)
        timing = interleaved_timing(models, ds, vocab, trie, args.rounds)
        timing["flops"] = flop_counts(models, ds, vocab, trie)
        print(timing)
        path = RESULTS / f"{args.out}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update({"timing": timing, "timing_command": "python bench/care_ablation.py " + " ".join(sys.argv[1:])})
        path.write_text(json.dumps(old, indent=2) + "\n")
        return 0
    for name in args.variants.split(","):
        heads = heads_for(name, vocab.n_levels)
        gp = GeneratorParams(preset="cpu", heads=heads).effective()
        upd = {"device": "cpu", "num_threads": args.threads}
        upd.update({"max_steps_per_epoch": args.steps} if args.steps else {})
        upd.update({"valid_samples": args.valid} if args.valid else {})
        tp = gp.train.model_copy(update=upd)
        if args.test:
            gp = gp.model_copy(update={"decode": gp.decode.model_copy(update={"max_samples": args.test})})
        seed_everything(args.seed)
        model = build_model(gp, vocab, max_items=10)
        res = Trainer(model, ds, trie, tp, seed=args.seed, eval_beam=gp.decode.beam, progress=False).fit()
        model.load_state_dict(res.best_state)
        n = min(len(test), gp.decode.max_samples)
        t0 = time.perf_counter()
        topk, _ = rank_histories(model, trie, test.history[:n], k=gp.decode.k, beam=gp.decode.beam, batch_size=gp.decode.batch_size)
        rank_s = time.perf_counter() - t0
        m = evaluate_topk(topk, test.target[:n], counts, ks=(5, 10))
        row = {"variant": name, "heads": heads, "n_test": n, "best_epoch": res.best_epoch,
               **{k: float(m[k]) for k in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "DivR@10", "ORR@10")},
               "train_seconds": round(res.train_seconds, 2), "rank_seconds": round(rank_s, 2),
               "params": sum(p.numel() for p in model.parameters())}
        row.update({"train_steps": res.epochs_run * res.extra["steps_per_epoch"], "valid_samples": res.extra["valid_samples"]})
        rows.append(row)
        models[name] = model
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "heads"}, flush=True)
    timing = interleaved_timing(models, ds, vocab, trie, args.rounds) if {"tiger", "care"} <= set(models) else {}
    if timing:
        timing["flops"] = flop_counts(models, ds, vocab, trie)
        print(timing)
    write(args.out, {"command": "python bench/care_ablation.py " + " ".join(sys.argv[1:]), "seed": args.seed,
                     "preset": "quick", "dataset": "Industrial (MiniOneRec split, reference SIDs)", "sid_levels": vocab.n_levels,
                     "threads": args.threads, "rows": rows, "timing": timing})
    return 0


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
