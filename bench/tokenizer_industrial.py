"""The three tokenizer methods on Industrial with real MiniLM embeddings, next to MiniOneRec's SIDs.

    python bench/tokenizer_industrial.py --registry artifacts [--rqvae-epochs 200]

Embeddings are cached as an ``item-embeddings/industrial`` artifact in the registry (embedding
3,686 items takes minutes on 2 CPU cores). Every method runs with 3 x 256 codes and
``collisions=reassign`` so its SIDs stay 3 tokens like the released ones; the released
MiniOneRec SIDs (3 x 256, 16 collisions left unresolved) get the same statistics, with the
embedding-space prefix error measured on our MiniLM embeddings. Writes
``bench/results/tokenizer_industrial.json`` and a PNG per method under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "Industrial_and_Scientific"


def main() -> None:
    import torch

    from components.data import Dataset, load_minionerec
    from components.registry import ArtifactNotFound, Registry
    from components.tokenizer.encoders import embed_dataset, load_embeddings, save_embeddings
    from components.tokenizer.params import TokenizerParams
    from components.tokenizer.stats import codebook_stats, plot_token_popularity
    from components.tokenizer.tokenize import build_codebook

    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", default="artifacts")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--rqvae-epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    reg = Registry(a.registry)
    ds = load_minionerec(a.data, name="industrial", max_history=10)
    try:
        dart = reg.load("dataset/industrial@latest")
        if Dataset.from_artifact(dart).item_ids != ds.item_ids:
            raise ArtifactNotFound("stale")
    except ArtifactNotFound:
        dart = ds.save(reg)
    base = TokenizerParams(collisions="reassign")
    try:
        eart = reg.load("item-embeddings/industrial@latest")
        emb = load_embeddings(eart, dataset_ref=dart.ref, n_items=ds.n_items)
        if eart.meta.get("encoder") != "minilm":
            raise ArtifactNotFound("not minilm")
        print(f"cached {eart.ref}")
    except Exception:
        t0 = time.perf_counter()
        emb = embed_dataset(ds, base)
        print(f"embedded {ds.n_items} items in {time.perf_counter() - t0:.1f} s")
        eart = save_embeddings(reg, emb, dart.ref, "industrial", "minilm", {"tokenizer": base.model_dump(mode="json")})
    counts = ds.train_item_counts()
    out: dict = {"embeddings": eart.ref, "date": time.strftime("%Y-%m-%d"), "machine": "2-core CPU (dev box, shared)", "methods": {}}
    for method in ("rqkmeans", "balanced", "rqvae"):
        p = base.model_copy(update={"method": method})
        p.rqvae = p.rqvae.model_copy(update={"epochs": a.rqvae_epochs, "device": "cpu"})
        t0 = time.perf_counter()
        cb = build_codebook(emb, ds.item_ids, p, counts, seed=2024, progress=True)
        cb.stats["seconds"] = round(time.perf_counter() - t0, 1)
        out["methods"][method] = cb.stats
        plot_token_popularity(cb.sids, cb.sizes, counts, str(ROOT / "bench" / "results" / f"tokenizer_popularity_{method}.png"), title=f"Industrial {method}")
        print(method, json.dumps({k: v for k, v in cb.stats.items() if k != "levels"}))
    ref = json.loads((Path(a.data) / "reference" / "minionerec.index.json").read_text())
    sids = np.array([[int(t.split("_")[1].rstrip(">")) for t in ref[i]] for i in ds.item_ids], dtype=np.int64)
    s = codebook_stats(sids, [256, 256, 256], counts, emb)
    s.update({"method": "minionerec (released)", "collisions_raw": s["collisions"], "collisions_resolved": 0})
    out["methods"]["minionerec"] = s
    plot_token_popularity(sids, [256] * 3, counts, str(ROOT / "bench" / "results" / "tokenizer_popularity_minionerec.png"), title="Industrial MiniOneRec (released)")
    (ROOT / "bench" / "results" / "tokenizer_industrial.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n| method | level | util. | entropy (bits) | Gini (pop.) | top token share | prefix coll. | quant. err. (rel.) | prefix err. (MiniLM) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, st in out["methods"].items():
        for lv in st["levels"]:
            q = f"{lv['quant_error_rel']:.3f}" if "quant_error_rel" in lv else "n/a"
            print(f"| {m} | {lv['level']} | {lv['utilization']:.3f} | {lv['entropy']:.2f} | {lv['gini']:.3f} | {lv['top_token_share']:.3f} | {lv['prefix_collisions']} | {q} | {lv['prefix_error']:.3f} |")
    print()
    for m, st in out["methods"].items():
        print(f"{m}: raw collisions {st['collisions_raw']}, resolved {st['collisions_resolved']}, left {st['collisions']}, seconds {st.get('seconds', 'n/a')}")


if __name__ == "__main__":
    main()
