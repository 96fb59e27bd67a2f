"""Residual quantization with k-means codebooks (RQ-KMeans), on faiss.

Level ``l`` clusters the residual ``r_l`` (``r_0 = x``) into ``K_l`` codes ``C_l``:

    c_l(i) = argmin_k ||r_l(i) - C_l[k]||²,     r_{l+1}(i) = r_l(i) - C_l[c_l(i)]

so ``x̂_l = Σ_{j≤l} C_j[c_j]`` and the quantization error after level ``l`` is
``mean_i ||r_{l+1}(i)||²``. faiss k-means trains each level on at most
``max_points_per_centroid · K`` sampled residuals (``niter`` Lloyd iterations) and then assigns
all points with an exact flat L2 search. Residuals are updated in place in chunks, so peak
memory is about two copies of ``x``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from components.tokenizer.encoders import TokenizerError, check_embeddings

log = logging.getLogger(__name__)
CHUNK = 1 << 16


def faiss_threads(n: int | None = None) -> None:
    """Cap faiss' OpenMP threads (default: at most 2, the dev box shares its cores)."""
    import faiss

    faiss.omp_set_num_threads(n or 2)


@dataclass
class RQResult:
    """Codes ``[n, L]`` and codewords per level; ``x`` is the quantized space (embeddings or latents)."""

    codes: np.ndarray  # int32 [n, L]
    codewords: list[np.ndarray]  # float32 [K_l, d]
    quant_error: list[float] = field(default_factory=list)  # mean ||x - x̂_l||² after level l


def check_sizes(n_items: int, sizes: list[int]) -> None:
    if not sizes:
        raise TokenizerError("at least one codebook level is needed")
    for lvl, k in enumerate(sizes):
        if k < 2:
            raise TokenizerError(f"level {lvl}: codebook size {k} < 2")
        if k > n_items:
            raise TokenizerError(f"level {lvl}: codebook size {k} is larger than the item count {n_items}; lower tokenizer.codebook_size")


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256) -> np.ndarray:
    """faiss k-means centroids ``[k, d]`` (float32)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) % (2**31), max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 search: (squared distances, indices) ``[n, k]``."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(x, dtype=np.float32), k)
    return d, i.astype(np.int64)


def subtract_codewords(residual: np.ndarray, codewords: np.ndarray, codes: np.ndarray) -> None:
    """``residual -= codewords[codes]`` in place, chunked to bound temporary memory."""
    for s in range(0, len(residual), CHUNK):
        residual[s : s + CHUNK] -= codewords[codes[s : s + CHUNK]]


def mean_sq_norm(a: np.ndarray) -> float:
    return float(sum(np.einsum("ij,ij->", a[s : s + CHUNK], a[s : s + CHUNK], dtype=np.float64) for s in range(0, len(a), CHUNK)) / max(len(a), 1))


def residual_quantize(
    x: np.ndarray,
    sizes: list[int],
    fit_level: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
    progress: bool = False,
) -> RQResult:
    """Generic residual loop: ``fit_level(residual, K, seed) -> (codewords [K,d], codes [n])``."""
    from tqdm.auto import tqdm

    x = check_embeddings(x)
    check_sizes(len(x), sizes)
    residual = x.copy()
    codes = np.zeros((len(x), len(sizes)), dtype=np.int32)
    codewords, errs = [], []
    for lvl in tqdm(range(len(sizes)), desc="rq levels", disable=not progress):
        cw, c = fit_level(residual, sizes[lvl], seed + lvl)
        codes[:, lvl] = c
        subtract_codewords(residual, cw, c)
        codewords.append(cw)
        errs.append(mean_sq_norm(residual))
        log.info("level %d: %d codes, quantization error %.5f", lvl, sizes[lvl], errs[-1])
    return RQResult(codes, codewords, errs)


def rq_kmeans(x: np.ndarray, sizes: list[int], niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256, progress: bool = False) -> RQResult:
    """RQ-KMeans: plain faiss k-means on each level's residuals."""

    def fit(r: np.ndarray, k: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        cw = kmeans(r, k, niter, s, max_points_per_centroid)
        return cw, nearest(r, cw)[1][:, 0].astype(np.int32)

    return residual_quantize(x, sizes, fit, seed, progress)


def quantize(x: np.ndarray, codewords: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual encoding of new points with fixed codewords: (codes [n, L], final residual)."""
    residual = np.array(x, dtype=np.float32, copy=True)
    codes = np.zeros((len(x), len(codewords)), dtype=np.int32)
    for lvl, cw in enumerate(codewords):
        codes[:, lvl] = nearest(residual, cw)[1][:, 0]
        subtract_codewords(residual, cw, codes[:, lvl])
    return codes, residual


def residual_at(x: np.ndarray, codes: np.ndarray, codewords: list[np.ndarray], level: int) -> np.ndarray:
    """The residual that enters ``level``: ``x - Σ_{j<level} C_j[c_j]``."""
    r = np.array(x, dtype=np.float32, copy=True)
    for j in range(level):
        subtract_codewords(r, codewords[j], codes[:, j])
    return r


def quant_errors(x: np.ndarray, codes: np.ndarray, codewords: list[np.ndarray]) -> list[float]:
    """``mean_i ||x_i - x̂_l(i)||²`` for every quantized level ``l``."""
    r = np.array(x, dtype=np.float32, copy=True)
    out = []
    for j, cw in enumerate(codewords):
        subtract_codewords(r, cw, codes[:, j])
        out.append(mean_sq_norm(r))
    return out
