"""Streaming RQ-KMeans for catalogs whose embeddings do not fit (twice) in memory.

The in-memory :func:`~components.tokenizer.rq_kmeans.rq_kmeans` keeps ``x`` and a full residual
copy (≈ 2 × the embedding matrix). Here the embeddings stay on disk as a ``.npy`` opened with
``np.load(mmap_mode="r")`` and only ``O(sample + chunk)`` rows are ever in memory:

1. **train**: draw ``sample`` rows (without replacement, seed ``seed``; all rows, in order, when
   ``sample >= n``), and for each level ``l`` train the level's codebook with faiss k-means
   (seed ``seed + l``, as the in-memory path) on the *sample's* residuals
   ``r_l = x - Σ_{j<l} C_j[c_j]``, then assign the sample and subtract, for the next level;
2. **assign**: one pass over the rows in chunks of ``chunk``; per chunk the residual is rebuilt
   on the fly, level by level: ``c_l = argmin_k ||r_l - C_l[k]||²``, ``r_{l+1} = r_l - C_l[c_l]``
   (the same float32 operations, in the same order, as the in-memory path). The full residual
   matrix never exists. Codes go to an ``int32 [n, L]`` array (a ``.npy`` memmap with ``out=``).

Pages of the memory-mapped input are released (``madvise(MADV_DONTNEED)``) after each chunk, so
the process's resident set does not grow with the file (file-backed pages count in RSS).

With ``sample >= n`` and the same seed the codes equal ``rq_kmeans``'s (a test checks it).

Collisions at this size: :func:`collision_groups_fast` packs a row into one int64 (mixed radix over
``sizes``, lexicographic order kept; ``np.lexsort`` over the columns when the product overflows)
and does one stable argsort, instead of ``np.unique(axis=0)`` on void rows; it returns the same
(group id, rank) as :func:`~components.tokenizer.collisions.collision_groups`, and
:func:`add_extra_level_fast` the same result as
:func:`~components.tokenizer.collisions.add_extra_level`. No Python loop per item.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from components.tokenizer.encoders import TokenizerError
from components.tokenizer.rq_kmeans import CHUNK, RQResult, check_sizes, kmeans

log = logging.getLogger(__name__)
PAGE = mmap.PAGESIZE


# ---- on-disk embeddings -------------------------------------------------------------------------
def write_npy(path: str | os.PathLike, n: int, d: int, chunks: Iterable[np.ndarray]) -> Path:
    """Write a float32 ``[n, d]`` ``.npy`` from row chunks without holding the matrix (plain file
    writes: no dirty mapped pages in the writer's RSS)."""
    path = Path(path)
    written = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, d)})
        for c in chunks:
            c = np.ascontiguousarray(c, dtype=np.float32)
            if c.ndim != 2 or c.shape[1] != d:
                raise TokenizerError(f"{path}: chunk of shape {c.shape}, expected [*, {d}]")
            f.write(c.tobytes())
            written += len(c)
    if written != n:
        raise TokenizerError(f"{path}: wrote {written} rows, header says {n}")
    return path


