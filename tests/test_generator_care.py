"""CARE head: options and bad input, layout, the progressive masks token by token (as the
backbones' attention modules are called with them), the diversity loss by hand, constrained decoding
with the KV cache, training, checkpoint round trip and the CLI path. What the masks compute, checked
against references built without them (and what they do not compute: Fig. 4's separate
re-encoding beyond step 0), is in tests/test_care_faithful.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from components.generator.decoding import SIDTrie, constrained_beam_search
from components.generator.heads.base import ForwardOutput, Layout, build_head
from components.generator.heads.care import CareConfigError, CareHead
from tests.generator_helpers import exhaustive_topk, random_sids, synthetic_dataset, tiny_model

torch.set_num_threads(2)
SIZES = [4, 3, 5]
HISTS = [[1, 2, 3], [5], [7, 8, 9, 10, 11], [0, 0]]


def care(**kw) -> CareHead:
    return CareHead(32, **kw)


def model_with(kind, seed=0, n_items=25, **kw):
    return tiny_model(kind, random_sids(SIZES, n_items, seed=seed), SIZES, heads=[care(**kw)], seed=seed, max_items=3)


# ---- options / bad input ---------------------------------------------------------------------
def test_options_and_bad_input():
    m = model_with("tiger", queries="1-0-2")
    h = m.heads[0]
    assert h.counts == [1, 0, 2] and tuple(h.queries.shape) == (3, 32)
    assert m.layout.seg_lens == [2, 1, 3] and m.layout.readout.tolist() == [1, 2, 5]  # step 1 reads its token
    assert m.layout.pos_owner.tolist() == [-1, 0, -1, -1, 0, 0]
    assert h.config() == {"type": "care", "queries": "1-0-2", "alpha": 0.7, "progressive": True, "progressive_history": True,
                          "mask_scope": "segment", "init_std": None}
    assert model_with("tiger").heads[0].counts == [1, 1, 2]  # auto for L = 3
    assert model_with("decoder_lm").heads[0].config()["progressive_history"] is False  # auto: the paper's encoding on the LM
    assert model_with("tiger", queries=[2, 2.0, 1]).heads[0].counts == [2, 2, 1]
    assert isinstance(build_head({"type": "care", "queries": "1-1-1"}, 32), CareHead)
    with pytest.raises(CareConfigError, match=r"'1-1-2-2' gives 4 counts but the codebook's SIDs have 3 levels"):
        model_with("tiger", queries="1-1-2-2")
    with pytest.raises(CareConfigError, match="non-negative integers"):
        care(queries="1-1.5-2")
    with pytest.raises(CareConfigError, match="not an integer"):
        care(queries=[1, 1.5, 2])
    with pytest.raises(CareConfigError, match="negative"):
        care(queries=[1, -1, 2])
    with pytest.raises(CareConfigError, match="alpha"):
        care(alpha=-0.1)
    with pytest.raises(CareConfigError, match="mask_scope"):
        care(mask_scope="all")
    with pytest.raises(CareConfigError, match="n_queries: unknown option"):
        care(n_queries=3)


# ---- the masks, token by token -----------------------------------------------------------------
def _lev(levels: torch.Tensor, j: int) -> int:
    return max(int(levels[j]), 0)


def _captured(kind, model, hist):
    """Run one teacher-forced pass and capture the boolean masks the attention layers receive."""
    got = {}
    if kind == "tiger":
        enc, dec = model.backbone.t5.get_encoder(), model.backbone.t5.get_decoder()
        f_enc, f_dec = enc.forward, dec.forward
        enc.forward = lambda **kw: (got.__setitem__("enc", kw["attention_mask"]), f_enc(**kw))[1]
        dec.forward = lambda **kw: (got.__setitem__("cross", kw["encoder_attention_mask"]), f_dec(**kw))[1]
    else:
        body = model.backbone.lm.get_decoder()
        f = body.forward
        body.forward = lambda **kw: (got.__setitem__("lm", kw["attention_mask"]), f(**kw))[1]
    tg = model.vocab.item_tokens[torch.tensor([3, 4])]
    model(hist, tg)
    return {k: (v[:, 0] > torch.finfo(v.dtype).min / 2) if v.dim() == 4 else v.bool() for k, v in got.items()}


@pytest.mark.parametrize("scope", ["segment", "queries"])
def test_masks_match_definition_token_by_token(scope):
    # TIGER: encoder self-attention and decoder cross-attention
    m = model_with("tiger", queries="1-0-2", mask_scope=scope)
    hist = m.encode_history([[1, 2], [3, 4, 5]])
    got = _captured("tiger", m, hist)
    lv, msk, lay = hist.levels, hist.mask, m.layout
    B, S = hist.tokens.shape
    for b in range(B):
        for i in range(S):
            for j in range(S):
                assert bool(got["enc"][b, i, j]) == (bool(msk[b, j]) and _lev(lv[b], j) <= _lev(lv[b], i)), ("enc", b, i, j)
        for p in range(len(lay.pos_step)):
            restricted = scope == "segment" or int(lay.pos_owner[p]) >= 0
            for j in range(S):
                want = bool(msk[b, j]) and (not restricted or _lev(lv[b], j) <= int(lay.pos_step[p]))
                assert bool(got["cross"][b, p, j]) == want, ("cross", b, p, j)
    # decoder-only: the 4-D mask over [prompt | decoder positions]
    m = model_with("decoder_lm", queries="1-0-2", mask_scope=scope, progressive_history=True)  # not the LM default
    hist = m.encode_history([[1, 2], [3, 4, 5]])
    got = _captured("decoder_lm", m, hist)["lm"]
    lv, msk = hist.levels, hist.mask
    P, T = hist.tokens.shape[1], len(lay.pos_step)
    assert got.shape == (2, P + T, P + T)
    for b in range(2):
        for r in range(P + T):
            for c in range(P + T):
                want = c <= r and (c >= P or bool(msk[b, c]))
                if c < P and r < P:
                    want = want and _lev(lv[b], c) <= _lev(lv[b], r)
                if c < P and r >= P and (scope == "segment" or int(lay.pos_owner[r - P]) >= 0):
                    want = want and _lev(lv[b], c) <= int(lay.pos_step[r - P])
                assert bool(got[b, r, c]) == want, (b, r, c)


def test_head_mask_functions_hand_computed():
    from components.generator.heads.care import decoder_mask, history_mask

    levels = torch.tensor([[0, 1, 2, 0, 1, 2, -1]])  # two items of 3 levels + EOS (counts as level 0)
    assert history_mask(levels)[0].int().tolist() == [
        [1, 0, 0, 1, 0, 0, 1], [1, 1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 1], [1, 1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 0, 0, 1]]
    layout = Layout.build(3, [])  # one position per step
    assert decoder_mask(levels, layout.pos_step, torch.tensor([True, False, True]))[0].int().tolist() == [
        [1, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]


# ---- diversity loss --------------------------------------------------------------------------
def test_diversity_loss_hand_computed():
    m = model_with("tiger", queries="1-0-2", alpha=0.5)
    lay = m.layout  # queries at positions 1, 4, 5
    hidden = torch.zeros(2, 6, 32)
    hidden[0, 1, 0], hidden[0, 4, 0], hidden[0, 5, 1] = 1.0, 2.0, 3.0  # cos: (1,4)=1, (1,5)=0, (4,5)=0
    hidden[1, 1, 0], hidden[1, 4, 0], hidden[1, 5, 0] = 1.0, 2.0, 0.5  # cos: 1, 1, 1
    hidden[:, [0, 2, 3], 5] = 7.0  # token positions do not count
    out = ForwardOutput(torch.zeros(2, 3, 5), hidden, torch.zeros(2, 3, dtype=torch.long), None, lay)
    # Eq. 4 per sample: sum over i != j (each pair twice) / (N^2 - N) with N = 3; then the batch mean
    expected = ((2 * 1.0) / 6 + (2 * 3.0) / 6) / 2
    assert math.isclose(float(m.heads[0].diversity(out)), expected, abs_tol=1e-6)
    assert math.isclose(float(m.heads[0].losses(out)["div"]), 0.5 * expected, abs_tol=1e-6)
    assert model_with("tiger", queries="1-0-2", alpha=0.0).heads[0].losses(out) == {}  # w/o L_div
    one = model_with("tiger", queries="0-0-1")
    out1 = ForwardOutput(torch.zeros(2, 3, 5), hidden[:, :4], torch.zeros(2, 3, dtype=torch.long), None, one.layout)
    assert one.heads[0].losses(out1) == {}  # N < 2: nothing to diversify
    m.train()
    losses = m(m.encode_history([[1, 2]]), m.vocab.item_tokens[torch.tensor([3])]).losses
    assert set(losses) == {"rec", "care.div"}


# ---- decoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_constrained_beam_with_cache_equals_exhaustive(kind):
    m = model_with(kind, queries="1-0-2", seed=3)
    trie = SIDTrie(m.vocab.sids, SIZES)
    beam = max(trie.n_nodes[1:] + [trie.n_items])
    res = constrained_beam_search(m, m.encode_history(HISTS), trie, beam=beam, k=10)
    ref = exhaustive_topk(m, HISTS, 10)
    assert torch.equal(res.items, ref.indices)
    torch.testing.assert_close(res.scores, ref.values, atol=1e-4, rtol=1e-4)


# ---- training, checkpoint, CLI ---------------------------------------------------------------
def test_train_checkpoint_roundtrip(registry):
    from components.generator.checkpoint import load_checkpoint, save_checkpoint
    from components.tokenizer.codebook import Codebook

    ds = synthetic_dataset(n_items=12, n_users=16)
    sizes = [3, 2, 2]
    sids = random_sids(sizes, 12)
    model = tiny_model("tiger", sids, sizes, heads=[CareHead(32, queries="1-1-2", alpha=0.7)], max_items=ds.max_history)
    q0 = model.heads[0].queries.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tr = ds.splits["train"]
    model.train()
    for _ in range(3):
        out = model(model.encode_history(tr.history[:32]), model.vocab.item_tokens[tr.target[:32]])
        assert set(out.losses) == {"rec", "care.div"}
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
    assert not torch.allclose(q0, model.heads[0].queries)  # the queries are trained
    ds_art = ds.save(registry)
    cb_art = Codebook(sids=sids, sizes=sizes, item_ids=ds.item_ids, method="random", dataset_ref=ds_art.ref).save(
        registry, "synth-random", parents=[ds_art.ref], params={})
    art = save_checkpoint(registry, "synth-care", model, cb_art.ref, ds_art.ref, {})
    assert art.meta["heads"] == ["care"]
    loaded, _cb, _ = load_checkpoint(registry, art.ref)
    assert loaded.heads[0].config() == model.heads[0].config()
    torch.testing.assert_close(loaded.heads[0].queries, model.heads[0].queries)
    hist = model.encode_history([[1, 2], [3]])
    trie = SIDTrie(sids, sizes)
    a = constrained_beam_search(model.eval(), hist, trie, beam=6, k=5)
    b = constrained_beam_search(loaded, hist, trie, beam=6, k=5)
    assert torch.equal(a.items, b.items) and torch.allclose(a.scores, b.scores)


def test_cli_train_rank_with_care_head(tmp_path, registry, monkeypatch, capsys):
    """`genrec train` / `genrec rank` with generator.heads=[{type: care, ...}] on a synthetic dataset;
    a query string that does not fit the SID length fails at model build with a clear error."""
    from components import cli
    from components.tokenizer.codebook import Codebook

    ds = synthetic_dataset(n_items=12, n_users=16)
    ds_art = ds.save(registry)
    sids = random_sids([3, 2, 2], 12)
    cb_art = Codebook(sids=sids, sizes=[3, 2, 2], item_ids=ds.item_ids, method="random", dataset_ref=ds_art.ref).save(
        registry, "synth-random", parents=[ds_art.ref], params={})
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    monkeypatch.chdir(tmp_path)
    sets = [f"generator.codebook={cb_art.ref}", "generator.name=synth-care", "generator.train.batch_size=32", "generator.train.warmup_steps=1",
            "generator.tiger.d_model=16", "generator.tiger.d_kv=8", "generator.tiger.d_ff=32", "generator.train.epochs=1",
            "generator.train.max_steps_per_epoch=2", "generator.train.valid_samples=8", "generator.decode.max_samples=8",
            "generator.decode.beam=5", "generator.decode.k=5"]

    def run(heads: str, *cmd: str) -> int:
        argv = ["--params", str(params), "--registry", str(registry.root)]
        for kv in [*sets, f"generator.heads={heads}"]:
            argv += ["--set", kv]
        return cli.main(argv + list(cmd))

    good = '[{type: care, queries: 1-1-2, alpha: 0.7}]'
    assert run(good, "train", "--no-progress", "--dataset", ds_art.ref) == 0
    assert run(good, "rank", "--no-progress", "--splits", "test") == 0
    out = capsys.readouterr().out
    assert "wrote generator/synth-care@" in out and "test: n=8 hr@5=" in out
    art = registry.load("generator/synth-care@latest")
    assert art.load_json("config.json")["heads"][0]["queries"] == "1-1-2"
    assert run('[{type: care, queries: 1-1-2-2}]', "train", "--no-progress", "--dataset", ds_art.ref) == 2
    assert "'1-1-2-2' gives 4 counts but the codebook's SIDs have 3 levels" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_cuda_care_beam_equals_cpu_and_bf16_step(kind):
    m = model_with(kind, queries="1-0-2", seed=4)
    trie = SIDTrie(m.vocab.sids, SIZES)
    cpu = constrained_beam_search(m, m.encode_history(HISTS), trie, beam=8, k=8)
    m.cuda()
    gpu = constrained_beam_search(m, m.encode_history(HISTS), trie.to("cuda"), beam=8, k=8)
    assert torch.equal(cpu.items, gpu.items.cpu())
    assert torch.allclose(cpu.scores, gpu.scores.cpu(), atol=1e-3)
    m.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(m.encode_history(HISTS), m.vocab.item_tokens[torch.tensor([1, 2, 3, 4])].cuda())
    loss = sum(out.losses.values())
    loss.backward()
    assert torch.isfinite(loss) and m.heads[0].queries.grad is not None
