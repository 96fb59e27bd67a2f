"""CRAB §4.3: what trains, on which schedule, with which loss, when a generator starts from another
checkpoint (``genrec train --init-from``, a variant's ``init_from``).

The paper fine-tunes the model trained on the original codebook on the rebalanced one: "we update
the embedding layers for both existing and newly introduced tokens ... LoRA adapters are applied
only to the attention layers", 10 epochs, AdamW, global batch 128, weight decay 0.01, loss
``L_rec + beta * L_reg`` (Eq. 10, ``L_reg`` = Eq. 9). ``generator.finetune`` holds that recipe:

- ``trainable: lora`` (default): peft LoRA on every attention projection of the backbone (T5
  self- and cross-attention ``q, k, v, o``; Qwen2 ``q/k/v/o_proj``), the token embedding matrix
  (old and new tokens; the tied output layer with it) and the heads in full; every other backbone
  weight is frozen. After training the adapters are merged into the base weights, so the
  checkpoint has the plain architecture (serving and ranking need nothing new). A pretrained
  decoder LM that already carries LoRA (``decoder_lm.lora``) keeps its own adapters and trainable
  SID rows, which are the same parameter set. ``trainable: full``: every weight trains.
- ``epochs, batch_size, lr, warmup_steps`` replace ``generator.train``'s for the fine-tune (the
  rest of ``generator.train`` -- early stopping, budget, threads -- still applies).
- ``beta``: the weight of CRAB's hierarchical alignment loss (Eq. 9-10) over the new codebook's
  token tree, added when the codebook was rebalanced (has split tokens); 0 = off (the ablation
  "without alignment"). The embedding rows of split tokens start as their origin's rows
  (:func:`components.generator.checkpoint.warm_start`); the loss never re-initialises them.
"""

from __future__ import annotations

from typing import Any

import torch

from components.generator.params import FinetuneParams


def finetune_train_params(train, fp: FinetuneParams):
    """``generator.train`` with the fine-tune's schedule (epochs, batch size, lr, warmup)."""
    return train.model_copy(update={k: getattr(fp, k) for k in ("epochs", "batch_size", "lr", "warmup_steps")})


def is_rebalanced(codebook) -> bool:
    """Whether the codebook has tokens a split created (``token_origin`` not the identity)."""
    origin = getattr(codebook, "token_origin", None)
    return bool(origin) and any(int(o) != t for level in origin for t, o in enumerate(level))


class FinetuneHandle:
    """What :func:`prepare_finetune` did to a model; :meth:`finish` merges LoRA adapters back."""

    def __init__(self, model, wrapped: str | None, trainable: int, total: int):
        self.model, self.wrapped = model, wrapped
        self.trainable_params, self.total_params = trainable, total

    def finish(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Load ``state`` (the best epoch's weights, in the adapted layout) and merge the adapters
        into the base weights: afterwards the model has its plain architecture and state dict."""
        if state is not None:
            self.model.load_state_dict(state)
        if self.wrapped:
            bb = self.model.backbone
            setattr(bb, self.wrapped, getattr(bb, self.wrapped).merge_and_unload())
            self.wrapped = None
        for p in self.model.parameters():
            p.requires_grad_(True)


def prepare_finetune(model, fp: FinetuneParams) -> FinetuneHandle:
    """Set what trains for the fine-tune (module docstring), in place; returns a handle whose
    ``finish()`` turns the model back into its plain architecture after training."""
    bb = model.backbone
    wrapped = None
    if fp.trainable == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif bb.kind == "decoder_lm" and bb.cfg.get("lora_applied"):
        pass  # pretrained LM: its own LoRA on q/k/v/o_proj + trainable SID rows are the §4.3 set already
    else:
        from peft import LoraConfig, get_peft_model

        from components.rebalancer.alignment import attention_lora_targets

        attr = "t5" if bb.kind == "tiger" else "lm"
        inner = getattr(bb, attr)
        cfg = LoraConfig(r=fp.lora_r, lora_alpha=fp.lora_alpha, lora_dropout=fp.lora_dropout,
                         target_modules=attention_lora_targets(inner), bias="none")
        setattr(bb, attr, get_peft_model(inner, cfg))  # freezes every non-LoRA weight of the backbone
        wrapped = attr
        emb = getattr(bb, attr).get_input_embeddings()
        emb.weight.requires_grad_(True)  # old and new tokens' rows (tied output layer: the same tensor)
        out = getattr(bb, attr).get_output_embeddings()
        if out is not None and getattr(out, "weight", None) is not None:
            out.weight.requires_grad_(True)
        for h in model.heads:
            for p in h.parameters():
                p.requires_grad_(True)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FinetuneHandle(model, wrapped, n_train, sum(p.numel() for p in model.parameters()))


def crab_alignment_loss(model, codebook, beta: float) -> dict[str, tuple[Any, float]]:
    """``{"crab_align": (loss_fn, beta)}`` for the trainer when the codebook was rebalanced and
    ``beta > 0``, else ``{}``. ``loss_fn(model)`` = Eq. 9 over the codebook's token tree on the
    model's SID input embeddings."""
    if beta <= 0 or not is_rebalanced(codebook):
        return {}
    from components.generator.losses import crab_alignment

    return {"crab_align": (crab_alignment(model, codebook), float(beta))}
