"""Constrained beam search: ours (tensor trie, KV cache) vs HF ``generate(prefix_allowed_tokens_fn=...)``
over a dict trie, on the same TIGER-sized T5 (random weights), Industrial's 3,686 reference SIDs,
histories of up to 10 items from the test split, beam 20, 10 returned. Checks the top-10 lists are
identical and reports ms per batch / per request and the speed ratio.

    python bench/generator_decoding.py [--batches 1 256] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.data import load_minionerec  # noqa: E402
from components.generator.backbones.tiger import TigerBackbone  # noqa: E402
from components.generator.decoding import SIDTrie, constrained_beam_search  # noqa: E402
from components.generator.model import GenerativeRecommender  # noqa: E402
from components.generator.vocab import SIDVocab  # noqa: E402
from components.tokenizer.reference import codebook_from_index_json  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_interleaved(fns, device, repeats):
    """Median seconds of each function, runs interleaved (a, b, c, a, b, c, ...) so that load
    changes on a shared machine hit every contender alike; one warm-up run each."""
    outs = [fn() for fn in fns]
    sync(device)
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts[i].append(time.perf_counter() - t0)
    return outs, [float(np.median(t)) for t in ts]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/Industrial_and_Scientific"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/generator_decoding.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = load_minionerec(args.data, name="industrial", max_history=10)
    cb = codebook_from_index_json(Path(args.data) / "reference/minionerec.index.json", ds)
    vocab = SIDVocab.from_codebook(cb)
    torch.manual_seed(0)
    model = GenerativeRecommender(TigerBackbone(vocab), [], max_items=10).to(device).eval()
    trie = SIDTrie(cb.sids, cb.sizes).to(device)
    allowed = trie.allowed_tokens_dict(vocab.offsets)
    L = vocab.n_levels
    t5 = model.backbone.t5

    def prefix_fn(batch_id, ids):
        return allowed.get(tuple(ids[1:].tolist()), [0])

    rows = []
    for B in args.batches:
        hist = model.encode_history(ds.splits["test"].history[:B])

        def ours():
            with torch.no_grad():
                return constrained_beam_search(model, hist, trie, beam=args.beam, k=args.k)

        def hf(constrained=True):
            with torch.no_grad():
                return t5.generate(input_ids=hist.tokens, attention_mask=hist.mask.long(), num_beams=args.beam,
                                   num_return_sequences=args.k, max_new_tokens=L, min_new_tokens=L, do_sample=False,
                                   early_stopping=True, length_penalty=0.0,
                                   prefix_allowed_tokens_fn=prefix_fn if constrained else None)

        reps = args.repeats if B > 16 else args.repeats * 5
        (res, out, _), (t_ours, t_hf, t_free) = timed_interleaved([ours, hf, lambda: hf(False)], device, reps)
        hf_items = vocab.decode(out[:, 1:].reshape(-1, L)).reshape(B, args.k)
        same = bool(np.array_equal(hf_items, res.items.cpu().numpy()))
        row = {"batch": B, "ours_ms": t_ours * 1e3, "hf_constrained_ms": t_hf * 1e3, "hf_unconstrained_ms": t_free * 1e3,
               "ours_ms_per_request": t_ours * 1e3 / B, "hf_ms_per_request": t_hf * 1e3 / B,
               "speedup_vs_hf_constrained": t_hf / t_ours, "identical_top10": same}
        rows.append(row)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}))
    result = {"bench": "generator_decoding", "device": str(device), "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "model": "TIGER T5 4+4 layers, d_model 128, 6x64 heads, FFN 1024, random weights",
              "catalog": f"{cb.n_items} SIDs, {L} levels {cb.sizes}", "beam": args.beam, "k": args.k, "history_items": 10,
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
