"""Constrained beam search: trie structure, validity, exactness against exhaustive scoring and a
naive per-beam reference, agreement with HF generate(prefix_allowed_tokens_fn), bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.generator.decoding import SIDTrie, constrained_beam_search
from components.generator.vocab import BOS
from tests.generator_helpers import ProbeHead, exhaustive_topk, naive_beam_search, random_sids, tiny_model

torch.set_num_threads(1)
SIZES = [4, 3, 5]
HISTORIES = [[1, 2, 3], [5], [7, 8, 9, 10, 11], [0, 0]]


def test_trie_hand_built():
    sids = np.array([[0, 1], [0, 2], [2, 0]])
    trie = SIDTrie(sids, [3, 3])
    assert trie.n_nodes == [1, 2]
    assert trie.valid[0].tolist() == [[True, False, True]]
    assert trie.child[0].tolist() == [[0, -1, 1]]  # prefix (0,) -> node 0, (2,) -> node 1
    assert trie.valid[1].tolist() == [[False, True, True], [True, False, False]]
    assert trie.child[1].tolist() == [[-1, 0, 1], [2, -1, -1]]  # leaves are item indices
    assert trie.items_of(torch.tensor([[0, 2], [2, 0], [1, 0], [2, 2]])).tolist() == [1, 2, -1, -1]
    assert trie.allowed_tokens_dict([10, 20]) == {(): [10, 12], (10,): [21, 22], (12,): [20]}


def test_trie_rejects_duplicate_sids():
    with pytest.raises(ValueError, match="not unique"):
        SIDTrie(np.array([[0, 1], [0, 1]]), [2, 2])


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
@pytest.mark.parametrize("with_head", [False, True])
def test_beam_equals_exhaustive(kind, with_head):
    sids = random_sids(SIZES, 25)
    heads = [ProbeHead(32 if kind else 0, n_query=2, extra_state=(kind == "tiger"))] if with_head else []
    model = tiny_model(kind, sids, SIZES, heads=heads)
    trie = SIDTrie(sids, SIZES)
    beam = max(trie.n_nodes[1:] + [trie.n_items])  # >= nodes at every level: exhaustive
    res = constrained_beam_search(model, model.encode_history(HISTORIES), trie, beam=beam, k=10)
    ref = exhaustive_topk(model, HISTORIES, 10)
    assert torch.equal(res.items, ref.indices)
    assert torch.allclose(res.scores, ref.values, atol=1e-4)


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_small_beam_equals_naive_reference(kind):
    sids = random_sids(SIZES, 40, seed=1)
    model = tiny_model(kind, sids, SIZES, heads=[ProbeHead(32, n_query=1)], seed=3)
    trie = SIDTrie(sids, SIZES)
    res = constrained_beam_search(model, model.encode_history(HISTORIES), trie, beam=3, k=3)
    for b, h in enumerate(HISTORIES):
        items, scores = naive_beam_search(model, h, trie, beam=3, k=3)
        assert res.items[b].tolist() == items
        assert np.allclose(res.scores[b].numpy(), scores, atol=1e-4)


def test_valid_and_unique_on_industrial_codebook(industrial):
    from components.tokenizer.reference import codebook_from_index_json

    from tests.conftest import SHARED_DATA

    cb = codebook_from_index_json(SHARED_DATA / "Industrial_and_Scientific/reference/minionerec.index.json", industrial)
    model = tiny_model("tiger", cb.sids, cb.sizes, max_items=10)
    trie = SIDTrie(cb.sids, cb.sizes)
    hist = industrial.splits["test"].history[:16]
    res = constrained_beam_search(model, model.encode_history(hist), trie, beam=20, k=20)
    items = res.items.numpy()
    assert (items >= 0).all() and (items < cb.n_items).all()
    assert all(len(set(r)) == 20 for r in items.tolist())
    # the tokens of each result are exactly that item's SID
    assert np.array_equal(res.tokens.numpy(), cb.sids[items])
    assert (np.diff(res.scores.numpy(), axis=1) <= 1e-6).all()


def test_matches_hf_generate_prefix_allowed_tokens():
    sids = random_sids(SIZES, 30, seed=2)
    model = tiny_model("tiger", sids, SIZES)
    trie = SIDTrie(sids, SIZES)
    allowed = trie.allowed_tokens_dict(model.vocab.offsets)
    hist = model.encode_history(HISTORIES)
    res = constrained_beam_search(model, hist, trie, beam=6, k=6)
    t5 = model.backbone.t5
    out = t5.generate(input_ids=hist.tokens, attention_mask=hist.mask.long(), num_beams=6, num_return_sequences=6,
                      max_new_tokens=3, min_new_tokens=3, do_sample=False, early_stopping=True, length_penalty=0.0,
                      prefix_allowed_tokens_fn=lambda b, ids: allowed.get(tuple(ids[1:].tolist()), [0]),
                      output_scores=True, return_dict_in_generate=True)
    seqs = out.sequences[:, 1:].view(len(HISTORIES), 6, 3)
    hf_items = model.vocab.decode(seqs.reshape(-1, 3)).reshape(len(HISTORIES), 6)
    assert np.array_equal(hf_items, res.items.numpy())
    assert np.allclose(out.sequences_scores.view(len(HISTORIES), 6).numpy(), res.scores.numpy(), atol=1e-4)


def test_bad_k_and_beam():
    sids = random_sids(SIZES, 10)
    model = tiny_model("tiger", sids, SIZES)
    trie = SIDTrie(sids, SIZES)
    hist = model.encode_history([[1]])
    with pytest.raises(ValueError, match="beam .* must be >= k"):
        constrained_beam_search(model, hist, trie, beam=2, k=5)
    with pytest.raises(ValueError, match="exceeds the catalog size"):
        constrained_beam_search(model, hist, trie, beam=20, k=11)


def test_beam_wider_than_catalog_returns_every_item_once():
    sids = random_sids(SIZES, 7)
    model = tiny_model("decoder_lm", sids, SIZES)
    trie = SIDTrie(sids, SIZES)
    res = constrained_beam_search(model, model.encode_history([[1, 2]]), trie, beam=50, k=7)
    assert sorted(res.items[0].tolist()) == list(range(7))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_cuda_beam_equals_cpu(kind):
    sids = random_sids(SIZES, 30, seed=4)
    model = tiny_model(kind, sids, SIZES, heads=[ProbeHead(32, n_query=1)])
    trie = SIDTrie(sids, SIZES)
    cpu = constrained_beam_search(model, model.encode_history(HISTORIES), trie, beam=8, k=8)
    model.cuda()
    gpu = constrained_beam_search(model, model.encode_history(HISTORIES), trie.to("cuda"), beam=8, k=8)
    assert torch.equal(cpu.items, gpu.items.cpu())
    assert torch.allclose(cpu.scores, gpu.scores.cpu(), atol=1e-3)


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_cached_decoding_uses_the_installed_transformers_cache_api(kind):
    """The KV cache goes through under the name the installed transformers uses (``cache`` since 5.2x;
    ``past_key_values`` warns there and is removed in 5.40), and the cache is really kept between steps."""
    import warnings

    sids = random_sids(SIZES, 25)
    model = tiny_model(kind, sids, SIZES)
    hist = model.encode_history(HISTORIES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        constrained_beam_search(model, hist, SIDTrie(sids, SIZES), beam=4, k=3)
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
    ctx = model.backbone.encode(model.backbone.make_context(hist))
    first = model.backbone.embed(torch.full((len(HISTORIES), 1), BOS, dtype=torch.long))
    _h, state = model.backbone.decode(ctx, first, None, {"use_cache": True})
    assert state["cache"] is not None and state["cache"].get_seq_length() >= 1


def test_run_with_cache_speaks_the_old_keyword_too():
    """Before transformers renamed it, the keyword and the output field were ``past_key_values``."""
    from dataclasses import dataclass

    from components.generator.backbones.base import run_with_cache

    @dataclass
    class OldOutput:
        last_hidden_state: torch.Tensor
        past_key_values: object = None

    class OldStack(torch.nn.Module):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None):
            return OldOutput(inputs_embeds * 2, ("kv", past_key_values) if use_cache else None)

    out, cache = run_with_cache(OldStack(), "c0", True, inputs_embeds=torch.ones(1))
    assert cache == ("kv", "c0") and float(out.last_hidden_state) == 2.0
    assert run_with_cache(OldStack(), "c0", False, inputs_embeds=torch.ones(1))[1] is None
