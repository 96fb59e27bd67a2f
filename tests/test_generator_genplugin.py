"""GenPlugin head: substitution, contrastive / KL losses, retrieval augmentation, fallback, checkpoints, CLI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.generator.heads.genplugin import (EXTRA_NBR_MASK, EXTRA_NBR_STATES, GenPluginError, GenPluginHead,
                                                  _info_nce, symmetric_kl)
from components.generator.model import GenerativeRecommender
from components.generator.vocab import SIDVocab
from tests.generator_helpers import random_sids, synthetic_dataset, tiny_backbone

SIZES = [3, 2, 2]
D = 32


def _model(n_items=12, max_items=4, seed=0, **cfg):
    torch.manual_seed(seed)
    vocab = SIDVocab(random_sids(SIZES, n_items, seed=seed), SIZES)
    head = GenPluginHead(D, n_items=n_items, text_dim=8, lan_heads=2, lan_ff=32, proj_hidden=16, dropout=0.0, **cfg)
    head.item_text.copy_(torch.randn(n_items, 8, generator=torch.Generator().manual_seed(seed)))
    return GenerativeRecommender(tiny_backbone("tiger", vocab), [head], max_items=max_items), head


def _batch(model, rows, targets):
    return model.encode_history(rows), model.vocab.encode_targets(np.asarray(targets))


# ---- pure functions: hand-computed ---------------------------------------------------------------
def test_info_nce_and_symmetric_kl_hand_computed():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: row0 = [1, 1/sqrt2], row1 = [0, 1/sqrt2]; τ = 0.5
    c = 1 / math.sqrt(2)
    want = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c))) - math.log(math.exp(2 * c) / (1 + math.exp(2 * c)))) / 2
    assert _info_nce(u, v, 0.5).item() == pytest.approx(want, rel=1e-5)
    # same-item mask removes the off-diagonal negative: loss 0
    assert _info_nce(u, v, 0.5, torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)
    za = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax (φ=1): [1/4, 3/4]
    zb = torch.tensor([[[0.0, 0.0]]])  # [1/2, 1/2]
    p, q = np.array([0.25, 0.75]), np.array([0.5, 0.5])
    want = float((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum())
    assert symmetric_kl(za, zb, 1.0).item() == pytest.approx(want, rel=1e-5)
    assert symmetric_kl(za, za, 0.7).item() == pytest.approx(0.0, abs=1e-7)
    # φ sharpens: φ = 0.5 squares the odds → [1/10, 9/10]
    p2 = np.array([0.1, 0.9])
    want2 = float((p2 * np.log(p2 / q)).sum() + (q * np.log(q / p2)).sum())
    assert symmetric_kl(za, zb, 0.5).item() == pytest.approx(want2, rel=1e-5)


# ---- SSG -----------------------------------------------------------------------------------------
def test_substitution_changes_teacher_inputs_only_in_training():
    model, head = _model(p1=0.0, p2=0.0, q=2)  # every sample guided, every token (t >= 1) replaced
    hist, tg = _batch(model, [[0, 1], [2, 3, 4], [5]], [6, 7, 8])
    ctx = model.context(hist, {"targets": tg})
    from components.generator.vocab import BOS

    prev = torch.cat([torch.full((3, 1), BOS), tg[:, :-1]], 1)
    emb = model.backbone.embed(prev)
    model.eval()
    assert torch.equal(head.teacher_inputs(emb, tg, ctx), emb)
    model.train()
    out = head.teacher_inputs(emb, tg, ctx)
    assert torch.equal(out[:, 0], emb[:, 0])  # BOS kept
    assert not torch.allclose(out[:, 1:], emb[:, 1:])
    # hand check of one substitute: softmax over the top-2 level-0 language logits weighting their embeddings
    z = ctx.extras["genplugin.lan"]["logits"][0, 0].detach()
    lo, hi = model.vocab.level_range(0)
    val, idx = z[lo:hi].topk(2)
    w = torch.softmax(val, 0)
    want = (w[:, None] * model.backbone.embed(idx + lo)).sum(0)
    assert torch.allclose(out[0, 1], want, atol=1e-6)
    # p1 = 1: always plain teacher forcing; ssg off: never substituted
    for kw in ({"p1": 1.0, "p2": 0.0}, {"ssg": False, "p1": 0.0, "p2": 0.0}):
        m2, h2 = _model(**kw)
        m2.train()
        ctx2 = m2.context(hist, {"targets": tg})
        e2 = m2.backbone.embed(prev)
        assert torch.equal(h2.teacher_inputs(e2, tg, ctx2), e2)


def test_forward_losses_and_ablation_switches():
    rows, tg = [[0, 1], [2, 3, 4], [5], [6, 7]], [8, 9, 10, 11]
    model, _ = _model()
    hist, t = _batch(model, rows, tg)
    model.train()
    keys = set(model(hist, t).losses)
    assert keys == {"rec", "genplugin.lan", "genplugin.kl", "genplugin.item", "genplugin.user"}
    model.eval()
    assert set(model(hist, t).losses) == {"rec"}
    m2, _ = _model(dsa=False, ssg=False)
    m2.train()
    assert set(m2(hist, t).losses) == {"rec", "genplugin.lan"}


def test_contrastive_loss_decreases_on_a_tiny_batch():
    model, head = _model(n_items=12)
    hist, _ = _batch(model, [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10], [11, 0]], [1, 2, 3, 4, 5])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    vals = []
    for _ in range(12):
        ctx = model.context(hist)
        h, valid = head.language_states(ctx.extras["items"])
        li, lu = head.alignment_losses(ctx, h, valid)
        loss = li + lu
        opt.zero_grad()
        loss.backward()
        opt.step()
        vals.append(float(loss.detach()))
    assert vals[-1] < 0.7 * vals[0], vals


def test_empty_history_rows_are_safe():
    model, head = _model()
    model.train()
    hist, t = _batch(model, [[], [1, 2]], [3, 4])
    out = model(hist, t)
    assert all(torch.isfinite(v) for v in out.losses.values())


# ---- RAR -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth():
    ds = synthetic_dataset(n_items=24, n_users=40)
    from components.retrieval.retriever import UserRetriever

    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    return ds, emb, UserRetriever.build(ds, emb, fields=("title",), dataset_ref="dataset/synth@x")


def _synth_model(ds, emb, **cfg):
    torch.manual_seed(0)
    sizes = [3, 4, 2]
    vocab = SIDVocab(random_sids(sizes, ds.n_items), sizes)
    head = GenPluginHead(D, n_items=ds.n_items, text_dim=emb.shape[1], lan_heads=2, lan_ff=32, proj_hidden=16,
                         dataset="dataset/synth@x", **cfg)
    head.item_text.copy_(torch.from_numpy(emb))
    return GenerativeRecommender(tiny_backbone("tiger", vocab), [head], max_items=ds.max_history), head


def test_rar_appends_neighbours_and_excludes_target_holders(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=3, z=6, rar_active=True)
    head.set_retriever(r)
    rows = [[0, 1, 2], [5, 6]]
    hist = model.encode_history(rows)
    model.eval()
    ctx = model.context(hist)
    S = hist.tokens.shape[1]
    assert ctx.states.shape[1] == S + 3 and ctx.mask[:, S:].all() and (ctx.levels[:, S:] == -1).all()
    # the appended states are the neighbours' cached representations + the neighbour-type vector
    nb = r.similar_users(history=rows[0], z=6, v=3)
    want = head.neighbor_representations([r.train_histories[n.user][-ds.max_history:] for n in nb], keys=[("u", n.user) for n in nb])
    assert torch.allclose(ctx.states[0, S:], want + head.nbr_type, atol=1e-5)
    assert len(head.rep_cache) >= 3 and head.rep_cache.hits > 0
    # training: users holding the target are excluded
    model.train()
    tg = model.vocab.encode_targets(np.array([3, 7]))
    head._nbr_cache.clear()
    model(hist, tg)
    for (h, ex), users in head._nbr_cache.items():
        assert ex in (3, 7)
        assert all(ex not in r.train_histories[u] for u in users)
    # decoding works with the augmentation
    from components.generator.decoding import SIDTrie, constrained_beam_search

    trie = SIDTrie(model.vocab.sids, [3, 4, 2])
    res = constrained_beam_search(model.eval(), hist, trie, beam=5, k=5)
    assert (res.items >= 0).all()


def test_rar_neighbour_extras_hook(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, rar_active=True)
    ex = head.neighbor_extras([[[1, 2, 3], [4, 5]], [[7]]], model_ref="generator/x@1")
    assert ex[EXTRA_NBR_STATES].shape == (2, 2, D) and ex[EXTRA_NBR_MASK].tolist() == [[True, True], [True, False]]
    assert head.rep_cache.model_ref == "generator/x@1"
    model.eval()
    hist = model.encode_history([[0, 1], [2]])
    ctx = model.context(hist, ex)  # no retriever needed: the caller gave the neighbours
    assert ctx.states.shape[1] == hist.tokens.shape[1] + 2 and not head.rar_fallback
    with pytest.raises(GenPluginError, match="empty history"):
        head.neighbor_representations([[]])


def test_rar_missing_index_falls_back_with_flag(registry, synth):
    ds, emb, _ = synth
    model, head = _synth_model(ds, emb, rar_active=True, retrieval_index="retrieval-index/nope@latest",
                               registry_root=str(registry.root))
    hist = model.encode_history([[0, 1]])
    model.eval()
    with pytest.warns(RuntimeWarning, match="WITHOUT retrieval augmentation"):
        ctx = model.context(hist)
    assert head.rar_fallback and ctx.states.shape[1] == hist.tokens.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        model.context(hist)


def test_rar_bad_input(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=40, rar_active=True)
    with pytest.raises(GenPluginError, match="smaller than the 40 indexed users"):
        head.set_retriever(r)
    model2, head2 = _synth_model(ds, emb, rar_active=True)
    head2.p.dataset = "dataset/other@y"
    with pytest.raises(GenPluginError, match="built from dataset/synth@x"):
        head2.set_retriever(r)
    with pytest.raises(GenPluginError, match="another dataset"):
        GenerativeRecommender(tiny_backbone("tiger", model.vocab), [GenPluginHead(D, n_items=5, text_dim=8, lan_heads=2)])
    with pytest.raises(GenPluginError, match="needs item embeddings"):
        GenPluginHead(D)
    # an empty-history row gets no neighbours (and no error)
    head3 = _synth_model(ds, emb, rar_active=True)[1]
    head3.set_retriever(r)
    st, mk = head3.retrieve(torch.tensor([[-1, -1, -1, -1], [-1, -1, 0, 1]]))
    assert not mk[0].any() and mk[1].all()


# ---- checkpoint + CLI ----------------------------------------------------------------------------
def test_cli_train_rank_two_stages_and_checkpoint_roundtrip(registry, synth, tmp_path, monkeypatch):
    from components.cli import main
    from components.generator.checkpoint import load_checkpoint
    from components.retrieval.retriever import UserRetriever
    from components.tokenizer.codebook import Codebook
    from components.tokenizer.encoders import save_embeddings

    ds, emb, _ = synth
    ds_art = ds.save(registry)
    e_art = save_embeddings(registry, emb, ds_art.ref, "synth", "random", {})
    sizes = [3, 4, 2]
    Codebook(sids=random_sids(sizes, ds.n_items), sizes=sizes, item_ids=ds.item_ids, method="random",
             dataset_ref=ds_art.ref).save(registry, "synth-random", parents=[ds_art.ref, e_art.ref], params={})
    UserRetriever.build(ds, emb, fields=("title",), dataset_ref=ds_art.ref).save(registry, "synth", [ds_art.ref], {})
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "data.dataset=synth", "--set", "generator.preset=smoke", "--set", "generator.train.max_steps_per_epoch=3", "--set", "generator.train.valid_samples=8",
            "--set", "generator.decode.max_samples=8", "--set", "generator.decode.beam=10", "--set", "generator.decode.k=10",
            "--set", 'generator.heads=[{"type": "genplugin", "z": 5, "v": 3, "finetune_epochs": 1, "lan_heads": 2}]']
    base = ["--registry", str(registry.root)] + sets
    assert main(base + ["train", "--name", "synth-gp", "--no-progress", "--metrics-out", "m.json"]) == 0
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    stages = [h["stage"] for h in m["history"]]
    assert stages == ["pretrain"] * (len(stages) - 1) + ["rar"] and m["genplugin.rar_fallback"] is False
    model, cb, art = load_checkpoint(registry, "generator/synth-gp@latest")
    head = model.heads[0]
    cfg = art.load_json("config.json")["heads"][0]
    assert cfg["rar_active"] and cfg["embeddings"] == e_art.ref and cfg["retrieval_index"].startswith("retrieval-index/synth@")
    assert torch.allclose(head.item_text, torch.from_numpy(emb))  # frozen text table restored
    state = art.load_safetensors("model.safetensors")
    assert torch.equal(head.proj[0].weight, state["heads.0.proj.0.weight"])
    assert torch.equal(head.nbr_type, state["heads.0.nbr_type"])
    ctx = model.context(model.encode_history([[0, 1, 2]]))
    assert ctx.states.shape[1] > 3 * 3 + 1 and not head.rar_fallback  # augmentation active after loading
    assert main(base + ["rank", "--checkpoint", "generator/synth-gp@latest", "--no-progress"]) == 0
    # embeddings of another dataset version are refused at train time
    other = save_embeddings(registry, emb, "dataset/synth@other", "synth-x", "random", {})
    bad = sets[:-1] + [f'generator.heads=[{{"type": "genplugin", "embeddings": "{other.ref}", "lan_heads": 2}}]']
    assert main(["--registry", str(registry.root)] + bad + ["train", "--name", "bad", "--no-progress"]) != 0


def test_unknown_option_is_a_clear_error():
    with pytest.raises(Exception, match="lamda_kl"):
        GenPluginHead(D, n_items=3, text_dim=2, lan_heads=2, lamda_kl=1.0)
    _ = F


def test_second_stage_without_index_is_flagged_not_fatal():
    from components.generator.params import TrainParams
    from components.generator.train import TrainResult

    model, head = _model(rar=True)  # no retrieval_index configured
    res = TrainResult(best_state={}, history=[], best_epoch=1, best_valid={}, epochs_run=1, stopped_early=False,
                      samples_per_s=1.0, train_seconds=1.0)
    with pytest.warns(RuntimeWarning, match="rar_fallback=True"):
        out = head.second_stage(res, lambda tp, tag: pytest.fail("must not fine-tune"), TrainParams())
    assert out is res and out.extra["genplugin.rar_fallback"] is True and head.rar_fallback and not head.p.rar_active
    # rar: false (ablation) never fine-tunes and never warns
    _, h2 = _model(rar=False)
    assert h2.second_stage(res, lambda tp, tag: pytest.fail("must not fine-tune"), TrainParams()) is res
