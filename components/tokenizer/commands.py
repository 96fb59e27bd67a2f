"""``genrec embed``, ``genrec tokenize`` and ``genrec tokenize-items``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from components.registry.store import write_json_atomic as _write_json


def register(sub) -> None:
    e = sub.add_parser("embed", help="embed item text (tokenizer.encoder) into an item-embeddings artifact")
    e.add_argument("--dataset", default=None, help="dataset artifact (default: dataset/<data.dataset>@latest)")
    e.add_argument("--name", default=None, help="artifact name (default: data.dataset)")
    e.set_defaults(func=cmd_embed)

    t = sub.add_parser("tokenize", help="quantize item embeddings into semantic IDs (tokenizer.method) → codebook artifact")
    t.add_argument("--dataset", default=None, help="dataset artifact (default: dataset/<data.dataset>@latest)")
    t.add_argument("--embeddings", default=None, help="item-embeddings artifact (default: item-embeddings/<data.dataset>@latest)")
    t.add_argument("--name", default=None, help="codebook name (default: <data.dataset>-<tokenizer.method>)")
    t.add_argument("--metrics-out", default=None, help="write health statistics JSON here (a DVC metric)")
    t.add_argument("--plot-out", default=None, help="write the token-popularity PNG here")
    t.set_defaults(func=cmd_tokenize)

    n = sub.add_parser("tokenize-items", help="give new items SIDs in an existing codebook (no retraining)")
    n.add_argument("items", help="JSON file {item_id: {title, description, ...}} or .npy embeddings [m, d]")
    n.add_argument("--codebook", default=None, help="codebook artifact (default: codebook/<data.dataset>-<tokenizer.method>@latest)")
    n.add_argument("--out", default=None, help="write {item_id: [tokens]} JSON here (default: stdout)")
    n.set_defaults(func=cmd_tokenize_items)


def _dataset_ref(args, ctx) -> str:
    return args.dataset or f"dataset/{ctx.params.data.dataset}@latest"


def cmd_embed(args, ctx) -> int:
    import time

    from components.data import Dataset
    from components.tokenizer.encoders import embed_dataset, make_encoder, save_embeddings
    from components.tokenizer.online import embedding_config

    p = ctx.params.tokenizer
    dart = ctx.registry.load(_dataset_ref(args, ctx))
    ds = Dataset.from_artifact(dart)
    enc = make_encoder(p, seed=ctx.params.seed)
    t0 = time.perf_counter()
    emb = embed_dataset(ds, p, enc, seed=ctx.params.seed)
    dt = time.perf_counter() - t0
    art = save_embeddings(ctx.registry, emb, dart.ref, args.name or ctx.params.data.dataset, enc.name, config=embedding_config(p, enc.name), params={"tokenizer": p.model_dump(mode="json", exclude={"method", "levels", "codebook_size", "niter", "max_points_per_centroid", "balanced_iters", "collisions", "rqvae", "flexcode", "stream", "stream_min_mb", "stream_sample", "stream_chunk"}), "seed": ctx.params.seed})
    print(f"wrote {art.ref}: {emb.shape[0]:,} items x {emb.shape[1]} dims ({enc.name}, {emb.shape[0] / dt:.1f} items/s)")
    return 0


def cmd_tokenize(args, ctx) -> int:
    from components.data import Dataset
    from components.tokenizer.encoders import load_embeddings
    from components.tokenizer.tokenize import build_codebook

    params = ctx.params
    p = params.tokenizer
    dart = ctx.registry.load(_dataset_ref(args, ctx))
    ds = Dataset.from_artifact(dart)
    eart = ctx.registry.load(args.embeddings or f"item-embeddings/{params.data.dataset}@latest")
    counts = ds.train_item_counts()
    if _streams(p, eart):  # a catalog whose embeddings should not be held in memory (twice): memory-mapped, chunked
        from components.tokenizer.streaming import build_codebook_streaming

        load_embeddings(eart, dataset_ref=dart.ref, n_items=ds.n_items, mmap=True)  # the same checks, nothing read
        print(f"tokenize: streaming RQ-KMeans over {eart.ref} (memory-mapped, chunks of {p.stream_chunk:,} rows)")
        cb = build_codebook_streaming(eart.file("embeddings.npy"), ds.item_ids, p, counts, seed=params.seed, dataset_ref=dart.ref,
                                      sample=p.stream_sample or None, chunk=p.stream_chunk, progress=True)
        return _finish_tokenize(args, ctx, cb, ds, dart, eart, [dart.ref, eart.ref], counts)
    emb = load_embeddings(eart, dataset_ref=dart.ref, n_items=ds.n_items)
    cf_view, parents = None, [dart.ref, eart.ref]
    if p.method == "flexcode":
        from components.tokenizer.flexcode import load_cf_view

        cf_view = load_cf_view(ctx.registry, ds, params.data.dataset, p.flexcode, seed=params.seed)
        parents += [cf_view.ref] if cf_view.ref else []
        print(f"flexcode CF view: {cf_view.source}" + (f" ({cf_view.ref})" if cf_view.ref else "") + f", {cf_view.embeddings.shape[1]} dims")
    cb = build_codebook(emb, ds.item_ids, p, counts, seed=params.seed, dataset_ref=dart.ref, progress=True, cf_view=cf_view)
    return _finish_tokenize(args, ctx, cb, ds, dart, eart, parents, counts)


def _streams(p, eart) -> bool:
    """Whether `genrec tokenize` quantizes the memory-mapped embeddings in chunks (tokenizer.stream)."""
    from components.tokenizer.encoders import TokenizerError

    streamable = p.method == "rqkmeans" and p.collisions == "extra_level"
    if p.stream == "always" and not streamable:
        raise TokenizerError(f"tokenizer.stream=always needs method rqkmeans and collisions extra_level (got {p.method}, {p.collisions})")
    if not streamable or p.stream == "never":
        return False
    if p.stream == "always":
        return True
    rows, dim = int(eart.meta.get("n_items", 0)), int(eart.meta.get("dim", 0))
    return rows * dim * 4 >= p.stream_min_mb * 2**20


def _finish_tokenize(args, ctx, cb, ds, dart, eart, parents, counts) -> int:
    from components.tokenizer.online import EMBEDDING_CONFIG
    from components.tokenizer.stats import plot_token_popularity

    params = ctx.params
    p = params.tokenizer
    cb.stats["encoder"] = eart.meta.get("encoder")
    if eart.meta.get(EMBEDDING_CONFIG):  # how the catalog was embedded: new items must be embedded the same way
        cb.stats[EMBEDDING_CONFIG] = eart.meta[EMBEDDING_CONFIG]
    name = args.name or f"{params.data.dataset}-{p.method}"
    art = cb.save(ctx.registry, name, parents=parents, params={"tokenizer": p.model_dump(mode="json"), "seed": params.seed})
    s = cb.stats
    print(f"wrote {art.ref}: {cb.n_items:,} items, sizes {cb.sizes}, {s['collisions_raw']} raw collisions, {s['collisions_resolved']} resolved ({p.collisions}), 0 left")
    if "flexcode" in s:
        a = s["flexcode"]["allocation"]
        print(f"  flexcode: mean CF tokens {a['mean_cf_tokens']:.3f} (head {a['mean_cf_tokens_head']:.3f}, tail {a['mean_cf_tokens_tail']:.3f}), histogram {a['histogram']}, split {[(t['semantic'], t['cf']) for t in s['flexcode']['token_split']]}")
    for lv in s["levels"]:
        print(f"  level {lv['level']}: utilization {lv['utilization']:.3f}  entropy {lv['entropy']:.2f} bits  gini {lv.get('gini', float('nan')):.3f}  prefix collisions {lv['prefix_collisions']}"
              + (f"  quant error {lv['quant_error']:.4f}" if "quant_error" in lv else ""))
    if args.metrics_out:
        m = {"codebook": art.ref, **s}
        if "flexcode" in m:  # the per-item allocation stays in the artifact's stats.json
            m["flexcode"] = {k: v for k, v in m["flexcode"].items() if k != "cf_tokens"}
        _write_json(args.metrics_out, m)
    if args.plot_out:
        Path(args.plot_out).parent.mkdir(parents=True, exist_ok=True)
        plot_token_popularity(cb.sids, cb.sizes, counts, args.plot_out, title=f"{name}: token popularity per level")
    return 0


def cmd_tokenize_items(args, ctx) -> int:
    from components.tokenizer.encoders import TokenizerError, item_texts, make_encoder
    from components.tokenizer.online import check_embedding_config
    from components.tokenizer.tokenize import assign_new_items, load_codebook

    p = ctx.params.tokenizer
    ref = args.codebook or f"codebook/{ctx.params.data.dataset}-{p.method}@latest"
    cb, art = load_codebook(ctx.registry, ref)
    src = Path(args.items)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file")
    if src.suffix == ".npy":
        emb = np.load(src, allow_pickle=False)
        ids = [str(i) for i in range(len(emb))]
    else:
        try:
            recs = json.loads(src.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{src}: not valid JSON: {e}") from None
        if not isinstance(recs, dict) or not recs or not all(isinstance(v, dict) for v in recs.values()):
            raise TokenizerError(f"{src}: expected a non-empty object {{item_id: {{field: text}}}}")
        if p.encoder == "tfidf":
            raise TokenizerError("the tfidf encoder is fitted per catalog and cannot embed new items; use minilm or a model_path encoder")
        enc = make_encoder(p, seed=ctx.params.seed, progress=False)
        check_embedding_config(cb, p, enc.name, where=art.ref)
        ids = list(recs)
        emb = enc.encode(item_texts(ids, list(recs.values()), p.text_fields, p.max_field_chars))
    sids = assign_new_items(cb, emb)
    out = {i: [int(t) for t in row] for i, row in zip(ids, sids)}
    if args.out:
        _write_json(args.out, {"codebook": art.ref, "sids": out})
    else:
        json.dump({"codebook": art.ref, "sids": out}, sys.stdout)
        print()
    return 0