def open_embeddings(src: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A path → ``np.load(path, mmap_mode="r")``; an array (memmap or not) is used as it is."""
    x = np.load(src, mmap_mode="r", allow_pickle=False) if isinstance(src, (str, os.PathLike)) else src
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise TokenizerError(f"embeddings: expected a non-empty 2-d array [n_items, dim], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TokenizerError(f"embeddings: dtype {x.dtype} is not numeric")
    return x


class _Pager:
    """Drops the resident pages of a read-only memmap (no-op for in-memory arrays)."""

    def __init__(self, x: np.ndarray):
        self.mm = getattr(x, "_mmap", None)
        self.ok = self.mm is not None and hasattr(self.mm, "madvise") and hasattr(mmap, "MADV_DONTNEED") and x.flags.c_contiguous
        if self.ok:
            buf = np.frombuffer(self.mm, dtype=np.uint8)  # only to read the mapping's address
            self.start = x.ctypes.data - buf.ctypes.data
            del buf
            self.row = x.strides[0]

    def release(self, lo: int = 0, hi: int | None = None) -> None:
        """Drop the pages that hold rows ``[lo, hi)``."""
        if not self.ok:
            return
        a = (self.start + lo * self.row) // PAGE * PAGE
        b = len(self.mm) if hi is None else min(-(-(self.start + hi * self.row) // PAGE) * PAGE, len(self.mm))
        if b > a:  # dropping a neighbour's page is harmless: read-only pages fault back in from the file
            self.mm.madvise(mmap.MADV_DONTNEED, a, b - a)


def _rows(x: np.ndarray, lo: int, hi: int, what: str = "embeddings") -> np.ndarray:
    """Rows ``[lo, hi)`` as a float32 in-memory copy, checked finite."""
    r = np.array(x[lo:hi], dtype=np.float32, order="C", copy=True)
    bad = ~np.isfinite(r).all(axis=1)
    if bad.any():
        raise TokenizerError(f"{what}: {int(bad.sum())} row(s) contain NaN or inf (first rows {(lo + np.flatnonzero(bad)[:10]).tolist()})")
    return r


def sample_rows(x: np.ndarray, sample: int, seed: int = 0, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(sorted row indices, float32 rows) of a uniform sample without replacement; every row, in
    order, when ``sample >= n``."""
    n = len(x)
    pager = _Pager(x)
    if sample >= n:
        idx = np.arange(n, dtype=np.int64)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False)).astype(np.int64)
    out = np.empty((len(idx), x.shape[1]), dtype=np.float32)
    # window by window of ``chunk`` rows, releasing each window's pages: a scattered read maps in
    # whole neighbourhoods of pages (kernel fault-around), which would otherwise stay resident
    bounds = np.searchsorted(idx, np.arange(0, n + chunk, chunk))
    for w in range(len(bounds) - 1):
        a, b = int(bounds[w]), int(bounds[w + 1])
        if a == b:
            continue
        j = idx[a:b]
        out[a:b] = x[j] if sample < n else x[int(j[0]) : int(j[-1]) + 1]
        pager.release(w * chunk, min((w + 1) * chunk, n))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise TokenizerError(f"embeddings: {int(bad.sum())} row(s) contain NaN or inf (first rows {idx[np.flatnonzero(bad)[:10]].tolist()})")
    return idx, out


# ---- quantizer ----------------------------------------------------------------------------------
class _Levels:
    """One exact L2 faiss index per level (built once, reused by every chunk)."""

    def __init__(self, codewords: list[np.ndarray]):
        import faiss

        self.codewords = codewords
        self.index = []
        for cw in codewords:
            ix = faiss.IndexFlatL2(cw.shape[1])
            ix.add(np.ascontiguousarray(cw, dtype=np.float32))
            self.index.append(ix)

    def assign(self, r: np.ndarray, lvl: int) -> np.ndarray:
        """Codes of level ``lvl`` for residuals ``r``; subtracts the codewords from ``r`` in place."""
        _, i = self.index[lvl].search(r, 1)
        c = i[:, 0].astype(np.int32)
        r -= self.codewords[lvl][c]
        return c


def train_codewords(
    xs: np.ndarray, sizes: list[int], niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256, progress: bool = False
) -> list[np.ndarray]:
    """Each level's codebook by faiss k-means on the sample's residuals (``xs`` is overwritten
    with the final residuals)."""
    from tqdm.auto import tqdm

    codewords: list[np.ndarray] = []
    for lvl in tqdm(range(len(sizes)), desc="rq levels (train)", disable=not progress):
        cw = kmeans(xs, sizes[lvl], niter, seed + lvl, max_points_per_centroid)
        codewords.append(cw)
        lv = _Levels([cw])
        for s in range(0, len(xs), CHUNK):
            lv.assign(xs[s : s + CHUNK], 0)
    return codewords


