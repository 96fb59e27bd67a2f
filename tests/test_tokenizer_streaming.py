"""Streaming RQ-KMeans (memory-mapped input, sampled training, chunked assignment) and the
vectorised collision handling used at 10^7 items."""

from __future__ import annotations

import numpy as np
import pytest

from components.tokenizer.collisions import add_extra_level, collision_groups
from components.tokenizer.encoders import TokenizerError
from components.tokenizer.rq_kmeans import faiss_threads, quant_errors, rq_kmeans
from components.tokenizer.streaming import (
    add_extra_level_fast,
    assign_streaming,
    collision_groups_fast,
    count_collisions,
    open_embeddings,
    rq_kmeans_streaming,
    sample_rows,
    write_npy,
)

# Two obvious clusters per level, by hand: level 0 centres (0, 0) and (0, 10); what is left,
# r = x - centre, is near (0.3, 1.05) or near (-0.6, -2.1): level 1's centres (means of 4 and 2).
HAND = np.array([[0.2, 1], [0.4, 1], [-0.6, -2], [0.1, 11.1], [0.5, 11.1], [-0.6, 7.8]], dtype=np.float32)
HAND_CW = [np.array([[0, 10], [0, 0]], np.float32), np.array([[-0.6, -2.1], [0.3, 1.05]], np.float32)]
HAND_CODES = np.array([[1, 1], [1, 1], [1, 0], [0, 1], [0, 1], [0, 0]])  # with HAND_CW's labels
HAND_ERR = [(6.56 + 7.88) / 6, 0.13 / 6]  # mean ||r||² after level 0, after level 1


def _canon(codes: np.ndarray) -> np.ndarray:
    """Relabel each column by first appearance (k-means labels are arbitrary)."""
    out = np.empty_like(codes)
    for j in range(codes.shape[1]):
        _, first, inv = np.unique(codes[:, j], return_index=True, return_inverse=True)
        out[:, j] = np.argsort(np.argsort(first))[inv.reshape(-1)]
    return out


