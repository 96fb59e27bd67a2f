"""Sparse (CSR) SID trie: hand-checked structure, equality with the dense trie (masks, children,
items, full constrained beam search, exhaustive ranking), the build_trie factory's choice, bad input."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from components.generator.decoding import SIDTrie, constrained_beam_search
from components.generator.decoding.trie import PrefixTrie, SparseSIDTrie, build_trie
from components.generator.vocab import BOS
from tests.generator_helpers import exhaustive_topk, random_sids, tiny_model

torch.set_num_threads(1)

# 5 items over sizes [3, 4, 2], item order deliberately not lexicographic
HAND_SIDS = np.array([[2, 1, 0], [0, 3, 1], [0, 0, 1], [2, 1, 1], [0, 3, 0]])
HAND_SIZES = [3, 4, 2]
T, F = True, False
# nodes in lexicographic order: level 1: (0,)=0 (2,)=1; level 2: (0,0)=0 (0,3)=1 (2,1)=2
HAND_VALID = [
    [[T, F, T]],
    [[T, F, F, T], [F, T, F, F]],
    [[F, T], [T, T], [T, T]],
]
HAND_CHILD = [
    [[0, -1, 1]],
    [[0, -1, -1, 1], [-1, 2, -1, -1]],
    [[-1, 2], [4, 1], [0, 3]],  # leaves: item indices
]


def _all_pairs(n_nodes, size):
    nodes = torch.arange(n_nodes).repeat_interleave(size)
    toks = torch.arange(size).repeat(n_nodes)
    return nodes, toks


def test_sparse_hand_built():
    trie = SparseSIDTrie(HAND_SIDS, HAND_SIZES)
    assert trie.layout == "sparse" and isinstance(trie, PrefixTrie)
    assert trie.n_nodes == [1, 2, 3] and trie.n_items == 5 and trie.n_levels == 3
    # the CSR arrays themselves
    assert [p.tolist() for p in trie.indptr] == [[0, 2], [0, 2, 3], [0, 1, 3, 5]]
    assert [k.tolist() for k in trie.keys] == [[0, 2], [0 * 4 + 0, 0 * 4 + 3, 1 * 4 + 1], [1, 2, 3, 4, 5]]
    assert trie.leaf_item.tolist() == [2, 4, 1, 0, 3]
    assert trie.max_degree == [2, 2, 2]
    for lvl, size in enumerate(HAND_SIZES):
        n = trie.n_nodes[lvl]
        assert trie.valid[lvl].shape == (n, size) and trie.child[lvl].shape == (n, size)
        assert trie.valid[lvl][torch.arange(n)].tolist() == HAND_VALID[lvl]
        assert trie.child[lvl][torch.arange(n)].tolist() == HAND_CHILD[lvl]
        for node in range(n):  # int index: one row, like a dense tensor
            assert trie.valid[lvl][node].tolist() == HAND_VALID[lvl][node]
        nodes, toks = _all_pairs(n, size)
        expect = [HAND_CHILD[lvl][a][b] for a, b in zip(nodes.tolist(), toks.tolist())]
        assert trie.child[lvl][nodes, toks].tolist() == expect
        # repeated nodes in a 2-D batch (beams of several requests), reversed order
        batch = torch.arange(n).flip(0).repeat(2).view(2, n)
        assert trie.valid[lvl][batch].tolist() == [[HAND_VALID[lvl][i] for i in row] for row in batch.tolist()]
    # the beam search's exact call pattern: child[t][node_tensor, tok_tensor]
    assert trie.child[1][torch.tensor([0, 0, 1]), torch.tensor([3, 1, 1])].tolist() == [1, -1, 2]
    assert int(trie.child[2][1, 0]) == 4  # plain ints, as the naive reference search does
    # out-of-range tokens are simply not children
    assert trie.child[2][torch.tensor([0, 2]), torch.tensor([2, -1])].tolist() == [-1, -1]
    with pytest.raises(IndexError):
        trie.valid[1][torch.tensor([2])]
    local = torch.tensor([[0, 3, 1], [2, 1, 1], [0, 0, 0], [1, 0, 0], [2, 2, 0], [0, 3, 5]])
    assert trie.items_of(local).tolist() == [1, 3, -1, -1, -1, -1]
    assert trie.items_of(torch.from_numpy(HAND_SIDS)).tolist() == [0, 1, 2, 3, 4]
    assert trie.allowed_tokens_dict([10, 20, 30]) == {
        (): [10, 12], (10,): [20, 23], (12,): [21], (10, 20): [31], (10, 23): [30, 31], (12, 21): [30, 31]}
    dense = SIDTrie(HAND_SIDS, HAND_SIZES)  # the dense trie agrees with the same hand-made tables
    assert [v.tolist() for v in dense.valid] == HAND_VALID and [c.tolist() for c in dense.child] == HAND_CHILD


def _check_same(dense: SIDTrie, sparse: SparseSIDTrie, seed: int):
    g = torch.Generator().manual_seed(seed)
    assert sparse.n_nodes == dense.n_nodes and sparse.n_items == dense.n_items and sparse.sizes == dense.sizes
    for lvl, size in enumerate(dense.sizes):
        n = dense.n_nodes[lvl]
        allnodes = torch.arange(n)
        assert torch.equal(sparse.valid[lvl][allnodes], dense.valid[lvl])
        assert torch.equal(sparse.child[lvl][allnodes], dense.child[lvl])
        nodes = torch.randint(0, n, (7, 13), generator=g)  # a random beam batch, repeats included
        assert torch.equal(sparse.valid[lvl][nodes], dense.valid[lvl][nodes])
        assert torch.equal(sparse.next_mask(lvl, nodes), dense.next_mask(lvl, nodes))
        toks = torch.randint(0, size, (7, 13), generator=g)
        assert torch.equal(sparse.child[lvl][nodes, toks], dense.child[lvl][nodes, toks])
        # chosen tokens that are valid (what the beam search mostly asks for)
        mask = dense.valid[lvl][nodes.reshape(-1)]
        pick = torch.multinomial(mask.float(), 1, generator=g).squeeze(1)
        got = sparse.child[lvl][nodes.reshape(-1), pick]
        assert torch.equal(got, dense.child[lvl][nodes.reshape(-1), pick]) and bool((got >= 0).all())
        a, b = _all_pairs(n, size)
        assert torch.equal(sparse.next_node(lvl, a, b), dense.next_node(lvl, a, b))
    local = torch.stack([torch.randint(-1, s + 1, (200,), generator=g) for s in dense.sizes], 1)
    assert torch.equal(sparse.items_of(local), dense.items_of(local))
    offsets = list(np.cumsum([3] + dense.sizes[:-1]))
    assert sparse.allowed_tokens_dict(offsets) == dense.allowed_tokens_dict(offsets)


class RandomScorer:
    """Tiny deterministic 'model' for constrained_beam_search: step logits are a random table row
    picked by a hash of (request, tokens decoded so far), so scores depend on the whole prefix."""

    P = 10007

    def __init__(self, sizes, seed=0):
        self.sizes = list(sizes)
        offs = [3 + sum(sizes[:lvl]) for lvl in range(len(sizes))]
        self.V = 3 + sum(sizes)
        self.vocab = types.SimpleNamespace(n_levels=len(sizes), offsets=offs,
                                           level_range=lambda t: (offs[t], offs[t] + self.sizes[t]))
        self.table = torch.randn(self.P, self.V, generator=torch.Generator().manual_seed(seed)) * 3

    def _mix(self, h, prev):
        return (h * 1000003 + prev) % self.P

    def begin(self, hist, extras=None):
        return {"h": hist.tokens[:, 0].long() * 7919 % self.P}

    def step(self, state, t, prev):
        state["h"] = self._mix(state["h"], prev)
        return self.table[state["h"]]

    def select(self, state, src, context=False):
        state["h"] = state["h"][src]

    def exhaustive(self, requests: torch.Tensor, sids: np.ndarray, k: int):
        """Score every item for every request; top-k (items, scores)."""
        sids = torch.from_numpy(sids)
        h = (requests.long() * 7919 % self.P)[:, None].expand(-1, sids.shape[0])
        prev = torch.full_like(h, BOS)
        score = torch.zeros(h.shape)
        for t in range(len(self.sizes)):
            h = self._mix(h, prev)
            lp = torch.log_softmax(self.table[h], -1)
            tok = sids[:, t] + self.vocab.offsets[t]
            score = score + lp.gather(-1, tok.expand_as(h)[..., None]).squeeze(-1)
            prev = tok.expand_as(h)
        return score.topk(k, dim=1)


CATALOGS = [([5, 4, 6], 60, 0), ([7, 3], 15, 1), ([2, 3, 2, 4], 30, 2), ([8, 8, 8], 300, 3), ([3, 4, 2], 24, 4)]


@pytest.mark.parametrize("sizes,n,seed", CATALOGS)
def test_sparse_equals_dense(sizes, n, seed):
    sids = random_sids(sizes, n, seed=seed)
    sids = sids[np.random.default_rng(seed).permutation(n)]  # item order unrelated to SID order
    dense, sparse = SIDTrie(sids, sizes), SparseSIDTrie(sids, sizes)
    _check_same(dense, sparse, seed)
    assert torch.equal(sparse.items_of(torch.from_numpy(sids)), torch.arange(n))


@pytest.mark.parametrize("sizes,n,seed", CATALOGS)
@pytest.mark.parametrize("beam", [1, 4, 11])
def test_beam_search_sparse_equals_dense(sizes, n, seed, beam):
    sids = random_sids(sizes, n, seed=seed)
    sids = sids[np.random.default_rng(seed + 10).permutation(n)]
    model = RandomScorer(sizes, seed=seed)
    hist = types.SimpleNamespace(tokens=torch.arange(6)[:, None] * 13 + seed)
    k = min(beam, n)
    res_d = constrained_beam_search(model, hist, SIDTrie(sids, sizes), beam=beam, k=k)
    res_s = constrained_beam_search(model, hist, SparseSIDTrie(sids, sizes), beam=beam, k=k)
    assert torch.equal(res_s.items, res_d.items) and torch.equal(res_s.tokens, res_d.tokens)
    assert torch.equal(res_s.scores, res_d.scores)
    assert bool((res_s.items >= 0).all())  # never an invalid item ...
    assert all(len(set(row)) == k for row in res_s.items.tolist())  # ... nor a duplicate
    assert torch.equal(torch.from_numpy(sids)[res_s.items], res_s.tokens)  # tokens are the items' SIDs


@pytest.mark.parametrize("sizes,n,seed", CATALOGS)
def test_sparse_beam_equals_exhaustive(sizes, n, seed):
    sids = random_sids(sizes, n, seed=seed)
    sids = sids[np.random.default_rng(seed + 20).permutation(n)]
    trie = build_trie(sids, sizes, max_entries=0)
    assert isinstance(trie, SparseSIDTrie)
    model = RandomScorer(sizes, seed=seed + 1)
    hist = types.SimpleNamespace(tokens=torch.arange(5)[:, None] * 3 + 1)
    beam = max(trie.n_nodes[1:] + [trie.n_items])  # >= nodes at every level: exhaustive
    k = min(10, n)
    res = constrained_beam_search(model, hist, trie, beam=beam, k=k)
    ref_s, ref_i = model.exhaustive(hist.tokens[:, 0], sids, k)
    assert torch.equal(res.items, ref_i)
    assert torch.allclose(res.scores, ref_s, atol=1e-4)


def test_sparse_beam_with_real_model():
    sizes = [4, 3, 5]
    sids = random_sids(sizes, 25)
    model = tiny_model("tiger", sids, sizes)
    hists = [[1, 2, 3], [5], [7, 8, 9, 10, 11]]
    trie = SparseSIDTrie(sids, sizes)
    beam = max(trie.n_nodes[1:] + [trie.n_items])
    res = constrained_beam_search(model, model.encode_history(hists), trie, beam=beam, k=10)
    ref = exhaustive_topk(model, hists, 10)
    assert torch.equal(res.items, ref.indices)
    assert torch.allclose(res.scores, ref.values, atol=1e-4)


def test_factory_picks_layout():
    sids, sizes = HAND_SIDS, HAND_SIZES
    entries = 1 * 3 + 2 * 4 + 3 * 2  # sum_l n_l x sizes[l] = 17
    t = build_trie(sids, sizes)
    assert type(t) is SIDTrie and t.layout == "dense"
    assert type(build_trie(sids, sizes, max_entries=entries)) is SIDTrie  # exactly at the limit: dense
    s = build_trie(sids, sizes, max_entries=entries - 1)
    assert type(s) is SparseSIDTrie and s.layout == "sparse"
    assert type(build_trie(sids, sizes, layout="sparse")) is SparseSIDTrie
    with pytest.raises(ValueError, match="max_entries=16.*build_trie"):  # the dense class itself refuses
        SIDTrie(sids, sizes, max_entries=entries - 1)
    with pytest.raises(ValueError, match="max_entries"):
        build_trie(sids, sizes, max_entries=entries - 1, layout="dense")
    # a catalog where the dense layout is much larger than the CSR one: the sparse structure is O(edges)
    big = random_sids([8, 64, 64], 400, seed=5)
    d, sp = build_trie(big, [8, 64, 64], layout="dense"), build_trie(big, [8, 64, 64], max_entries=1000)
    assert type(sp) is SparseSIDTrie
    assert sp.nbytes < d.nbytes / 10
    edges = 1 + sp.n_nodes[1] + sp.n_nodes[2] + 400  # upper bound on what the sparse layout stores per level
    assert sp.nbytes <= 8 * (2 * edges + 3)
    assert sp.to("cpu") is sp and sp.device == torch.device("cpu")


@pytest.mark.parametrize("cls", [SIDTrie, SparseSIDTrie, build_trie])
def test_bad_input(cls):
    with pytest.raises(ValueError, match="not unique"):
        cls(np.array([[0, 1, 1], [1, 0, 0], [0, 1, 1]]), [2, 2, 2])
    with pytest.raises(ValueError, match="non-empty"):
        cls(np.zeros((0, 3), dtype=np.int64), [2, 2, 2])
    with pytest.raises(ValueError, match="non-empty"):
        cls(np.array([0, 1, 1]), [2, 2, 2])  # 1-D
    with pytest.raises(ValueError, match="non-empty"):
        cls(np.zeros((2, 3, 1), dtype=np.int64), [2, 2, 2])  # 3-D
    with pytest.raises(ValueError, match="2 levels but the SIDs have 3"):
        cls(np.array([[0, 1, 1], [1, 0, 0]]), [2, 2])
    with pytest.raises(ValueError, match="level 1: token 2 outside"):
        cls(np.array([[0, 1, 1], [1, 2, 0]]), [2, 2, 2])  # token >= size
    with pytest.raises(ValueError, match="level 2: token -1 outside"):
        cls(np.array([[0, 1, 1], [1, 0, -1]]), [2, 2, 2])
    with pytest.raises(ValueError, match="integer"):
        cls(np.array([[0, 1, 1.5], [1, 0, 0]]), [2, 2, 2])
    with pytest.raises(ValueError, match=">= 1"):
        cls(np.array([[0, 0, 0]]), [2, 0, 2])


def test_factory_rejects_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        build_trie(HAND_SIDS, HAND_SIZES, layout="csr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sparse_on_gpu_matches_cpu():
    sizes = [8, 8, 8]
    sids = random_sids(sizes, 300, seed=3)
    cpu, gpu = SparseSIDTrie(sids, sizes), SparseSIDTrie(sids, sizes).to("cuda")
    model = RandomScorer(sizes)
    hist = types.SimpleNamespace(tokens=torch.arange(4)[:, None])
    for lvl in range(3):
        nodes = torch.randint(0, cpu.n_nodes[lvl], (50,))
        toks = torch.randint(0, sizes[lvl], (50,))
        assert torch.equal(gpu.valid[lvl][nodes.cuda()].cpu(), cpu.valid[lvl][nodes])
        assert torch.equal(gpu.child[lvl][nodes.cuda(), toks.cuda()].cpu(), cpu.child[lvl][nodes, toks])
    res = constrained_beam_search(model, hist, cpu, beam=8, k=8)
    gmodel = RandomScorer(sizes)
    gmodel.table = gmodel.table.cuda()
    gres = constrained_beam_search(gmodel, types.SimpleNamespace(tokens=hist.tokens.cuda()), gpu, beam=8, k=8)
    assert torch.equal(gres.items.cpu(), res.items)
