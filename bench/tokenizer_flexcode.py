"""RQ-KMeans vs FlexCode on Industrial: codebook statistics side by side, and (``--tiger``) TIGER
trained on each codebook's SIDs with the generator's ``quick`` preset, evaluated on test
(overall and head/tail HR@10, NDCG@10, DGU@10 via ``components.evaluation.metrics.evaluate_topk``).

    python bench/tokenizer_flexcode.py [--tiger] [--threads 1]

Embeddings: tfidf (TF-IDF + SVD, 128-d, fitted on the catalog; CPU-cheap). CF view: TruncatedSVD
of the training item-user matrix (``cf_source: mf``; no SASRec artifact in this run). Both codebooks
are 3 x 256 with ``collisions: extra_level``. The TIGER figures are 2-core CPU ``quick``-preset
figures (2 short epochs, first 500 test users): a smoke comparison, not the paper-size result.
Writes ``bench/results/tokenizer_flexcode.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "Industrial_and_Scientific"


def tiger_quick(cb, ds, seed: int, threads: int) -> dict:
    import torch

    from components.evaluation.metrics import evaluate_topk
    from components.generator.commands import build_model
    from components.generator.decoding import SIDTrie
    from components.generator.model import seed_everything
    from components.generator.params import GeneratorParams
    from components.generator.ranking import rank_histories
    from components.generator.train import Trainer
    from components.generator.vocab import SIDVocab

    gp = GeneratorParams(preset="cpu").effective()
    gp.train.device, gp.train.num_threads = "cpu", threads
    torch.set_num_threads(threads)
    seed_everything(seed)
    vocab = SIDVocab.from_codebook(cb)
    model = build_model(gp, vocab, ds.max_history)
    trie = SIDTrie(cb.sids, cb.sizes)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        res = Trainer(model, ds, trie, gp.train, seed=seed, eval_beam=gp.decode.beam, run_dir=run_dir, progress=True).fit()
    model.load_state_dict(res.best_state)
    t_train = time.perf_counter() - t0
    sp = ds.splits["test"]
    n = min(len(sp), gp.decode.max_samples)
    t0 = time.perf_counter()
    topk, _ = rank_histories(model, trie, sp.history[:n], k=gp.decode.k, beam=gp.decode.beam, batch_size=gp.decode.batch_size, progress=True, desc="test")
    m = evaluate_topk(topk, sp.target[:n], ds.train_item_counts(), ks=(10,))
    keep = ["HR@10", "NDCG@10", "HR_head@10", "NDCG_head@10", "HR_tail@10", "NDCG_tail@10", "DGU@10", "MGU@10", "DivR@10", "invalid@10"]
    return {"n_test": n, "n_head": m["n_head"], "n_tail": m["n_tail"], **{k: float(m[k]) for k in keep if k in m},
            "train_seconds": round(t_train, 1), "rank_seconds": round(time.perf_counter() - t0, 1), "best_epoch": res.best_epoch}


def main() -> None:
    import torch

    from components.data import load_minionerec
    from components.tokenizer.encoders import embed_dataset, make_encoder
    from components.tokenizer.flexcode import CFView, mf_item_embeddings
    from components.tokenizer.params import TokenizerParams
    from components.tokenizer.tokenize import build_codebook

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--tiger", action="store_true", help="also train + evaluate TIGER (quick preset) on both codebooks")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on the shared 2-core box)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokenizer_flexcode.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = load_minionerec(a.data, name="industrial", max_history=10)
    base = TokenizerParams(encoder="tfidf", collisions="extra_level")
    t0 = time.perf_counter()
    emb = embed_dataset(ds, base, make_encoder(base, seed=a.seed), seed=a.seed)
    print(f"tfidf embeddings {emb.shape} in {time.perf_counter() - t0:.1f} s")
    counts = ds.train_item_counts()
    cf = CFView(mf_item_embeddings(ds.train_sequences(), ds.n_items, base.flexcode.mf_dim, a.seed), "mf")
    out: dict = {"date": time.strftime("%Y-%m-%d"), "machine": "2-core CPU (dev box, shared)", "embeddings": "tfidf (128-d)", "cf_view": "mf (TruncatedSVD 64)", "methods": {}}
    cbs = {}
    for method in ("rqkmeans", "flexcode"):
        p = base.model_copy(update={"method": method})
        t0 = time.perf_counter()
        cb = build_codebook(emb, ds.item_ids, p, counts, seed=a.seed, progress=True, cf_view=cf)
        st = {k: v for k, v in cb.stats.items()}
        if "flexcode" in st:
            st["flexcode"] = {k: v for k, v in st["flexcode"].items() if k != "cf_tokens"}
        st["seconds"] = round(time.perf_counter() - t0, 1)
        out["methods"][method] = {"stats": st}
        cbs[method] = cb
        print(method, "sizes", cb.sizes, "raw collisions", st["collisions_raw"], "left", cb.n_collisions(), f"{st['seconds']} s")
    print("\n| method | level | size | util. | entropy (bits) | Gini (pop.) | top token share | prefix coll. | prefix err. (tfidf) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, r in out["methods"].items():
        for lv in r["stats"]["levels"]:
            print(f"| {m} | {lv['level']} | {lv['size']} | {lv['utilization']:.3f} | {lv['entropy']:.2f} | {lv['gini']:.3f} | {lv['top_token_share']:.3f} | {lv['prefix_collisions']} | {lv['prefix_error']:.3f} |")
    fa = out["methods"]["flexcode"]["stats"]["flexcode"]
    print("\nflexcode allocation:", json.dumps(fa["allocation"]), "\nsplit:", json.dumps(fa["token_split"]))
    if a.tiger:
        for m, cb in cbs.items():
            r = tiger_quick(cb, ds, a.seed, a.threads)
            out["methods"][m]["tiger_quick"] = r
            print(m, json.dumps(r))
        print("\n| SIDs | HR@10 | NDCG@10 | HR@10 head | HR@10 tail | NDCG@10 head | NDCG@10 tail | DGU@10 | train s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for m, r in out["methods"].items():
            t = r["tiger_quick"]
            print(f"| {m} | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} | {t['HR_head@10']:.4f} | {t['HR_tail@10']:.4f} | {t['NDCG_head@10']:.4f} | {t['NDCG_tail@10']:.4f} | {t['DGU@10']:.4f} | {t['train_seconds']} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