def _blobs(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((12, d)).astype(np.float32) * 3
    return (c[rng.integers(0, 12, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 4, 5, 6, 100])
def test_hand_assignment_with_given_codewords(chunk):
    codes, err, var = assign_streaming(HAND, HAND_CW, chunk=chunk)
    np.testing.assert_array_equal(codes, HAND_CODES)
    np.testing.assert_allclose(err, HAND_ERR, rtol=1e-5)
    mean = HAND.astype(np.float64).mean(0)
    np.testing.assert_allclose(var, ((HAND - mean) ** 2).sum(1).mean(), rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_hand_case_trained_end_to_end(tmp_path, seed):
    faiss_threads(1)
    path = write_npy(tmp_path / "hand.npy", 6, 2, [HAND[:4], HAND[4:]])
    res = rq_kmeans_streaming(path, [2, 2], sample=6, chunk=4, niter=10, seed=seed)
    np.testing.assert_array_equal(_canon(res.codes), [[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [1, 1]])
    cw0 = res.codewords[0][np.argsort(res.codewords[0][:, 1])]
    cw1 = res.codewords[1][np.argsort(res.codewords[1][:, 1])]
    np.testing.assert_allclose(cw0, [[0, 0], [0, 10]], atol=1e-5)
    np.testing.assert_allclose(cw1, [[-0.6, -2.1], [0.3, 1.05]], atol=1e-5)
    np.testing.assert_allclose(res.quant_error, HAND_ERR, rtol=1e-4)


@pytest.mark.parametrize("chunk", [333, 1000, 5000])
def test_equals_in_memory_rq_kmeans_when_sample_is_everything(tmp_path, chunk):
    faiss_threads(1)
    x = _blobs(2500)
    path = write_npy(tmp_path / "x.npy", len(x), x.shape[1], [x[s : s + 700] for s in range(0, len(x), 700)])
    ref = rq_kmeans(x, [16, 8, 4], niter=10, seed=3)
    out = tmp_path / "codes.npy"
    res = rq_kmeans_streaming(path, [16, 8, 4], sample=len(x), chunk=chunk, niter=10, seed=3, out=out)
    np.testing.assert_array_equal(res.codes, ref.codes)
    np.testing.assert_array_equal(np.load(out), ref.codes)
    for a, b in zip(res.codewords, ref.codewords):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(res.quant_error, ref.quant_error, rtol=1e-5)
    np.testing.assert_allclose(res.quant_error, quant_errors(x, res.codes, res.codewords), rtol=1e-5)


def test_sampled_training_assigns_every_row_consistently(tmp_path):
    faiss_threads(1)
    x = _blobs(4000, seed=1)
    path = write_npy(tmp_path / "x.npy", len(x), x.shape[1], [x])
    res = rq_kmeans_streaming(path, [12, 6], sample=600, chunk=777, niter=10, seed=0)
    # every row carries its greedy nearest codes under the trained codewords (no row skipped)
    r = x.copy()
    for lvl, cw in enumerate(res.codewords):
        d = ((r[:, None, :] - cw[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(res.codes[:, lvl], d.argmin(1))
        r -= cw[res.codes[:, lvl]]
    np.testing.assert_allclose(res.quant_error[-1], (r.astype(np.float64) ** 2).sum(1).mean(), rtol=1e-5)
    # 12 well-separated blobs: level 0 recovers them from a 15% sample
    assert res.quant_error[0] < 0.2 * ((x - x.mean(0)) ** 2).sum(1).mean()


def test_sample_rows_and_memmap_input(tmp_path):
    x = _blobs(1000)
    path = write_npy(tmp_path / "x.npy", len(x), x.shape[1], [x])
    mm = open_embeddings(path)
    assert isinstance(mm, np.memmap)
    idx, rows = sample_rows(mm, 100, seed=5, chunk=7)
    assert len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(rows, x[idx])
    idx, rows = sample_rows(mm, 5000, chunk=300)
    np.testing.assert_array_equal(idx, np.arange(1000))
    np.testing.assert_array_equal(rows, x)


def test_bad_input(tmp_path):
    x = _blobs(50)
    x[17, 2] = np.nan
    path = write_npy(tmp_path / "bad.npy", 50, x.shape[1], [x])
    with pytest.raises(TokenizerError, match="NaN"):
        rq_kmeans_streaming(path, [4], sample=50, chunk=8)
    with pytest.raises(TokenizerError, match="larger than the item count"):
        rq_kmeans_streaming(_blobs(10), [16])
    with pytest.raises(TokenizerError, match="header says"):
        write_npy(tmp_path / "short.npy", 10, 8, [_blobs(5)])


@pytest.mark.parametrize("seed", range(4))
def test_fast_collision_groups_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    for sizes in ([3, 2, 2], [4, 4], [2**21, 2**21, 2**21, 4]):  # the last overflows int64 packing → lexsort
        sids = np.stack([rng.integers(0, min(s, 3), 300) for s in sizes], 1).astype(np.int32)
        inv_ref, rank_ref = collision_groups(sids)
        inv, rank = collision_groups_fast(sids, sizes)
        np.testing.assert_array_equal(inv, inv_ref)
        np.testing.assert_array_equal(rank, rank_ref)
        ref = add_extra_level(sids, sizes)
        out = add_extra_level_fast(sids, sizes)
        np.testing.assert_array_equal(out[0], ref[0])
        assert out[1:] == ref[1:]
        assert count_collisions(sids, sizes) == len(sids) - len(np.unique(sids, axis=0))


def test_fast_extra_level_hand_and_no_collision():
    sids = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 0]])
    out, sizes, n = add_extra_level_fast(sids, [2, 2])
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 1, 0], [1, 0, 1], [1, 0, 2], [0, 0, 0]])
    assert (sizes, n) == ([2, 2, 3], 2)
    uniq = np.array([[0, 1], [1, 0]])
    out, sizes, n = add_extra_level_fast(uniq, [2, 2])
    np.testing.assert_array_equal(out, uniq)
    assert (sizes, n) == ([2, 2], 0)
    with pytest.raises(TokenizerError):
        collision_groups_fast(np.array([[0, 5]]), [2, 2])


def test_build_codebook_streaming_equals_build_codebook(tmp_path):
    from components.tokenizer.params import TokenizerParams
    from components.tokenizer.streaming import build_codebook_streaming
    from components.tokenizer.tokenize import build_codebook

    x = _blobs(1500, seed=4)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(len(x))]
    counts = np.random.default_rng(0).integers(0, 9, len(x))
    p = TokenizerParams(method="rqkmeans", levels=2, codebook_size=16, niter=10, collisions="extra_level")
    ref = build_codebook(x, ids, p, counts, seed=1)
    path = write_npy(tmp_path / "x.npy", len(x), x.shape[1], [x])
    cb = build_codebook_streaming(path, ids, p, counts, seed=1, sample=len(x), chunk=400)
    np.testing.assert_array_equal(cb.sids, ref.sids)
    assert cb.sizes == ref.sizes and cb.stats["collisions_raw"] == ref.stats["collisions_raw"] > 0
    assert cb.stats["collisions_resolved"] == ref.stats["collisions_resolved"]
    for a, b in zip(cb.stats["levels"], ref.stats["levels"]):
        assert {k: v for k, v in b.items() if k not in ("prefix_error", "quant_error", "quant_error_rel")} == {k: v for k, v in a.items() if k not in ("quant_error", "quant_error_rel")}
        if "quant_error" in b:
            np.testing.assert_allclose(a["quant_error"], b["quant_error"], rtol=1e-4)
            np.testing.assert_allclose(a["quant_error_rel"], b["quant_error_rel"], rtol=1e-4)
    with pytest.raises(TokenizerError, match="extra_level"):
        build_codebook_streaming(path, ids, TokenizerParams(method="rqkmeans", levels=2, codebook_size=16, collisions="reassign"))
