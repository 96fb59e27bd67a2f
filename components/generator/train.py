"""Training loop: AdamW, linear warmup + cosine decay, gradient clipping, bf16 autocast where the
device runs it natively (CUDA; CPUs with AMX / AVX512-BF16), early stopping on validation NDCG@10 computed with constrained beam search on a fixed valid
subsample, deterministic seeds, tqdm progress, resumable from a run directory (safetensors +
json only).

Learning rate at optimizer step ``s`` of ``S``: ``lr * s / W`` for ``s < W``, then
``lr * 0.5 * (1 + cos(pi * (s - W) / (S - W)))``.
Loss: ``mean(w_i * CE_i) + sum(head losses) + sum_j lambda_j * extra_j(model)``.

**Several processes** (PyTorch DDP; started by torchrun, which sets ``WORLD_SIZE`` / ``RANK``;
``genrec train`` with ``generator.train.processes > 1`` re-launches itself that way): gloo on CPU,
NCCL on CUDA (``cuda:LOCAL_RANK``). ``batch_size`` is the global batch. Every rank draws the same
epoch permutation from the seed, cuts the same global batches and takes its contiguous
``1/world`` of each (a trailing partial batch is split as evenly as it goes, and each rank's
batch loss is scaled by ``world * n_rank / n_batch``, so DDP's gradient mean is exactly the
gradient of the global batch's loss; extra losses, the same on every rank, are not scaled).
The logged losses are all-reduced (those of the global batch). Validation, early stopping, the
run directory and the checkpoint belong to rank 0; its decisions (best epoch, patience, budget)
are broadcast so all ranks stop together. Each rank seeds its own dropout stream
(``seed + rank``) and the run directory keeps every rank's RNG state, so a resumed run is
bit-exact; every rank resumes from the run directory. Heads whose losses use in-batch negatives
(GenPlugin) are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from components.generator.decoding import SIDTrie
from components.generator.hardware import DistEnv, dist_env, init_distributed, threads, use_bf16
from components.generator.heads.base import EXTRA_USER
from components.generator.model import GenerativeRecommender, seed_everything, state_dict_for_save
from components.generator.params import TrainParams
from components.generator.ranking import accuracy, popularity_weights, rank_histories
from components.generator.vocab import EncodedHistory

log = logging.getLogger(__name__)

ExtraLoss = Callable[[GenerativeRecommender], torch.Tensor]


def lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    stopped_early: bool
    samples_per_s: float
    train_seconds: float  # training steps only (no validation), over every call of a resumed run
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _save_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {f"state.{pid}.{k}": (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
               for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


# heads that cannot train on shards of the batch: why (their losses would change meaning)
DDP_UNSUPPORTED_HEADS = {
    "genplugin": "its contrastive losses (L_item, L_user) take in-batch negatives and sample batch items, which would be "
                 "each process's shard instead of the global batch, and its RAR stage augments from a retrieval index",
}


def check_ddp_supported(model: GenerativeRecommender, batch_size: int, world: int) -> None:
    """Refuse, before any process waits on another, what several processes cannot train exactly."""
    if batch_size % world:
        raise ValueError(f"generator.train.batch_size={batch_size} is the global batch and must be divisible by the {world} "
                         f"training processes (each takes batch_size / processes); use e.g. {batch_size - batch_size % world or world}")
    for h in model.heads:
        if h.name in DDP_UNSUPPORTED_HEADS:
            raise ValueError(f"generator.heads: {h.name!r} is not supported with {world} training processes: "
                             f"{DDP_UNSUPPORTED_HEADS[h.name]}. Train it with generator.train.processes=1")


def shard(batch: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """Rank ``rank``'s contiguous part of a global batch and the factor for its batch-mean loss
    (``world * n_rank / n_batch``; 1 when the batch divides evenly) so that the mean over ranks
    of the scaled losses is the global batch's mean loss. A rank left without a sample (a
    trailing batch smaller than ``world``) gets the batch's first sample with factor 0."""
    part = torch.tensor_split(batch, world)[rank]
    if part.numel() == 0:
        return batch[:1], 0.0
    return part, part.numel() * world / batch.numel()


