"""``genrec train``, ``genrec rank``, ``genrec recommend`` and ``genrec import-sids``."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from components.data.dataset import Dataset
from components.generator.hardware import dist_env, threads
from components.registry import Artifact, ArtifactNotFound
from components.registry.store import write_json_atomic as _write_json
from components.tokenizer.codebook import Codebook

log = logging.getLogger(__name__)


def register(sub) -> None:
    t = sub.add_parser("train", help="train the generator (generator: params) and write a generator/<name> checkpoint")
    t.add_argument("--codebook", default=None, help="codebook ref (default: generator.codebook, else the latest for data.dataset)")
    t.add_argument("--init-from", default=None, help="start from this generator checkpoint (CRAB: the model trained on the codebook this one was rebalanced from; new tokens copy their origin rows)")
    t.add_argument("--dataset", default=None, help="dataset ref (default: dataset/<data.dataset>@latest)")
    t.add_argument("--name", default=None, help="checkpoint name (default: generator.name or <dataset>-<backbone>)")
    t.add_argument("--run-dir", default=None, help="resumable run directory (default: .genrec/runs/<name>)")
    t.add_argument("--metrics-out", default=None, help="write training metrics JSON here (a DVC metric)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("rank", help="rank valid/test with constrained beam search; write rankings/<name> and HR/NDCG")
    r.add_argument("--checkpoint", default=None, help="generator ref (default: generator/<name>@latest)")
    r.add_argument("--dataset", default=None, help="dataset ref (default: the checkpoint's dataset)")
    r.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    r.add_argument("--metrics-out", default=None, help="write HR/NDCG@5/10 JSON here (a DVC metric)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_rank)

    c = sub.add_parser("recommend", help="top-k items for histories of external item ids")
    c.add_argument("--checkpoint", default=None, help="generator ref (default: generator/<name>@latest)")
    c.add_argument("--history", action="append", required=True, help="comma-separated item ids, oldest first (repeatable; '' = empty)")
    c.add_argument("-k", type=int, default=10)
    c.add_argument("--beam", type=int, default=None, help="beam width (default: generator.decode.beam)")
    c.add_argument("--skip-unknown", action="store_true", help="drop unknown item ids instead of failing")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_recommend)

    i = sub.add_parser("import-sids", help="codebook artifact from a released SID index json (e.g. MiniOneRec's)")
    i.add_argument("path", help="index json {item id: ['<a_1>', '<b_2>', ...]}")
    i.add_argument("--dataset", default=None, help="dataset ref (default: dataset/<data.dataset>@latest)")
    i.add_argument("--name", default=None, help="codebook name (default: <dataset>-reference)")
    i.set_defaults(func=cmd_import_sids)


# ---- helpers -------------------------------------------------------------------------------
def _gp(ctx):
    """``generator:`` params with the preset applied; ``--set generator.*`` flags win over the preset."""
    from components.generator.params import GeneratorParams, cli_generator_overrides, set_keys

    gp = ctx.params.generator
    eff = gp.effective()
    if eff is gp:
        return gp
    return GeneratorParams.model_validate(set_keys(eff.model_dump(), cli_generator_overrides(getattr(ctx.args, "set", []))))


def _checkpoint_name(ctx, gp) -> str:
    return gp.name or f"{ctx.params.data.dataset}-{gp.backbone}"


def import_reference_codebook(registry, path: str, dataset_art: Artifact, name: str | None = None) -> Artifact:
    from components.tokenizer.reference import codebook_from_index_json

    ds = Dataset.from_artifact(dataset_art)
    cb = codebook_from_index_json(path, ds)
    cb.dataset_ref = dataset_art.ref
    return cb.save(registry, name or f"{ds.name}-reference", parents=[dataset_art.ref], params={"source": str(path)})


def resolve_codebook(reg, gp, dataset_art: Artifact, explicit: str | None, dataset_name: str) -> Artifact:
    """The codebook to train on: explicit ref > generator.codebook > latest codebook built from the
    dataset > the released reference SIDs (imported as codebook/<dataset>-reference, with a notice)."""
    ref = explicit or gp.codebook
    if ref:
        return reg.load(ref)
    ds_name = dataset_art.ref.split("@")[0]
    cands = [a for a in reg.list("codebook") if str(a.meta.get("dataset") or "").split("@")[0] == ds_name]
    if cands:
        return max(cands, key=lambda a: a.manifest.created)
    path = gp.reference_sids
    if path == "auto":
        path = f"data/raw/{dataset_name}/reference/minionerec.index.json"
    if path and Path(path).exists():
        print(f"genrec train: no codebook artifact for {ds_name}; using the released reference SIDs {path}")
        return import_reference_codebook(reg, path, dataset_art)
    raise ArtifactNotFound(f"no codebook for {ds_name}: run `genrec tokenize` (or `genrec import-sids PATH`), "
                           f"or set generator.codebook / generator.reference_sids")


def _extra_losses(gp, model, codebook):
    spec = gp.train.extra_loss
    if not spec:
        return {}
    mod, _, fn = spec.partition(":")
    if not fn:
        raise ValueError(f"generator.train.extra_loss {spec!r}: expected 'module:factory'")
    factory = getattr(importlib.import_module(mod), fn)
    return {"extra": (factory(model, codebook), gp.train.extra_loss_weight)}


def _resolve_heads(gp, registry, dataset_ref: str, codebook_ref: str, dataset_name: str):
    """Let head types with a ``resolve`` classmethod pin their artifact refs (GenPlugin: item
    embeddings, retrieval index) before the model is built; returns params with the resolved heads."""
    from components.generator.heads.base import HEAD_TYPES

    heads = []
    for cfg in gp.heads:
        cls = HEAD_TYPES.get(cfg.get("type"))
        heads.append(cls.resolve(dict(cfg), registry, dataset_ref, codebook_ref, dataset_name) if hasattr(cls, "resolve") else cfg)
    return gp.model_copy(update={"heads": heads})


def build_model(gp, vocab, max_items: int):
    from components.generator.model import GenerativeRecommender

    bb = {"kind": gp.backbone, **(gp.tiger.model_dump() if gp.backbone == "tiger" else gp.decoder_lm.model_dump())}
    return GenerativeRecommender.from_config({"backbone": bb, "heads": gp.heads, "max_items": max_items}, vocab)


@contextlib.contextmanager
def _exclusive(path: Path | None):
    """Hold an exclusive lock on ``<path>.lock`` (``None``: no lock); says so when it has to wait."""
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path}: another process is training this shared first stage", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def train_generator(registry, gp, dataset_ref: str, codebook_ref: str | None, name: str, *, seed: int, dataset_name: str,
                    init_from: str | None = None, run_dir: str | None = None, progress: bool = True):
    """Train ``gp`` on the dataset and codebook, save ``generator/<name>`` and return ``(artifact, summary, history)``.

    ``init_from``: a generator checkpoint to start from (CRAB §4.3: the model trained on the codebook
    this one was rebalanced from; new tokens copy their origin rows). The core of `genrec train`
    and of each experiment variant.

    Under torchrun (``WORLD_SIZE`` > 1) every rank trains its shard of each global batch (DDP,
    :mod:`components.generator.train`); rank 0 alone writes the checkpoint and returns the artifact,
    the other ranks return ``(None, summary, history)``."""
    import torch

    from components.generator.checkpoint import save_checkpoint
    from components.generator.decoding.trie import build_trie
    from components.generator.hardware import init_distributed
    from components.generator.model import seed_everything
    from components.generator.train import Trainer, resolve_device
    from components.generator.vocab import SIDVocab

    gp.check_fits(torch.cuda.is_available())
    dist = dist_env()
    if dist.enabled:  # a torchrun worker: join the group now, so rank 0 alone may write artifacts below
        device = resolve_device(gp.train.device)
        init_distributed(torch.device("cuda", dist.local_rank) if device.type == "cuda" and device.index is None else device)
    elif gp.train.processes * gp.train.nnodes > 1:
        log.warning("generator.train.processes=%d x nnodes=%d, but this process was not started by torchrun: training on one "
                    "process (`genrec train` re-launches itself; or run `torchrun --nproc-per-node N -m components.cli train`)",
                    gp.train.processes, gp.train.nnodes)
    ds_art = registry.load(dataset_ref)
    ds = Dataset.from_artifact(ds_art)
    if dist.enabled:  # rank 0 first: it may import the reference SIDs as a codebook artifact; the others then find it
        import torch.distributed as td

        cb_art = resolve_codebook(registry, gp, ds_art, codebook_ref, dataset_name) if dist.main else None
        td.barrier()
        if cb_art is None:
            cb_art = resolve_codebook(registry, gp, ds_art, codebook_ref, dataset_name)
    else:
        cb_art = resolve_codebook(registry, gp, ds_art, codebook_ref, dataset_name)
    cb = Codebook.from_artifact(cb_art)
    cb.check_dataset(ds_art.ref, ds.n_items)
    vocab = SIDVocab.from_codebook(cb)
    max_items = gp.max_items or ds.max_history
    gp = _resolve_heads(gp, registry, ds_art.ref, cb_art.ref, dataset_name)
    torch.set_num_threads(threads(gp.train.num_threads))
    seed_everything(seed)
    model = build_model(gp, vocab, max_items)
    tp, extra, handle, ft = gp.train, _extra_losses(gp, model, cb), None, None
    if init_from:  # CRAB §4.3: warm start, the fine-tune's parameter set, schedule and alignment loss
        from components.generator.checkpoint import warm_start
        from components.generator.finetune import crab_alignment_loss, finetune_train_params, prepare_finetune

        warm_start(model, registry, init_from, cb, cb_art)
        ft = gp.finetune
        tp = finetune_train_params(gp.train, ft)
        handle = prepare_finetune(model, ft)
        extra = {**extra, **crab_alignment_loss(model, cb, ft.beta)}
        if dist.main:
            print(f"fine-tune ({ft.trainable}): {handle.trainable_params:,} of {handle.total_params:,} parameters train; "
                  f"{tp.epochs} epochs, batch {tp.batch_size}, lr {tp.lr:g}; alignment beta "
                  f"{extra['crab_align'][1] if 'crab_align' in extra else 0}")
    run_dir = run_dir or f".genrec/runs/{name}"
    fingerprint = vocab.fingerprint() + ds_art.ref + (init_from or "") + (ft.model_dump_json() if ft else "")
    # a head with a second stage (GenPlugin's RAR): variants that differ only in that stage's options
    # share the first stage's run directory (keyed by what it reads), so it trains once and the others
    # resume it finished; a lock lets one process train it while another waits
    share = any(hasattr(h, "second_stage") for h in model.heads) and tp.resume
    trainer = Trainer(model, ds, build_trie(cb.sids, cb.sizes), tp, seed=seed, eval_beam=gp.decode.beam,
                      run_dir=run_dir, extra_losses=extra, progress=progress, fingerprint=fingerprint, first_stage=share)
    if share:
        trainer.run_dir = Path(run_dir).parent / f"first-stage-{trainer.config_hash}"
    with _exclusive(trainer.run_dir if share and not dist.enabled else None):
        res = trainer.fit()
    first = {"first_stage.run_dir": str(trainer.run_dir), "first_stage.resumed_epochs": res.resumed_from} if share else {}
    for h in model.heads:  # heads with a second training stage (GenPlugin: retrieval-augmented fine-tuning)
        if hasattr(h, "second_stage"):
            def make_trainer(tp2, tag, _extra=trainer.extra_losses):
                return Trainer(model, ds, build_trie(cb.sids, cb.sizes), tp2, seed=seed, eval_beam=gp.decode.beam,
                               run_dir=f"{run_dir}-{tag}", extra_losses=_extra, progress=progress, fingerprint=fingerprint)
            res = h.second_stage(res, make_trainer, tp)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if handle is not None:  # merge LoRA adapters into the best epoch's weights: a plain checkpoint
        handle.finish(res.best_state)
        res.best_state = None
    n_params = sum(p.numel() for p in model.parameters())
    summary = {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "stopped_early": res.stopped_early,
               "train_samples_per_s": round(res.samples_per_s, 2), "train_seconds": round(res.train_seconds, 1),
               "params": n_params, "trainable_params": n_train, "seed": seed, "init_from": init_from,
               **({"finetune": ft.trainable, "alignment_beta": extra["crab_align"][1] if "crab_align" in extra else 0.0} if ft else {}),
               **{f"valid.{k}": v for k, v in res.best_valid.items()}, **res.extra, **first}
    if not dist.main:  # the checkpoint is rank 0's to write (every rank holds the same weights)
        return None, summary, res.history
    params = {"seed": seed, "generator": gp.model_dump(mode="json"), "max_items": max_items, "init_from": init_from}
    art = save_checkpoint(registry, name, model, cb_art.ref, ds_art.ref, params, meta=summary, state_dict=res.best_state,
                          popularity=ds.train_item_counts())
    print(f"wrote {art.ref}: best valid NDCG@10 {res.best_valid.get('ndcg@10', float('nan')):.4f} at epoch {res.best_epoch} "
          f"({res.epochs_run} epochs, {res.samples_per_s:.0f} samples/s, {summary['wall_seconds']:.0f} s)")
    return art, summary, res.history


def rank_generator(registry, gp, checkpoint_ref: str, *, dataset_ref: str | None = None, splits=("valid", "test"),
                   name: str | None = None, progress: bool = True, meta: dict | None = None):
    """Rank ``splits`` with constrained beam search; write ``rankings/<name>`` (default: the checkpoint's
    name) and return ``(artifact, metrics)``. The core of `genrec rank` and of each experiment variant."""
    import time

    import torch

    from components.generator.checkpoint import load_checkpoint
    from components.generator.decoding.trie import build_trie
    from components.generator.ranking import accuracy, rank_histories
    from components.generator.train import resolve_device

    torch.set_num_threads(threads(gp.train.num_threads))
    device = resolve_device(gp.train.device)
    model, cb, art = load_checkpoint(registry, checkpoint_ref, device=str(device))
    ds_art = registry.load(dataset_ref or art.meta["dataset"])
    ds = Dataset.from_artifact(ds_art)
    cb.check_dataset(ds_art.ref, ds.n_items)
    trie = build_trie(cb.sids, cb.sizes).to(device)
    k = min(gp.decode.k, cb.n_items)
    beam = max(gp.decode.beam, k)
    arrays, metrics = {}, {"checkpoint": art.ref, "beam": beam, "k": k}
    t0 = time.perf_counter()
    for split in splits:
        sp = ds.splits[split]
        n = len(sp) if gp.decode.max_samples == 0 else min(len(sp), gp.decode.max_samples)
        topk, scores = rank_histories(model, trie, sp.history[:n], k=k, beam=beam, batch_size=gp.decode.batch_size,
                                      progress=progress, desc=split, users=sp.user[:n])
        arrays.update({f"{split}_topk": topk, f"{split}_scores": scores, f"{split}_targets": sp.target[:n].astype(np.int32)})
        metrics[split] = {"n": n, **accuracy(topk, sp.target[:n], ks=(5, 10))}
        print(f"{split}: n={n} " + " ".join(f"{m}={v:.4f}" for m, v in metrics[split].items() if m != "n"))
    metrics["rank_seconds"] = round(time.perf_counter() - t0, 1)
    with registry.create("rankings", name or art.manifest.name, parents=[art.ref, ds_art.ref],
                         params={"beam": beam, "k": k, "max_samples": gp.decode.max_samples}) as w:
        w.write_npz("rankings.npz", **arrays)
        w.write_json("metrics.json", metrics)
        w.meta.update({"checkpoint": art.ref, "codebook": art.meta.get("codebook"), "rank_seconds": metrics["rank_seconds"],
                       **{f"{s}.{m}": v for s in splits for m, v in metrics[s].items()}, **(meta or {})})
    print(f"wrote {w.artifact.ref}")
    return w.artifact, metrics


# ---- commands ------------------------------------------------------------------------------
def _train_argv(args) -> list[str]:
    """The `genrec ... train ...` command line of ``args`` (for the torchrun workers)."""
    out = ["--params", args.params]
    for s in args.set:
        out += ["--set", s]
    if args.registry:
        out += ["--registry", args.registry]
    if args.verbose:
        out.append("-v")
    out.append("train")
    for flag in ("codebook", "init_from", "dataset", "name", "run_dir", "metrics_out"):
        if getattr(args, flag) is not None:
            out += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.no_progress:
        out.append("--no-progress")
    return out


def torchrun_command(args, tp, name: str) -> list[str]:
    """``python -m torch.distributed.run ... -m components.cli <the same train command>`` for
    ``generator.train.processes`` x ``nnodes`` (one node: ``--standalone``; several: c10d
    rendezvous at ``rdzv_endpoint``, the same command run on every node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp.processes), "--nnodes", str(tp.nnodes)]
    if tp.nnodes == 1:
        cmd.append("--standalone")
    else:
        if not tp.rdzv_endpoint:
            raise ValueError(f"generator.train.nnodes={tp.nnodes}: set generator.train.rdzv_endpoint=HOST:PORT (a free port on one "
                             f"of the nodes, reachable from all) and run the same command on every node")
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", tp.rdzv_endpoint, "--rdzv-id", f"genrec-train-{name}"]
    return cmd + ["-m", "components.cli", *_train_argv(args)]


