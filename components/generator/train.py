"""Training loop: AdamW, linear warmup + cosine decay, gradient clipping, bf16 autocast where the
device runs it natively (CUDA; CPUs with AMX / AVX512-BF16), early stopping on validation NDCG@10 computed with constrained beam search on a fixed valid
subsample, deterministic seeds, tqdm progress, resumable from a run directory (safetensors +
json only).

Learning rate at optimizer step ``s`` of ``S``: ``lr * s / W`` for ``s < W``, then
``lr * 0.5 * (1 + cos(pi * (s - W) / (S - W)))``.
Loss: ``mean(w_i * CE_i) + sum(head losses) + sum_j lambda_j * extra_j(model)``.
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
from components.generator.hardware import threads, use_bf16
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
    train_seconds: float
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


class Trainer:
    """Trains a :class:`GenerativeRecommender` on a dataset's train split."""

    def __init__(self, model: GenerativeRecommender, dataset, trie: SIDTrie, params: TrainParams, seed: int = 2024,
                 eval_beam: int = 20, run_dir: str | Path | None = None, extra_losses: dict[str, tuple[ExtraLoss, float]] | None = None,
                 progress: bool = True, fingerprint: str = ""):
        self.model, self.dataset, self.params, self.seed = model, dataset, params, seed
        self.eval_beam = eval_beam
        self.device = resolve_device(params.device)
        self.trie = trie.to(self.device)
        self.run_dir = Path(run_dir) if run_dir else None
        self.extra_losses = extra_losses or {}
        self.progress = progress
        # epochs / patience / resume may change between invocations (extend a run); all else must match
        tp = params.model_dump(exclude={"epochs", "patience", "resume", "device", "num_threads", "max_minutes", "min_delta"})
        cfg = {"model": model.config_dict(), "train": tp, "seed": seed, "fingerprint": fingerprint}
        self.config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _encode_split(self, split) -> tuple[EncodedHistory, torch.Tensor]:
        hist = self.model.vocab.encode_history(split.history, self.model.max_items, append_eos=self.model.backbone.append_eos)
        return hist.to(self.device), torch.as_tensor(split.target, dtype=torch.long, device=self.device)

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``epochs``, early stopping, or ``stop_after`` epochs in this call (a time box;
        a later call with the same run directory continues exactly where this one stopped)."""
        p = self.params
        torch.set_num_threads(threads(p.num_threads))
        seed_everything(self.seed)
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
        wall_before = 0.0  # wall seconds earlier calls spent on this run (the budget covers the whole run)
        if start_epoch:
            st = json.loads((self.run_dir / "state.json").read_text())
            history, best, best_epoch, bad = st["history"], st["best"], st["best_epoch"], st["bad"]
            wall_before = float(st.get("wall_used", 0.0))
            from safetensors.torch import load_file

            best_state = load_file(str(self.run_dir / "best.safetensors"))
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
        elif start_epoch and start_epoch < p.epochs and over_budget(start_epoch):
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
                idx = perm[s * p.batch_size : (s + 1) * p.batch_size]
                if idx.numel() == 0:
                    break
                hist = EncodedHistory(hist_all.tokens[idx], hist_all.mask[idx], hist_all.levels[idx], hist_all.slots[idx], hist_all.items[idx])
                targets = item_tokens[tgt_all[idx]]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(hist, targets, weights=None if weights is None else weights[idx], extras={EXTRA_USER: user_all[idx]})
                    losses = dict(out.losses)
                    for name, (fn, lam) in self.extra_losses.items():
                        losses[name] = lam * fn(model)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1} step {s}: { {k: float(v) for k, v in losses.items()} }")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
                opt.step()
                sched.step()
                n_seen += idx.numel()
                for k_, v in losses.items():
                    sums[k_] = sums.get(k_, 0.0) + float(v.detach())
                if s % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            dt = time.perf_counter() - t0
            t_train += dt
            row: dict[str, Any] = {"epoch": epoch + 1, "samples_per_s": steps_per_epoch * p.batch_size / dt if dt > 0 else 0.0,
                                   "lr": sched.get_last_lr()[0], **{f"loss.{k_}": v / steps_per_epoch for k_, v in sums.items()}}
            if (epoch + 1) % p.eval_every == 0 or epoch + 1 == p.epochs:
                k = min(10, model.vocab.n_items)
                topk, _ = rank_histories(model, self.trie, valid.history[vidx], k=k, beam=max(self.eval_beam, k), progress=self.progress,
                                         desc="valid", users=valid.user[vidx])
                metrics = accuracy(topk, valid.target[vidx], ks=(5, 10))
                row.update({f"valid.{m}": v for m, v in metrics.items()})
                score = metrics.get("ndcg@10", metrics.get("ndcg@5", 0.0))
                if score > best.get("ndcg@10", -1.0) + (p.min_delta if best_epoch > 0 else 0.0):
                    best, best_epoch, bad = {"ndcg@10": score, **metrics}, epoch + 1, 0
                    best_state = state_dict_for_save(model)
                else:
                    bad += 1
                log.info("epoch %d: %s", epoch + 1, {k_: round(v, 4) if isinstance(v, float) else v for k_, v in row.items()})
            history.append(row)
            self._save_run(model, opt, epoch + 1, history, best, best_epoch, bad, best_state,
                           wall_used=wall_before + time.perf_counter() - t_wall)
            if bad >= p.patience:
                stopped = True
                break
            if epoch + 1 < p.epochs and over_budget(epoch + 1):
                log.info("wall-clock budget of %.1f min: another epoch would pass it; stopping after epoch %d", p.max_minutes, epoch + 1)
                budget_hit = True
                break
            if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
                break
        return TrainResult(best_state=best_state, history=history, best_epoch=best_epoch, best_valid=best,
                           epochs_run=len(history), stopped_early=stopped,
                           samples_per_s=(n_seen / t_train) if t_train > 0 else float(np.mean([h["samples_per_s"] for h in history] or [0.0])), train_seconds=t_train, resumed_from=start_epoch,
                           extra={"valid_samples": int(len(vidx)), "steps_per_epoch": steps_per_epoch, "device": str(self.device),
                                  "bf16": bf16, "threads": torch.get_num_threads(), "budget_hit": budget_hit,
                                  "wall_seconds": round(wall_before + time.perf_counter() - t_wall, 1)})

    # ---- resumable run directory ----------------------------------------------------------
    def _save_run(self, model, opt, epoch, history, best, best_epoch, bad, best_state, wall_used: float = 0.0) -> None:
        if self.run_dir is None:
            return
        from safetensors.torch import save_file

        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors, groups = _save_optimizer(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(state_dict_for_save(model), str(self.run_dir / "last.safetensors"))
        save_file(best_state, str(self.run_dir / "best.safetensors"))
        save_file(tensors, str(self.run_dir / "optimizer.safetensors"))
        state = {"config_hash": self.config_hash, "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch,
                 "bad": bad, "param_groups": groups, "wall_used": wall_used}
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
        torch.set_rng_state(tensors.pop("rng.torch"))
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
