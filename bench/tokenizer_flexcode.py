"""RQ-KMeans vs FlexCode on Industrial: codebook statistics side by side, and (``--tiger``) TIGER
trained on each method's SIDs through the experiment code (variants ``tiger-rqkmeans`` and
``tiger-flexcode`` with ``codebook: rqkmeans | flexcode``, the params' preset, every test sample
ranked, seeds; report ``reports/tokenizer_flexcode.md``).

    python bench/tokenizer_flexcode.py [--tiger [--seeds 3]] [--threads 1]

Embeddings: tfidf (TF-IDF + SVD, 128-d, fitted on the catalog; CPU-cheap). CF view: TruncatedSVD
of the training item-user matrix (``cf_source: mf``; no SASRec artifact in this run). Both codebooks
are 3 x 256 with ``collisions: extra_level``. The TIGER part uses the pipeline's embeddings and
builds the two codebooks in the registry when missing (``genrec tokenize``).
Writes ``bench/results/tokenizer_flexcode.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "Industrial_and_Scientific"


def main() -> None:
    import torch

    from components.data import load_minionerec
    from components.tokenizer.encoders import embed_dataset, make_encoder
    from components.tokenizer.flexcode import CFView, mf_item_embeddings
    from components.tokenizer.params import TokenizerParams
    from components.tokenizer.tokenize import build_codebook

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--tiger", action="store_true", help="also train + evaluate TIGER (the params' preset) on both methods' SIDs")
    ap.add_argument("--seeds", type=int, default=1, help="--tiger: runs per variant")
    ap.add_argument("--set", action="append", default=[], help="--tiger: params override for both variants")
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
        from components.experiment.ablation import run_variants

        res = run_variants({"tiger-rqkmeans": {"codebook": "rqkmeans"}, "tiger-flexcode": {"codebook": "flexcode"}},
                           name="tokenizer_flexcode", reference="tiger-rqkmeans", seeds=a.seeds, overrides=a.set)
        out["tiger"] = {"report": "reports/tokenizer_flexcode.md", "methods": res["methods"], "std": res["std"], "change_vs": res["change_vs"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
