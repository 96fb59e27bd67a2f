"""Tokenizer: item text → embeddings → semantic IDs (RQ-KMeans, balanced RQ-KMeans, RQ-VAE)."""

# components.params registers this package's TokenizerParams section; importing it first makes
# `import components.tokenizer.params` work whichever module is imported first (no import cycle).
import components.params  # noqa: F401
