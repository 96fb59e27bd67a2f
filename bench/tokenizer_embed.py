"""Embedding throughput (items/s) of the MiniLM encoder on Industrial item text.

    python bench/tokenizer_embed.py --n 256 --batch-size 64 --threads 2 [--device cuda]

Times ``encode`` on the first ``n`` items (after loading the model and one warm-up batch).
Writes ``bench/results/tokenizer_embed_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from components.data import load_minionerec
    from components.tokenizer.encoders import SentenceTransformerEncoder, item_texts
    from components.tokenizer.params import TokenizerParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Industrial_and_Scientific"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = load_minionerec(a.data, name="industrial", max_history=10)
    p = TokenizerParams()
    texts = item_texts(ds.item_ids, ds.item_text, p.text_fields, p.max_field_chars)[: a.n]
    enc = SentenceTransformerEncoder(None, device=a.device, batch_size=a.batch_size, progress=False)
    enc.encode(texts[: a.batch_size])  # warm-up
    t0 = time.perf_counter()
    emb = enc.encode(texts)
    dt = time.perf_counter() - t0
    row = {"encoder": "minilm", "device": a.device, "threads": a.threads, "n": len(texts), "batch_size": a.batch_size, "seconds": round(dt, 2), "items_per_s": round(len(texts) / dt, 1), "dim": int(emb.shape[1]), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(row))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / f"tokenizer_embed_{a.device.split(':')[0]}.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