def assign_streaming(
    x: np.ndarray, codewords: list[np.ndarray], chunk: int = CHUNK, out: np.ndarray | None = None, progress: bool = False, on_chunk: Callable[[np.ndarray, int], None] | None = None
) -> tuple[np.ndarray, list[float], float]:
    """(codes ``[n, L]``, quantization error per level, ``mean_i ||x_i - x̄||²``) in one chunked pass
    over ``x``; ``on_chunk(rows, lo)`` sees each raw chunk (e.g. for extra statistics)."""
    from tqdm.auto import tqdm

    n, d = x.shape
    L = len(codewords)
    for lvl, cw in enumerate(codewords):
        if cw.ndim != 2 or cw.shape[1] != d:
            raise TokenizerError(f"level {lvl}: codewords of shape {cw.shape} for {d}-dim embeddings")
    codes = np.zeros((n, L), dtype=np.int32) if out is None else out
    if codes.shape != (n, L):
        raise TokenizerError(f"codes array of shape {codes.shape}, expected {(n, L)}")
    levels = _Levels(codewords)
    pager = _Pager(x)
    err = np.zeros(L, dtype=np.float64)
    s1 = np.zeros(d, dtype=np.float64)
    s2 = 0.0
    for lo in tqdm(range(0, n, chunk), desc="rq assign", disable=not progress):
        hi = min(lo + chunk, n)
        r = _rows(x, lo, hi)
        pager.release(lo, hi)
        if on_chunk is not None:
            on_chunk(r, lo)
        s1 += r.sum(0, dtype=np.float64)
        s2 += float(np.einsum("ij,ij->", r, r, dtype=np.float64))
        for lvl in range(L):
            codes[lo:hi, lvl] = levels.assign(r, lvl)
            err[lvl] += float(np.einsum("ij,ij->", r, r, dtype=np.float64))
    mean = s1 / n
    return codes, (err / n).tolist(), float(s2 / n - mean @ mean)