def cmd_train(args, ctx) -> int:
    gp = _gp(ctx)
    name = args.name or _checkpoint_name(ctx, gp)
    if gp.train.processes * gp.train.nnodes > 1 and not dist_env().enabled:  # re-launch this command under torchrun
        cmd = torchrun_command(args, gp.train, name)
        print(f"genrec train: {gp.train.processes * gp.train.nnodes} processes: {shlex.join(cmd)}", flush=True)
        return subprocess.call(cmd)
    try:
        art, summary, history = train_generator(
            ctx.registry, gp, args.dataset or f"dataset/{ctx.params.data.dataset}@latest", args.codebook, name,
            seed=ctx.params.seed, dataset_name=ctx.params.data.dataset, init_from=args.init_from, run_dir=args.run_dir,
            progress=not args.no_progress)
    finally:
        if dist_env().enabled:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
    if art is None:  # a torchrun worker other than rank 0
        return 0
    if args.metrics_out:
        _write_json(args.metrics_out, {"checkpoint": art.ref, **summary, "history": history})
    return 0


def cmd_rank(args, ctx) -> int:
    gp = _gp(ctx)
    ref = args.checkpoint or f"generator/{_checkpoint_name(ctx, gp)}@latest"
    art, metrics = rank_generator(ctx.registry, gp, ref, dataset_ref=args.dataset, splits=args.splits, progress=not args.no_progress)
    if args.metrics_out:
        _write_json(args.metrics_out, {**metrics, "rankings": art.ref})
    return 0


