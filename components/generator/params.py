"""``generator:`` params section (backbone, heads, training, decoding) and its presets.

Presets (``generator.preset``) override params.yaml keys; ``--set generator.*`` flags win over a preset:

- ``cpu``: a small model (T5 2+2 layers, d_model 64, ~0.28 M parameters; Qwen2 2 layers, hidden 64)
  trained on full epochs to early stopping within a wall-clock budget, every sample ranked. It is the
  default: a 2-core box trains it in minutes and it beats SASRec on Industrial (BENCHMARKS.md).
- ``paper``: the papers' sizes (TIGER: 4+4 layers, d_model 128, 6 heads, d_ff 1024), for a GPU.
- ``smoke``: a tiny model and a handful of steps, for tests only (its numbers mean nothing).
- ``none``: params.yaml exactly as written.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from components.params import Section


class TigerParams(Section):
    """``generator.tiger:`` T5 encoder-decoder sizes (TIGER / GenPlugin defaults)."""

    d_model: int = Field(128, ge=8, description="hidden size (token embedding dimension)")
    d_kv: int = Field(64, ge=4, description="size of each attention head")
    d_ff: int = Field(1024, ge=8, description="feed-forward inner size")
    num_layers: int = Field(4, ge=1, description="encoder layers")
    num_decoder_layers: int = Field(4, ge=1, description="decoder layers")
    num_heads: int = Field(6, ge=1, description="attention heads")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout rate")


class DecoderLMParams(Section):
    """``generator.decoder_lm:`` Qwen2 decoder-only backbone (random init or a local pretrained dir)."""

    pretrained: str | None = Field(None, description="local pretrained directory (e.g. Qwen2.5-0.5B, read offline); null = random init from the sizes below")
    hidden_size: int = Field(128, ge=8, description="random init: hidden size")
    intermediate_size: int = Field(512, ge=8, description="random init: MLP inner size")
    num_layers: int = Field(4, ge=1, description="random init: decoder layers")
    num_heads: int = Field(4, ge=1, description="random init: attention heads")
    num_kv_heads: int = Field(2, ge=1, description="random init: key/value heads (GQA)")
    lora: Literal["auto", True, False] = Field("auto", description="LoRA on q/k/v/o_proj; auto = only with pretrained weights")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")


class TrainParams(Section):
    """``generator.train:`` optimisation, early stopping, re-weighting, extra losses."""

    epochs: int = Field(200, ge=1, description="maximum epochs")
    batch_size: int = Field(256, ge=1, description="training batch size")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(500, ge=0, description="linear warmup steps, then cosine decay to 0 at the last step")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm (0 = off)")
    max_steps_per_epoch: int = Field(0, ge=0, description="cap on steps per epoch (0 = full epoch)")
    eval_every: int = Field(1, ge=1, description="validate every N epochs")
    valid_samples: int = Field(1000, ge=0, description="valid subsample size for early stopping (0 = all)")
    patience: int = Field(10, ge=1, description="early stopping: validations without NDCG@10 improvement")
    reweight_power: float = Field(0.0, ge=0, description="popularity re-weighting (RW): weight (count+1)^-power, mean 1; 0 = off")
    extra_loss: str | None = Field(None, description="'module:factory' making an extra loss (e.g. CRAB alignment): factory(model, codebook) -> callable(model) -> scalar")
    extra_loss_weight: float = Field(1.0, ge=0, description="weight of the extra loss")
    device: str = Field("auto", description="auto (cuda if available) | cpu | cuda[:i]")
    bf16: Literal["auto", True, False] = Field("auto", description="bf16 autocast: auto = where the device runs it natively (CUDA; CPUs with AMX / AVX512-BF16), else fp32 | true = also emulated on other CPUs (slower) | false = fp32")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = the cores this process may use")
    max_minutes: float = Field(0.0, ge=0, description="wall-clock budget of one training call: stop before an epoch that would pass it (judged by the mean epoch so far; 0 = none); the best-on-valid epoch is kept")
    min_delta: float = Field(0.0, ge=0, description="early stopping: a valid NDCG@10 gain at or below this does not count as an improvement")
    resume: bool = Field(True, description="resume from the run directory's last epoch if its config matches")
    processes: int = Field(1, ge=1, description="training processes per node (PyTorch DDP: gloo on CPU, NCCL on GPU, one GPU each); > 1: `genrec train` re-launches itself under torchrun. batch_size stays the global batch: each process takes batch_size / (processes x nnodes) samples of it")
    nnodes: int = Field(1, ge=1, description="nodes of a multi-node run (run the same `genrec train` on each; needs rdzv_endpoint when > 1)")
    rdzv_endpoint: str = Field("", description="host:port of the torchrun c10d rendezvous when nnodes > 1 (e.g. the first node's address and a free port)")


class FinetuneParams(Section):
    """``generator.finetune:`` the CRAB §4.3 recipe for a run that starts from a checkpoint
    (:mod:`components.generator.finetune`)."""

    trainable: Literal["lora", "full"] = Field("lora", description="lora = LoRA on attention projections + token embeddings + heads (CRAB §4.3) | full = every weight")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA inputs")
    epochs: int = Field(10, ge=1, description="fine-tune epochs (paper: 10)")
    batch_size: int = Field(128, ge=1, description="fine-tune batch size (paper: global batch 128)")
    lr: float = Field(1e-3, gt=0, description="fine-tune peak learning rate (the paper's value is lost in our copy)")
    warmup_steps: int = Field(50, ge=0, description="fine-tune linear warmup steps, then cosine decay")
    beta: float = Field(0.1, ge=0.0, description="weight of CRAB's hierarchical alignment loss (Eq. 10) on a rebalanced codebook; 0 = off")


class DecodeParams(Section):
    """``generator.decode:`` constrained beam search and ranking outputs."""

    beam: int = Field(20, ge=1, description="beam width")
    k: int = Field(20, ge=1, description="items returned per request (rankings keep top-k)")
    batch_size: int = Field(256, ge=1, description="requests per decoding batch")
    max_samples: int = Field(0, ge=0, description="rank only the first N samples of each split (0 = all)")


class GeneratorParams(Section):
    """``generator:`` what `genrec train` builds and `genrec rank` decodes."""

    preset: Literal["none", "cpu", "paper", "smoke"] = Field("cpu", description="cpu = small model trained to early stopping (2-core CPU, minutes) | paper = the papers' sizes (GPU) | smoke = tests only | none = params.yaml as written")
    name: str | None = Field(None, description="checkpoint artifact name; null = <dataset>-<backbone>")
    codebook: str | None = Field(None, description="codebook ref; null = the latest codebook built from data.dataset")
    reference_sids: str | None = Field("auto", description="fallback when no codebook artifact exists: a released SID index json; auto = data/raw/<dataset>/reference/minionerec.index.json")
    backbone: Literal["tiger", "decoder_lm"] = Field("tiger", description="generator backbone")
    max_items: int = Field(0, ge=0, description="history items read (last N); 0 = the dataset's max_history")
    heads: list[dict[str, Any]] = Field(default_factory=list, description="head plug-ins, each {type: name, ...options}")
    tiger: TigerParams = Field(default_factory=TigerParams, description="TIGER (T5 encoder-decoder) sizes")
    decoder_lm: DecoderLMParams = Field(default_factory=DecoderLMParams, description="decoder-only LLM (Qwen2) size or local pretrained path, LoRA")
    train: TrainParams = Field(default_factory=TrainParams, description="optimizer, schedule, early stopping, RW and CRAB options")
    finetune: FinetuneParams = Field(default_factory=FinetuneParams, description="CRAB §4.3 recipe when training starts from a checkpoint (init_from): LoRA set, schedule, alignment weight")
    decode: DecodeParams = Field(default_factory=DecodeParams, description="constrained beam search settings")

    def check_fits(self, cuda_available: bool) -> None:
        """Refuse, before any training, a preset this machine cannot run in useful time: ``paper``
        (the papers' sizes) with ``train.device: auto`` and no GPU. Setting ``train.device: cpu``
        explicitly runs it anyway."""
        if self.preset == "paper" and self.train.device == "auto" and not cuda_available:
            raise ValueError("generator.preset=paper: the papers' model sizes are a GPU preset and no CUDA device is visible "
                             "(a 2-core CPU trains them ~10x slower than the cpu preset's model). Use generator.preset=cpu, "
                             "or set generator.train.device=cpu to train the paper sizes on the CPU anyway.")

    def effective(self) -> "GeneratorParams":
        """The params with the preset applied (preset values override params.yaml; the CLI re-applies
        its --set generator.* flags on top)."""
        if self.preset == "none":
            return self
        tree = self.model_dump()
        set_keys(tree, PRESETS[self.preset].items())
        return GeneratorParams.model_validate(tree)


def set_keys(tree: dict[str, Any], pairs) -> dict[str, Any]:
    """Set dotted keys (relative to ``generator:``) in a dumped params tree, in place."""
    for dotted, value in pairs:
        node, keys = tree, dotted.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return tree


def cli_generator_overrides(overrides) -> list[tuple[str, Any]]:
    """The ``--set generator.*`` flags of a command line, as (key below generator, value) pairs."""
    from components.params import parse_overrides

    return [(k.split(".", 1)[1], v) for k, v in parse_overrides(overrides) if k.startswith("generator.")]


_CPU_SIZES: dict[str, Any] = {
    "tiger.d_model": 64, "tiger.d_ff": 256, "tiger.num_heads": 4, "tiger.d_kv": 16,
    "tiger.num_layers": 2, "tiger.num_decoder_layers": 2,
    # dropout off: on CPU torch's dropout masks (bernoulli_) cost ~35% of a training step of this
    # model (1.55x more samples/s without, BENCHMARKS.md); early stopping guards against overfitting
    "tiger.dropout": 0.0,
    "decoder_lm.hidden_size": 64, "decoder_lm.intermediate_size": 256, "decoder_lm.num_layers": 2,
    "decoder_lm.num_heads": 4, "decoder_lm.num_kv_heads": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    # small model, full epochs, early stopping on valid NDCG@10, bounded wall time, all samples ranked
    "cpu": {
        **_CPU_SIZES,
        # the cosine schedule ends at epoch 10, inside the 9.5-minute budget of a 2-core box
        "train.epochs": 10, "train.batch_size": 256, "train.lr": 0.004, "train.warmup_steps": 300,
        "train.max_steps_per_epoch": 0, "train.valid_samples": 1000, "train.eval_every": 1,
        # patience: half the schedule. 3 stopped an ML-100k TIGER at epoch 6 of 10 on valid noise (943 users;
        # best at epoch 3, lr still 40% of peak) while its twin seed gained 0.011 NDCG@10 at epoch 7; no
        # Industrial cpu run ever stopped by patience (36 runs, all reached epoch 10)
        "train.patience": 5,
        "train.max_minutes": 9.5,
        # CRAB's fine-tune on this box: 4 epochs at the training batch (the paper: 10 at 128, a GPU budget)
        "finetune.epochs": 4, "finetune.batch_size": 256, "finetune.lora_dropout": 0.0,
        "decode.beam": 20, "decode.k": 20, "decode.max_samples": 0,
    },
    # TIGER / GenPlugin sizes (the TigerParams defaults), trained to early stopping: a GPU preset
    "paper": {
        "tiger.d_model": 128, "tiger.d_ff": 1024, "tiger.num_heads": 6, "tiger.d_kv": 64,
        "tiger.num_layers": 4, "tiger.num_decoder_layers": 4,
        "decoder_lm.hidden_size": 128, "decoder_lm.intermediate_size": 512, "decoder_lm.num_layers": 4,
        "decoder_lm.num_heads": 4, "decoder_lm.num_kv_heads": 2,
        "train.epochs": 200, "train.batch_size": 256, "train.lr": 0.001, "train.warmup_steps": 500,
        "train.max_steps_per_epoch": 0, "train.valid_samples": 0, "train.patience": 10, "train.max_minutes": 0.0,
        "finetune.epochs": 10, "finetune.batch_size": 128,
        "decode.beam": 20, "decode.k": 20, "decode.max_samples": 0,
    },
    # tests only: a tiny model and a few steps (numbers mean nothing)
    "smoke": {
        "tiger.d_model": 16, "tiger.d_ff": 32, "tiger.num_heads": 2, "tiger.d_kv": 8,
        "tiger.num_layers": 1, "tiger.num_decoder_layers": 1,
        "decoder_lm.hidden_size": 16, "decoder_lm.intermediate_size": 32, "decoder_lm.num_layers": 1,
        "decoder_lm.num_heads": 2, "decoder_lm.num_kv_heads": 1,
        "train.epochs": 2, "train.batch_size": 64, "train.lr": 0.003, "train.warmup_steps": 2,
        "train.max_steps_per_epoch": 3, "train.valid_samples": 20, "train.patience": 2, "train.max_minutes": 0.0,
        "finetune.epochs": 1, "finetune.batch_size": 64, "finetune.warmup_steps": 1,
        "decode.beam": 10, "decode.k": 20, "decode.max_samples": 30,
    },
}
