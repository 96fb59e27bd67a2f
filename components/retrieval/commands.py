"""``genrec retrieval build|query``."""

from __future__ import annotations

from components.data import Dataset
from components.retrieval.retriever import UserRetriever


def register(sub) -> None:
    r = sub.add_parser("retrieval", help="similar-user retrieval index (BM25 + faiss)")
    rsub = r.add_subparsers(dest="retrieval_command", metavar="ACTION")
    rsub.required = True
    b = rsub.add_parser("build", help="index the training histories of the dataset (retrieval: params)")
    b.add_argument("--dataset", default=None, help="dataset artifact (default: dataset/<data.dataset>@latest)")
    b.add_argument("--embeddings", default=None, help="item-embeddings artifact (default: item-embeddings/<data.dataset>@latest)")
    b.set_defaults(func=cmd_build)
    q = rsub.add_parser("query", help="similar users of a user or of a history")
    q.add_argument("--index", default=None, help="retrieval-index artifact (default: retrieval-index/<data.dataset>@latest)")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", help="user id")
    g.add_argument("--history", nargs="+", help="item ids, oldest first")
    q.add_argument("-z", type=int, default=None)
    q.add_argument("-v", type=int, default=None)
    q.set_defaults(func=cmd_query)


def cmd_build(args, ctx) -> int:
    p = ctx.params
    name = p.data.dataset
    dart = ctx.registry.load(args.dataset or f"dataset/{name}@latest")
    ds = Dataset.from_artifact(dart)
    eart = ctx.registry.load(args.embeddings or f"item-embeddings/{name}@latest")
    from components.tokenizer.encoders import load_embeddings

    emb = load_embeddings(eart, dataset_ref=dart.ref, n_items=ds.n_items)
    rp = p.retrieval
    index_params = {"hnsw": {"hnsw_m": rp.hnsw_m}, "ivf": {"ivf_nlist": rp.ivf_nlist, "ivf_nprobe": rp.ivf_nprobe}}.get(rp.index, {})
    parents, sasrec = [dart.ref, eart.ref], None
    if rp.user_vectors == "sasrec":  # GenPlugin §3.3: the collaborative path searches SASRec user states
        from components.evaluation.baselines.sasrec import SASRec
        from components.registry import ArtifactIncompatible

        mart = ctx.registry.load(rp.sasrec_model or f"model/{name}-sasrec@latest")
        if dart.ref not in mart.manifest.parents:
            raise ArtifactIncompatible(f"{mart.ref} was not trained on {dart.ref} (parents {mart.manifest.parents}): "
                                       "run `genrec evaluate baselines` on this dataset or set retrieval.sasrec_model")
        sasrec = SASRec.from_artifact(mart)
        parents.append(mart.ref)
    r = UserRetriever.build(ds, emb, fields=rp.fields, index_kind=rp.index, k1=rp.k1, b=rp.b, dataset_ref=dart.ref,
                            index_params=index_params, sasrec=sasrec)
    art = r.save(ctx.registry, name, parents=parents, params={"retrieval": rp.model_dump(mode="json")})
    print(f"wrote {art.ref}: {r.n_users:,} users, {len(r.bm25.vocab):,} BM25 terms, faiss {rp.index} over {rp.user_vectors} user vectors")
    return 0


def cmd_query(args, ctx) -> int:
    p = ctx.params
    r = UserRetriever.from_artifact(ctx.registry.load(args.index or f"retrieval-index/{p.data.dataset}@latest"))
    z, v = args.z or p.retrieval.z, args.v or p.retrieval.v
    if args.user is not None:
        nbrs = r.similar_users(user=args.user, z=z, v=v)
    else:
        nbrs = r.similar_users(history=r.items_to_indices(args.history), z=z, v=v)
    for n in nbrs:
        print(f"{r.user_ids[n.user]}\t{n.score:.4f}\t{n.path}")
    return 0