def cmd_recommend(args, ctx) -> int:
    import torch

    from components.generator.recommend import Recommender

    gp = _gp(ctx)
    torch.set_num_threads(threads(gp.train.num_threads))
    ref = args.checkpoint or f"generator/{_checkpoint_name(ctx, gp)}@latest"
    rec = Recommender.from_registry(ctx.registry, ref)
    histories = [[x.strip() for x in h.split(",") if x.strip()] for h in args.history]
    out = rec.recommend(histories, k=args.k, beam=args.beam or max(gp.decode.beam, args.k), skip_unknown=args.skip_unknown)
    if args.json:
        print(json.dumps([{"items": ids, "scores": [round(float(s), 5) for s in sc], "fallback": bool(fb), "skipped": sk}
                          for ids, sc, fb, sk in zip(out.item_ids, out.scores, out.fallback, out.skipped)]))
    else:
        for h, ids, fb, sk in zip(histories, out.item_ids, out.fallback, out.skipped):
            note = " (empty history: popularity fallback)" if fb else ""
            note += f" (skipped unknown {sk})" if sk else ""
            print(f"[{', '.join(h)}] -> {', '.join(ids)}{note}")
    return 0


def cmd_import_sids(args, ctx) -> int:
    ds_art = ctx.registry.load(args.dataset or f"dataset/{ctx.params.data.dataset}@latest")
    art = import_reference_codebook(ctx.registry, args.path, ds_art, args.name)
    print(f"wrote {art.ref}: sizes {art.meta['sizes']}")
    return 0
