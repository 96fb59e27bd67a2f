"""Training throughput (samples/s) of TIGER on Industrial (reference SIDs), quick-preset and
paper-default sizes: ``--steps`` optimizer steps of batch 256 after one warm-up step.

    python bench/generator_train.py [--steps 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.data import load_minionerec  # noqa: E402
from components.generator.backbones.tiger import TigerBackbone  # noqa: E402
from components.generator.model import GenerativeRecommender  # noqa: E402
from components.generator.params import GeneratorParams  # noqa: E402
from components.generator.vocab import SIDVocab  # noqa: E402
from components.tokenizer.reference import codebook_from_index_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/generator_train.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = load_minionerec(args.data, name="industrial", max_history=10)
    cb = codebook_from_index_json(Path(args.data) / "reference/minionerec.index.json", ds)
    vocab = SIDVocab.from_codebook(cb)
    tr = ds.splits["train"]
    rows = []
    for preset in ["quick", "none"]:
        gp = GeneratorParams(preset=preset).effective()
        torch.manual_seed(0)
        model = GenerativeRecommender(TigerBackbone(vocab, **gp.tiger.model_dump()), [], max_items=10).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        bf16 = device.type == "cuda"

        def step(i):
            sl = slice(i * args.batch, (i + 1) * args.batch)
            h = model.encode_history(tr.history[sl])
            tg = vocab.item_tokens[tr.target[sl]].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(h, tg).losses["rec"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(1, args.steps + 1):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        row = {"preset": preset, "params": sum(p.numel() for p in model.parameters()), "samples_per_s": args.steps * args.batch / dt,
               "epoch_minutes": len(tr) / (args.steps * args.batch / dt) / 60}
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    Path(args.out).write_text(json.dumps({"bench": "generator_train", "device": str(device), "threads": args.threads, "batch": args.batch,
                                          "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
