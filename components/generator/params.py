"""``generator:`` params section (backbone, heads, training, decoding) and the ``quick`` preset."""

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
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    num_threads: int = Field(1, ge=1, description="torch CPU threads (1 is fastest on a shared 2-core box; raise on a dedicated machine)")
    resume: bool = Field(True, description="resume from the run directory's last epoch if its config matches")


class DecodeParams(Section):
    """``generator.decode:`` constrained beam search and ranking outputs."""

    beam: int = Field(20, ge=1, description="beam width")
    k: int = Field(20, ge=1, description="items returned per request (rankings keep top-k)")
    batch_size: int = Field(256, ge=1, description="requests per decoding batch")
    max_samples: int = Field(0, ge=0, description="rank only the first N samples of each split (0 = all)")


class GeneratorParams(Section):
    """``generator:`` what `genrec train` builds and `genrec rank` decodes."""

    preset: Literal["none", "quick"] = Field("none", description="quick = small model, 2 epochs, subsampled ranking (2-core CPU, minutes)")
    name: str | None = Field(None, description="checkpoint artifact name; null = <dataset>-<backbone>")
    codebook: str | None = Field(None, description="codebook ref; null = the latest codebook built from data.dataset")
    reference_sids: str | None = Field("auto", description="fallback when no codebook artifact exists: a released SID index json; auto = data/raw/<dataset>/reference/minionerec.index.json")
    backbone: Literal["tiger", "decoder_lm"] = Field("tiger", description="generator backbone")
    max_items: int = Field(0, ge=0, description="history items read (last N); 0 = the dataset's max_history")
    heads: list[dict[str, Any]] = Field(default_factory=list, description="head plug-ins, each {type: name, ...options}")
    tiger: TigerParams = Field(default_factory=TigerParams, description="TIGER (T5 encoder-decoder) sizes")
    decoder_lm: DecoderLMParams = Field(default_factory=DecoderLMParams, description="decoder-only LLM (Qwen2) size or local pretrained path, LoRA")
    train: TrainParams = Field(default_factory=TrainParams, description="optimizer, schedule, early stopping, RW and CRAB options")
    decode: DecodeParams = Field(default_factory=DecodeParams, description="constrained beam search settings")

    def effective(self) -> "GeneratorParams":
        """The params with the preset applied (preset values override params.yaml; the CLI re-applies
        its --set generator.* flags on top)."""
        if self.preset == "none":
            return self
        tree = self.model_dump()
        for dotted, value in PRESETS[self.preset].items():
            node = tree
            keys = dotted.split(".")
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = value
        return GeneratorParams.model_validate(tree)


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "tiger.d_model": 64, "tiger.d_ff": 256, "tiger.num_heads": 4, "tiger.d_kv": 16,
        "tiger.num_layers": 2, "tiger.num_decoder_layers": 2,
        "decoder_lm.hidden_size": 64, "decoder_lm.intermediate_size": 256, "decoder_lm.num_layers": 2,
        "train.epochs": 2, "train.batch_size": 256, "train.lr": 3e-3, "train.warmup_steps": 10,
        "train.max_steps_per_epoch": 30, "train.valid_samples": 200, "train.patience": 2,
        "decode.beam": 20, "decode.k": 20, "decode.max_samples": 500,
    }
}
