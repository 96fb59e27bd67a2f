"""Backbones: TIGER (T5 encoder-decoder) and a decoder-only LM (Qwen2, optional LoRA)."""

from components.generator.backbones.base import Backbone, build_backbone

__all__ = ["Backbone", "build_backbone"]