class Trainer:
    """Trains a :class:`GenerativeRecommender` on a dataset's train split (on one process, or as
    one rank of a torchrun job: see the module docstring)."""

    def __init__(self, model: GenerativeRecommender, dataset, trie: SIDTrie, params: TrainParams, seed: int = 2024,
                 eval_beam: int = 20, run_dir: str | Path | None = None, extra_losses: dict[str, tuple[ExtraLoss, float]] | None = None,
                 progress: bool = True, fingerprint: str = "", first_stage: bool = False):
        self.model, self.dataset, self.params, self.seed = model, dataset, params, seed
        self.eval_beam = eval_beam
        self.device = resolve_device(params.device)
        self.trie = trie.to(self.device)
        self.run_dir = Path(run_dir) if run_dir else None
        self.extra_losses = extra_losses or {}
        self.dist: DistEnv = dist_env()
        if self.dist.enabled and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
            self.trie = trie.to(self.device)
        self.progress = progress and self.dist.main
        # called after each backward, before clipping: (epoch, step, model with its gradients, the step's losses)
        self.step_hook: Callable[[int, int, GenerativeRecommender, dict[str, float]], None] | None = None
        # epochs / patience / resume may change between invocations (extend a run); all else must match.
        # The process layout is not part of the run: the same global batches give the same run.
        tp = params.model_dump(exclude={"epochs", "patience", "resume", "device", "num_threads", "max_minutes", "min_delta",
                                        "processes", "nnodes", "rdzv_endpoint"})
        # first_stage: the run is identified by what the heads' first stage reads (a shared pre-training)
        cfg = {"model": model.config_dict(first_stage=first_stage), "train": tp, "seed": seed, "fingerprint": fingerprint}
        self.config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _encode_split(self, split) -> tuple[EncodedHistory, torch.Tensor]:
        hist = self.model.vocab.encode_history(split.history, self.model.max_items, append_eos=self.model.backbone.append_eos)
        return hist.to(self.device), torch.as_tensor(split.target, dtype=torch.long, device=self.device)

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``epochs``, early stopping, or ``stop_after`` epochs in this call (a time box;
        a later call with the same run directory continues exactly where this one stopped)."""
        p = self.params
        W, R = self.dist.world, self.dist.rank
        if W > 1:
            check_ddp_supported(self.model, p.batch_size, W)
            init_distributed(self.device)
        torch.set_num_threads(threads(p.num_threads))
        seed_everything(self.seed)
        if R > 0:
            torch.manual_seed(self.seed + R)  # each rank its own dropout stream (rank 0 = one process's)
        model = self.model.to(self.device)
        ds = self.dataset
        train = ds.splits["train"]
        hist_all, tgt_all = self._encode_split(train)
        user_all = torch.as_tensor(train.user, dtype=torch.long, device=self.device)  # ctx.extras["user"] (GenPlugin: self-exclusion)
        weights = torch.as_tensor(popularity_weights(ds.train_item_counts(), train.target, p.reweight_power), device=self.device) \
            if p.reweight_power > 0 else None
        item_tokens = model.vocab.item_tokens.to(self.device)
        valid = ds.splits["valid"]
        rng = np.random.default_rng(self.seed)
        vidx = np.arange(len(valid)) if p.valid_samples == 0 or p.valid_samples >= len(valid) else np.sort(rng.choice(len(valid), p.valid_samples, replace=False))
        n = len(train)
        steps_per_epoch = math.ceil(n / p.batch_size)
        if p.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, p.max_steps_per_epoch)
        total_steps = steps_per_epoch * p.epochs
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, p.warmup_steps, total_steps))
        bf16 = use_bf16(p.bf16, self.device)
        history: list[dict[str, Any]] = []
        best = {"ndcg@10": -1.0}
        best_epoch, bad, start_epoch = -1, 0, 0
        best_state = state_dict_for_save(model)
        start_epoch = self._maybe_resume(model, opt, sched)
        wall_before = train_before = 0.0  # seconds earlier calls spent on this run (the budget covers the whole run)
        if start_epoch:
            st = json.loads((self.run_dir / "state.json").read_text())
            history, best, best_epoch, bad = st["history"], st["best"], st["best_epoch"], st["bad"]
            wall_before, train_before = float(st.get("wall_used", 0.0)), float(st.get("train_used", 0.0))
            from safetensors.torch import load_file

            best_state = load_file(str(self.run_dir / "best.safetensors"))
        fwd = model
        if W > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # heads may leave parameters out of a step (e.g. a query count of 0): let DDP look for them
            fwd = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                      broadcast_buffers=False, find_unused_parameters=bool(len(model.heads)))
        t_train, n_seen, stopped, budget_hit = 0.0, 0, False, False
        t_wall = time.perf_counter()

        def over_budget(done_epochs: int) -> bool:  # would one more mean epoch pass max_minutes?
            if not p.max_minutes or done_epochs == 0:
                return False
            used = wall_before + time.perf_counter() - t_wall
            return used + used / done_epochs > 60.0 * p.max_minutes

        # a resumed run that had already stopped (patience or budget) stays stopped
        if start_epoch and bad >= p.patience:
            stopped = True
        elif start_epoch and start_epoch < p.epochs and self._from_main(over_budget(start_epoch)):
            budget_hit = True
        epoch = start_epoch
        for epoch in range(start_epoch, p.epochs if not (stopped or budget_hit) else start_epoch):
            model.train()
            g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=g)[: steps_per_epoch * p.batch_size].to(self.device)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{p.epochs}", disable=not self.progress, leave=False)
            for s in bar:
                gidx = perm[s * p.batch_size : (s + 1) * p.batch_size]  # the global batch
                if gidx.numel() == 0:
                    break
                idx, scale = shard(gidx, R, W) if W > 1 else (gidx, 1.0)
                hist = EncodedHistory(hist_all.tokens[idx], hist_all.mask[idx], hist_all.levels[idx], hist_all.slots[idx], hist_all.items[idx])
                targets = item_tokens[tgt_all[idx]]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = fwd(hist, targets, weights=None if weights is None else weights[idx], extras={EXTRA_USER: user_all[idx]})
                    losses = dict(out.losses)
                    for name, (fn, lam) in self.extra_losses.items():
                        losses[name] = lam * fn(model)
                if W > 1:
                    batch_keys = set(out.losses)  # batch means: scaled to this rank's share; extra losses are not
                    loss = sum(v * scale if k in batch_keys else v for k, v in losses.items())
                    logged = self._global_losses(losses, batch_keys, scale)  # the global batch's values, on every rank
                    finite = math.isfinite(sum(logged.values()))
                else:
                    loss = sum(losses.values())
                    logged = None
                    finite = bool(torch.isfinite(loss))
                if not finite:
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1} step {s}: "
                                             f"{ {k: float(v) for k, v in (logged or losses).items()} }")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if logged is None:
                    logged = {k_: float(v.detach()) for k_, v in losses.items()}
                if self.step_hook is not None:
                    self.step_hook(epoch, s, model, logged)
                if p.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
                opt.step()
                sched.step()
                n_seen += gidx.numel()
                for k_, v in logged.items():
                    sums[k_] = sums.get(k_, 0.0) + v
                if s % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()) if W == 1 else sum(logged.values()):.4f}")
            dt = time.perf_counter() - t0
            t_train += dt
            row: dict[str, Any] = {"epoch": epoch + 1, "samples_per_s": steps_per_epoch * p.batch_size / dt if dt > 0 else 0.0,
                                   "lr": sched.get_last_lr()[0], **{f"loss.{k_}": v / steps_per_epoch for k_, v in sums.items()}}
            improved = False
            if ((epoch + 1) % p.eval_every == 0 or epoch + 1 == p.epochs) and self.dist.main:
                k = min(10, model.vocab.n_items)
                topk, _ = rank_histories(model, self.trie, valid.history[vidx], k=k, beam=max(self.eval_beam, k), progress=self.progress,
                                         desc="valid", users=valid.user[vidx])
                metrics = accuracy(topk, valid.target[vidx], ks=(5, 10))
                row.update({f"valid.{m}": v for m, v in metrics.items()})
                score = metrics.get("ndcg@10", metrics.get("ndcg@5", 0.0))
                if score > best.get("ndcg@10", -1.0) + (p.min_delta if best_epoch > 0 else 0.0):
                    best, best_epoch, bad = {"ndcg@10": score, **metrics}, epoch + 1, 0
                    best_state = state_dict_for_save(model)
                    improved = True
                else:
                    bad += 1
                log.info("epoch %d: %s", epoch + 1, {k_: round(v, 4) if isinstance(v, float) else v for k_, v in row.items()})
            if W > 1:  # rank 0 validated: every rank takes its row, best and patience (the weights are the same everywhere)
                row, best, best_epoch, bad, improved = self._from_main((row, best, best_epoch, bad, improved))
                if improved and not self.dist.main:
                    best_state = state_dict_for_save(model)
            history.append(row)
            self._save_run(model, opt, epoch + 1, history, best, best_epoch, bad, best_state,
                           wall_used=wall_before + time.perf_counter() - t_wall, train_used=train_before + t_train)
            if bad >= p.patience:
                stopped = True
                break
            if epoch + 1 < p.epochs and self._from_main(over_budget(epoch + 1)):
                log.info("wall-clock budget of %.1f min: another epoch would pass it; stopping after epoch %d", p.max_minutes, epoch + 1)
                budget_hit = True
                break
            if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
                break
        return TrainResult(best_state=best_state, history=history, best_epoch=best_epoch, best_valid=best,
                           epochs_run=len(history), stopped_early=stopped,
                           samples_per_s=(n_seen / t_train) if t_train > 0 else float(np.mean([h["samples_per_s"] for h in history] or [0.0])), train_seconds=train_before + t_train, resumed_from=start_epoch,
                           extra={"valid_samples": int(len(vidx)), "steps_per_epoch": steps_per_epoch, "device": str(self.device),
                                  "bf16": bf16, "threads": torch.get_num_threads(), "budget_hit": budget_hit,
                                  "wall_seconds": round(wall_before + time.perf_counter() - t_wall, 1),
                                  **({"processes": W} if W > 1 else {})})

    # ---- several processes ----------------------------------------------------------------
    def _comm_device(self) -> torch.device:
        import torch.distributed as td

        return self.device if td.get_backend() == "nccl" else torch.device("cpu")

    def _from_main(self, obj):
        """Rank 0's value of a JSON-able ``obj`` on every rank (itself on one process)."""
        if not self.dist.enabled:
            return obj
        import torch.distributed as td

        dev = self._comm_device()
        data = json.dumps(obj).encode() if self.dist.main else b""
        size = torch.tensor([len(data)], dtype=torch.long, device=dev)
        td.broadcast(size, 0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if self.dist.main else \
            torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
        td.broadcast(buf, 0)
        out = json.loads(bytes(buf.cpu().tolist()).decode())
        return tuple(out) if isinstance(obj, tuple) else out

    def _global_losses(self, losses: dict[str, torch.Tensor], batch_keys: set[str], scale: float) -> dict[str, float]:
        """The global batch's value of each loss term: shares summed over ranks (one all-reduce)."""
        import torch.distributed as td

        W = self.dist.world
        vec = torch.stack([v.detach().float() * (scale if k in batch_keys else 1.0) / W for k, v in losses.items()])
        vec = vec.to(self._comm_device())
        td.all_reduce(vec)
        return dict(zip(losses, vec.tolist()))

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """``rng.torch`` (rank 0's torch RNG state) and, with several processes, ``rng.torch.rank<r>``
        for the others (gathered on every rank; only rank 0 writes them)."""
        state = torch.get_rng_state()
        if not self.dist.enabled:
            return {"rng.torch": state}
        import torch.distributed as td

        dev = self._comm_device()
        parts = [torch.empty_like(state, device=dev) for _ in range(self.dist.world)]
        td.all_gather(parts, state.to(dev))
        return {("rng.torch" if r == 0 else f"rng.torch.rank{r}"): t.cpu() for r, t in enumerate(parts)}

    # ---- resumable run directory ----------------------------------------------------------
    def _save_run(self, model, opt, epoch, history, best, best_epoch, bad, best_state, wall_used: float = 0.0,
                  train_used: float = 0.0) -> None:
        if self.run_dir is None:
            return
        rng = self._rng_states()  # a collective with several processes: every rank gets here
        if not self.dist.main:
            return
        from safetensors.torch import save_file

        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors, groups = _save_optimizer(opt)
        tensors.update(rng)
        save_file(state_dict_for_save(model), str(self.run_dir / "last.safetensors"))
        save_file(best_state, str(self.run_dir / "best.safetensors"))
        save_file(tensors, str(self.run_dir / "optimizer.safetensors"))
        state = {"config_hash": self.config_hash, "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch,
                 "bad": bad, "param_groups": groups, "wall_used": wall_used, "train_used": train_used}
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, default=float))
        tmp.replace(self.run_dir / "state.json")

    def _maybe_resume(self, model, opt, sched) -> int:
        if self.run_dir is None or not self.params.resume or not (self.run_dir / "state.json").exists():
            return 0
        from safetensors.torch import load_file

        st = json.loads((self.run_dir / "state.json").read_text())
        if st.get("config_hash") != self.config_hash:
            log.warning("run dir %s holds another configuration; starting afresh", self.run_dir)
            return 0
        model.load_state_dict(load_file(str(self.run_dir / "last.safetensors"), device=str(self.device)))
        tensors = load_file(str(self.run_dir / "optimizer.safetensors"))
        rng = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("rng.")]}
        torch.set_rng_state(rng.get(f"rng.torch.rank{self.dist.rank}", rng["rng.torch"]))
        _load_optimizer(opt, {k: v.to(self.device) if not k.endswith(".step") else v for k, v in tensors.items()}, st["param_groups"])
        steps_per_epoch = math.ceil(len(self.dataset.splits["train"]) / self.params.batch_size)
        if self.params.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, self.params.max_steps_per_epoch)
        sched.last_epoch = st["epoch"] * steps_per_epoch
        total = steps_per_epoch * self.params.epochs
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(sched.last_epoch, self.params.warmup_steps, total)
        log.info("resumed %s at epoch %d", self.run_dir, st["epoch"])
        return int(st["epoch"])