def rq_kmeans_streaming(
    src: str | os.PathLike | np.ndarray,
    sizes: list[int],
    sample: int | None = None,
    chunk: int = CHUNK,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> RQResult:
    """RQ-KMeans over a ``.npy`` path (opened memory-mapped) or an array, trained on ``sample`` rows
    (default ``max_points_per_centroid · max(sizes)``: what faiss would subsample anyway) and
    assigned in chunks of ``chunk`` rows. ``out``: write the codes to this ``.npy`` (memmap).
    ``timings`` (a dict) receives wall ``sample_s``, ``train_s``, ``assign_s`` and process CPU
    ``*_cpu_s``. ``RQResult.quant_error``
    is over *all* rows."""
    x = open_embeddings(src)
    n = len(x)
    check_sizes(n, sizes)
    if chunk < 1:
        raise TokenizerError(f"chunk must be ≥ 1 (got {chunk})")
    sample = max_points_per_centroid * max(sizes) if sample is None else int(sample)
    if sample < max(sizes):
        raise TokenizerError(f"sample of {sample} rows is smaller than the largest codebook ({max(sizes)})")
    tm: dict[str, float] = {}
    t, c = time.perf_counter(), time.process_time()
    _, xs = sample_rows(x, sample, seed, chunk)
    tm.update(sample_s=time.perf_counter() - t, sample_cpu_s=time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    codewords = train_codewords(xs, sizes, niter, seed, max_points_per_centroid, progress)
    del xs
    tm.update(train_s=time.perf_counter() - t, train_cpu_s=time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    codes_out = np.lib.format.open_memmap(out, mode="w+", dtype=np.int32, shape=(n, len(sizes))) if out is not None else None
    codes, errs, _ = assign_streaming(x, codewords, chunk, codes_out, progress)
    if codes_out is not None:
        codes_out.flush()
    tm.update(assign_s=time.perf_counter() - t, assign_cpu_s=time.process_time() - c)
    for lvl, e in enumerate(errs):
        log.info("level %d: %d codes, quantization error %.5f", lvl, sizes[lvl], e)
    if timings is not None:
        timings.update(tm)
    return RQResult(codes, codewords, errs)


# ---- collisions at scale ------------------------------------------------------------------------
def _sort_rows(sids: np.ndarray, sizes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(stable lexicographic row order, "row differs from the previous one in that order")."""
    sids = np.asarray(sids)
    n, L = sids.shape
    sizes = [int(sids[:, j].max()) + 1 if n else 1 for j in range(L)] if sizes is None else [int(s) for s in sizes[:L]]
    if len(sizes) < L or (n and (sids.min() < 0 or any(int(sids[:, j].max()) >= sizes[j] for j in range(L)))):
        raise TokenizerError("codes outside [0, size) cannot be packed")
    if float(np.prod([float(s) for s in sizes])) < 2.0**62:
        key = np.zeros(n, dtype=np.int64)
        for j in range(L):
            key *= sizes[j]
            key += sids[:, j]
        order = np.argsort(key, kind="stable")
        ks = key[order]
        new = np.empty(n, dtype=bool)
        new[:1] = True
        np.not_equal(ks[1:], ks[:-1], out=new[1:])
        return order, new
    order = np.lexsort(sids.T[::-1])  # stable; last key = first column
    srt = sids[order]
    new = np.empty(n, dtype=bool)
    new[:1] = True
    new[1:] = (srt[1:] != srt[:-1]).any(axis=1)
    return order, new


def collision_groups_fast(sids: np.ndarray, sizes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Same (group id per item, rank inside its group in index order) as
    :func:`~components.tokenizer.collisions.collision_groups`, vectorised for 10^7 rows."""
    n = len(sids)
    order, new = _sort_rows(sids, sizes)
    gid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    rank_sorted = np.arange(n, dtype=np.int64) - starts[gid]
    inv = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    inv[order] = gid
    rank[order] = rank_sorted
    return inv, rank


def count_collisions(sids: np.ndarray, sizes: list[int] | None = None) -> int:
    """Items whose full SID another item has too: ``n - |unique rows|``."""
    return int(len(sids) - _sort_rows(sids, sizes)[1].sum()) if len(sids) else 0


def add_extra_level_fast(sids: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[int], int]:
    """Same result as :func:`~components.tokenizer.collisions.add_extra_level` (TIGER
    disambiguation token), vectorised."""
    _, rank = collision_groups_fast(sids, sizes)
    n_resolved = int((rank > 0).sum())
    if n_resolved == 0:
        return np.asarray(sids).astype(np.int32), list(sizes), 0
    out = np.empty((len(sids), sids.shape[1] + 1), dtype=np.int32)
    out[:, :-1] = sids
    out[:, -1] = rank
    return out, [*sizes, int(rank.max()) + 1], n_resolved


# ---- the tokenize stage, streamed ---------------------------------------------------------------
def build_codebook_streaming(
    src: str | os.PathLike | np.ndarray,
    item_ids: list[str],
    p: Any,
    item_counts: np.ndarray | None = None,
    seed: int = 0,
    dataset_ref: str | None = None,
    sample: int | None = None,
    chunk: int = CHUNK,
    progress: bool = False,
):
    """:func:`~components.tokenizer.tokenize.build_codebook` for ``method: rqkmeans`` with
    ``collisions: extra_level`` on memory-mapped embeddings. Differences: k-means is trained on
    ``sample`` rows, and the text-space ``prefix_error`` statistic is left out (it needs the
    matrix in memory); the quantization errors are over all rows."""
    from components.tokenizer.codebook import Codebook
    from components.tokenizer.rq_kmeans import faiss_threads
    from components.tokenizer.stats import codebook_stats

    if p.method != "rqkmeans":
        raise TokenizerError(f"streaming tokenization supports method rqkmeans, not {p.method!r}")
    if p.collisions != "extra_level":
        raise TokenizerError("streaming tokenization supports collisions=extra_level (reassign needs every residual in memory)")
    faiss_threads()
    x = open_embeddings(src)
    if len(x) != len(item_ids):
        raise TokenizerError(f"embeddings: {len(x)} rows for {len(item_ids)} items")
    if item_counts is not None and len(item_counts) != len(item_ids):
        raise TokenizerError(f"{len(item_counts)} item counts for {len(item_ids)} items")
    sizes = [p.codebook_size] * p.levels
    mppc = p.max_points_per_centroid
    sample = mppc * max(sizes) if sample is None else sample
    _, xs = sample_rows(x, sample, seed, chunk)
    codewords = train_codewords(xs, sizes, p.niter, seed, mppc, progress)
    del xs
    raw, qerr, var = assign_streaming(x, codewords, chunk, None, progress)
    sids, out_sizes, n_resolved = add_extra_level_fast(raw, sizes)
    n_raw = count_collisions(raw, sizes)
    stats = codebook_stats(sids, out_sizes, item_counts, None, qerr, var)
    stats.update({"method": p.method, "collisions_raw": n_raw, "collisions_resolved": n_resolved, "collision_strategy": p.collisions,
                  "streaming": {"sample": int(min(sample, len(x))), "chunk": int(chunk)}})
    log.info("%s (streaming): %d raw collisions, %d resolved by %s", p.method, n_raw, n_resolved, p.collisions)
    return Codebook(sids=sids, sizes=out_sizes, item_ids=list(item_ids), method=p.method,
                    codewords={lvl: cw for lvl, cw in enumerate(codewords)}, stats=stats, dataset_ref=dataset_ref)
