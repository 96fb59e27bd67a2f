"""Training throughput (samples/s) of TIGER on Industrial (reference SIDs): the ``cpu`` and ``paper``
preset sizes x fp32 / bf16 autocast x 1 / 2 torch threads (CPU) in one run, interleaved so a
change of machine load hits every configuration alike. Each configuration: one warm-up step, then
``--steps`` optimizer steps of batch 256 (full training steps: forward, backward, clip, AdamW),
repeated ``--rounds`` times in rotation; the median round is reported.

    python bench/generator_train.py [--steps 4] [--rounds 3] [--device cpu|cuda]

bf16 on a CPU without native bf16 (no AMX / AVX512-BF16) is emulated and far slower: that is why
``generator.train.bf16: auto`` turns it on only where the CPU has it. On such a CPU the bench
measures emulated bf16 at the ``cpu`` size only (one step per round) and skips it at the ``paper``
size (minutes per step); ``--emulated-bf16`` measures it anyway.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write  # noqa: E402
from components.data import load_minionerec  # noqa: E402
from components.generator.backbones.tiger import TigerBackbone  # noqa: E402
from components.generator.hardware import cpu_native_bf16  # noqa: E402
from components.generator.model import GenerativeRecommender  # noqa: E402
from components.generator.params import GeneratorParams  # noqa: E402
from components.generator.vocab import EncodedHistory, SIDVocab  # noqa: E402
from components.tokenizer.reference import codebook_from_index_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (CPU)")
    ap.add_argument("--out", default="generator_train", help="results name: bench/results/<name>.json")
    ap.add_argument("--emulated-bf16", action="store_true", help="also time paper-size bf16 on a CPU without native bf16")
    args = ap.parse_args()
    device = torch.device(args.device)
    ds = load_minionerec(args.data, name="industrial", max_history=10)
    cb = codebook_from_index_json(Path(args.data) / "reference/minionerec.index.json", ds)
    vocab = SIDVocab.from_codebook(cb)
    tr = ds.splits["train"]
    n = (args.steps + 1) * args.batch
    thread_list = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    configs = []
    for preset in ("cpu", "paper"):
        gp = GeneratorParams(preset=preset).effective()
        torch.manual_seed(0)
        model = GenerativeRecommender(TigerBackbone(vocab, **gp.tiger.model_dump()), [], max_items=10).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        hist = model.encode_history(tr.history[:n]).to(device)
        tgt = vocab.item_tokens[tr.target[:n]].to(device)
        for bf16 in (False, True):
            emulated = bf16 and device.type == "cpu" and not cpu_native_bf16()
            if emulated and preset == "paper" and not args.emulated_bf16:
                print(f"skipping {preset} bf16: this CPU has no native bf16 (emulated; --emulated-bf16 to time it)")
                continue
            for th in thread_list:
                configs.append({"preset": preset, "bf16": bf16, "threads": th, "model": model, "opt": opt, "hist": hist, "tgt": tgt,
                                "params": sum(p.numel() for p in model.parameters()), "dropout": gp.tiger.dropout, "times": [],
                                "steps": 1 if emulated else args.steps})

    def step(c, i):
        sl = slice(i * args.batch, (i + 1) * args.batch)
        h = c["hist"]
        eh = EncodedHistory(h.tokens[sl], h.mask[sl], h.levels[sl], h.slots[sl], h.items[sl])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=c["bf16"]):
            loss = c["model"](eh, c["tgt"][sl]).losses["rec"]
        c["opt"].zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(c["model"].parameters(), 1.0)
        c["opt"].step()

    for r in range(args.rounds):
        for c in configs:
            torch.set_num_threads(c["threads"])
            step(c, 0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(1, c["steps"] + 1):
                step(c, i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            c["times"].append(time.perf_counter() - t0)
            print(f"round {r + 1}: {c['preset']} bf16={c['bf16']} threads={c['threads']}: {c['times'][-1]:.2f} s", flush=True)
    rows = []
    for c in configs:
        sps = c["steps"] * args.batch / statistics.median(c["times"])
        rows.append({"preset": c["preset"], "params": c["params"], "dropout": c["dropout"], "bf16": c["bf16"], "threads": c["threads"],
                     "samples_per_s": round(sps, 1), "epoch_minutes": round(len(tr) / sps / 60, 2)})
        print(json.dumps(rows[-1]))
    for preset in ("cpu", "paper"):
        base = next(r for r in rows if r["preset"] == preset and not r["bf16"] and r["threads"] == thread_list[0])
        for r in rows:
            if r["preset"] == preset:
                r["speedup_vs_fp32_%dthread" % thread_list[0]] = round(r["samples_per_s"] / base["samples_per_s"], 2)
    write(args.out, {"bench": "generator_train", "device": str(device), "cpu_native_bf16": cpu_native_bf16(), "batch": args.batch,
                     "steps": args.steps, "rounds": args.rounds, "torch": torch.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
