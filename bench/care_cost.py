"""CARE's cost against TIGER (issue 16 item 4): FLOPs of one training step and of one constrained
beam-search call (``torch.utils.flop_counter.FlopCounterMode``), wall time of both interleaved in
one run (the same machine load hits every model), and the memory each phase adds (each model and
phase in its own subprocess: resident-memory growth on a CPU, ``torch.cuda.max_memory_allocated``
on a GPU). Models are the
``cpu`` (or ``--preset paper``) TIGER with and without the CARE head (queries auto, alpha 0.7; also
each query schedule given by ``--queries``), on Industrial with its reference SIDs.

    python bench/care_cost.py [--preset cpu] [--queries 1-1-2-2,1-1-4-4,2-2-4-4] [--steps 5] [--rounds 3]

Paper anchor (GPU): +4.9% training, +1.5% inference time. Writes ``bench/results/care_cost_<preset>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(preset: str, heads: list, data: str, batch: int, steps: int, device: str):
    import torch

    from components.data import load_minionerec
    from components.generator.commands import build_model
    from components.generator.decoding import build_trie
    from components.generator.params import GeneratorParams
    from components.generator.vocab import SIDVocab
    from components.tokenizer.reference import codebook_from_index_json

    ds = load_minionerec(data, name="industrial", max_history=10)
    cb = codebook_from_index_json(Path(data) / "reference/minionerec.index.json", ds)
    vocab = SIDVocab.from_codebook(cb)
    gp = GeneratorParams(preset=preset).effective().model_copy(update={"heads": heads})
    torch.manual_seed(0)
    model = build_model(gp, vocab, max_items=10).to(device)
    tr = ds.splits["train"]
    n = (steps + 1) * batch
    hist = model.encode_history(tr.history[:n]).to(device)
    tgt = vocab.item_tokens[tr.target[:n]].to(device)
    test_hist = model.encode_history(ds.splits["test"].history[:batch]).to(device)
    trie = build_trie(cb.sids, cb.sizes).to(device)
    return model, hist, tgt, test_hist, trie


def _slice(h, sl):
    from components.generator.vocab import EncodedHistory

    return EncodedHistory(h.tokens[sl], h.mask[sl], h.levels[sl], h.slots[sl], h.items[sl])


def _train_step(model, opt, hist, tgt, i, batch):
    import torch

    sl = slice(i * batch, (i + 1) * batch)
    out = model(_slice(hist, sl), tgt[sl])
    loss = sum(out.losses.values())
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _rank(model, test_hist, trie, beam: int):
    import torch

    from components.generator.decoding import constrained_beam_search

    with torch.no_grad():
        constrained_beam_search(model.eval(), test_hist, trie, beam=beam, k=10)
    model.train()


class _PeakRSS:
    """Peak resident memory while the block runs, sampled from /proc every 0.5 ms (Linux), minus
    the resident memory at its start: what the block itself allocates (``ru_maxrss`` would report
    the process's whole-life peak, here the dataset loading)."""

    def __enter__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                self._stop.wait(0.0005)

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.growth_mb = (self.peak - self.start) / 2**20


def child(args) -> None:
    """One model and one phase in its own process: the memory that phase adds (a fresh allocator)."""
    import gc

    import torch

    heads = json.loads(args.heads)
    model, hist, tgt, test_hist, trie = _setup(args.preset, heads, args.data, args.batch, 1, args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gc.collect()
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _PeakRSS() as m:
        if args.child == "train":
            model.train()
            _train_step(model, opt, hist, tgt, 0, args.batch)
        else:
            _rank(model, test_hist, trie, args.beam)
    out = {"rss_growth_mb": m.growth_mb}
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--queries", default="1-1-2-2,1-1-4-4,2-2-4-4", help="extra CARE query schedules (comma-separated)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=["train", "rank"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--heads", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.common import write

    variants = {"tiger": [], "care (queries auto)": [{"type": "care", "alpha": 0.7}]}
    for q in filter(None, args.queries.split(",")):
        variants[f"care {q}"] = [{"type": "care", "alpha": 0.7, "queries": q}]
    cfg = {}
    for name, heads in variants.items():
        model, hist, tgt, test_hist, trie = _setup(args.preset, heads, args.data, args.batch, args.steps, args.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        with FlopCounterMode(display=False) as fc:
            _train_step(model, opt, hist, tgt, 0, args.batch)
        train_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            _rank(model, test_hist, trie, args.beam)
        cfg[name] = {"model": model, "opt": opt, "hist": hist, "tgt": tgt, "test_hist": test_hist, "trie": trie, "heads": heads,
                     "params": sum(p.numel() for p in model.parameters()), "train_gflops_per_step": train_flops / 1e9,
                     "rank_gflops_per_call": fc.get_total_flops() / 1e9, "train_s": [], "rank_s": []}
        print(f"{name}: {cfg[name]['params']:,} parameters, {train_flops / 1e9:.2f} GFLOP/train step, "
              f"{cfg[name]['rank_gflops_per_call']:.2f} GFLOP/rank call", flush=True)
    for r in range(args.rounds):  # interleaved: every model sees the same load
        for name, c in cfg.items():
            t0 = time.perf_counter()
            for i in range(1, args.steps + 1):
                _train_step(c["model"], c["opt"], c["hist"], c["tgt"], i, args.batch)
            c["train_s"].append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter()
            _rank(c["model"], c["test_hist"], c["trie"], args.beam)
            c["rank_s"].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: train {c['train_s'][-1] * 1000:.0f} ms/step, rank {c['rank_s'][-1] * 1000:.0f} ms/call", flush=True)
    rows = {}
    for name, c in cfg.items():
        mem = {}
        for phase in ("train", "rank"):
            proc = subprocess.run([sys.executable, __file__, "--child", phase, "--preset", args.preset, "--data", args.data,
                                   "--batch", str(args.batch), "--beam", str(args.beam), "--device", args.device, "--heads", json.dumps(c["heads"])],
                                  capture_output=True, text=True, check=True)
            res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
            mem.update({f"{phase}_{k}": v for k, v in res.items()})
        rows[name] = {"params": c["params"], "train_gflops_per_step": round(c["train_gflops_per_step"], 3),
                      "rank_gflops_per_call": round(c["rank_gflops_per_call"], 3),
                      "train_ms_per_step": round(1000 * statistics.median(c["train_s"]), 1),
                      "rank_ms_per_call": round(1000 * statistics.median(c["rank_s"]), 1), **{k: round(v, 1) for k, v in mem.items()}}
    base = rows["tiger"]
    for row in rows.values():
        for k in ("train_gflops_per_step", "rank_gflops_per_call", "train_ms_per_step", "rank_ms_per_call"):
            row[k + "_vs_tiger"] = round(row[k] / base[k], 3)
    write(f"care_cost_{args.preset}", {"preset": args.preset, "batch": args.batch, "beam": args.beam, "steps": args.steps,
                                        "rounds": args.rounds, "device": args.device, "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
