"""CARE checked against references that do not use care.py's mask functions or the model's
segment builder: the decoder input sequence of Eq. 2 built by hand, decoders that physically
attend only to the history rows a step may read (cross-attention over gathered encoder states /
a KV cache holding only those prompt entries), the cascade that the progressive history mask
computes (standard-mask encoder runs with lower-level rows held), Fig. 4's separate re-encoding
(equal at step 0 only), and train mode == eval mode == incremental decoding.

What is (and is not) equivalent is stated in ``components/generator/heads/care.py``'s docstring."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from components.generator.backbones.base import run_with_cache
from components.generator.heads.care import HISTORY_MASK_KEY, CareConfigError, CareHead
from components.generator.vocab import BOS, PAD
from tests.generator_helpers import random_sids, tiny_model

torch.set_num_threads(2)
SIZES = [4, 3, 5]
HISTS = [[1, 2, 3], [5], [7, 8, 9, 10, 11], [0, 0]]  # max_items=3: rows 1 and 3 are left-padded
FULL = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # no padding (the decoder-LM references need none)


def build(kind, seed=0, queries="1-2-2", **kw):
    return tiny_model(kind, random_sids(SIZES, 25, seed=seed), SIZES, heads=[CareHead(32, queries=queries, **kw)],
                      seed=seed, max_items=3).eval()


def targets(m, n):
    return m.vocab.item_tokens[torch.arange(3, 3 + n)]


def eq2_segments(m, tg):
    """Eq. 2 by hand: step t feeds [emb(c_{t-1}) (BOS at t = 0), the n_t rows of `queries` that
    follow those of the earlier steps]; the logits of c_t are read at its last position."""
    h = m.heads[0]
    B = tg.shape[0]
    prev = torch.cat([torch.full((B, 1), BOS), tg[:, :-1]], 1)
    segs, row = [], 0
    for t, n in enumerate(h.counts):
        segs.append(torch.cat([m.backbone.embed(prev[:, t : t + 1]), h.queries[row : row + n][None].expand(B, -1, -1)], 1))
        row += n
    assert row == h.queries.shape[0]
    return segs


def lev(hist):
    return hist.levels.clamp(min=0)  # EOS (-1) counts as level 0


# ---- TIGER references ------------------------------------------------------------------------
def t5_std_encode(m, hist, keep):
    """The T5 encoder with its standard (bidirectional + padding) mask, positions not in `keep` padded."""
    emb = m.backbone.embed(torch.where(keep, hist.tokens, torch.full_like(hist.tokens, PAD)))
    return m.backbone.t5.get_encoder()(inputs_embeds=emb, attention_mask=keep.long()).last_hidden_state


def t5_cascade(m, hist):
    """What the progressive history mask should compute, without it: for l = 0..L-1 a standard encoder
    run on X~_l in which, after every block, the rows of levels < l are overwritten by their values of
    the level-(l-1) run. Returns the level-l rows of run l for every l."""
    enc = m.backbone.t5.get_encoder()
    lv, valid = lev(hist), hist.mask
    out = torch.zeros(*hist.tokens.shape, m.backbone.d_model)
    held = None
    for level in range(m.vocab.n_levels):
        lower = (valid & (lv < level))[..., None]
        outs: list[torch.Tensor] = []

        def hook(k, held=held, lower=lower, outs=outs):
            def f(mod, args, output):
                hs = output[0] if held is None else torch.where(lower, held[k], output[0])
                outs.append(hs)
                return (hs, *output[1:])

            return f

        handles = [blk.register_forward_hook(hook(k)) for k, blk in enumerate(enc.block)]
        try:
            states = t5_std_encode(m, hist, valid & (lv <= level))
        finally:
            for hd in handles:
                hd.remove()
        held = outs
        out = torch.where((valid & (lv == level))[..., None], states, out)
    return out


def t5_restricted_decode(m, segs, enc_rows):
    """Step by step (self-attention KV cache carried over): the decoder positions of step s
    cross-attend only to the encoder rows `enc_rows(s)` = (states [B, k, d], padding mask [B, k]),
    gathered beforehand (no head mask). Logits [B, L] at the last position of every step."""
    dec = m.backbone.t5.get_decoder()
    self_cache, out = DynamicCache(), []
    for s, seg in enumerate(segs):
        states, valid = enc_rows(s)
        cache = EncoderDecoderCache(self_cache, DynamicCache())  # fresh cross-attention keys per step
        h, _ = run_with_cache(dec, cache, True, inputs_embeds=seg, encoder_hidden_states=states,
                              encoder_attention_mask=valid.long())
        out.append(m.backbone.logits(h.last_hidden_state[:, -1]))
    return torch.stack(out, 1)


def pack(states, keep):
    """The rows `keep` [B, S] of `states` moved to the front of each row (order kept), padded to the
    longest row: (states [B, k, d], valid [B, k])."""
    order = torch.sort((~keep).long(), dim=1, stable=True).indices
    k = int(keep.sum(1).max())
    idx = order[:, :k]
    return states.gather(1, idx[..., None].expand(-1, -1, states.shape[-1])), keep.gather(1, idx)


def gathered(states, hist):
    lv, valid = lev(hist), hist.mask
    return lambda s: pack(states, valid & (lv <= s))


# ---- decoder-only references -------------------------------------------------------------------
def lm_prompt_kv(m, tokens, positions):
    """Per-layer (keys, values) of a prompt [B, n] encoded by the LM with its standard causal mask."""
    cache = DynamicCache()
    run_with_cache(m.backbone.lm.get_decoder(), cache, True, inputs_embeds=m.backbone.embed(tokens), position_ids=positions)
    return [(layer.keys, layer.values) for layer in cache.layers]


def lm_restricted_decode(m, segs, P, prompt_kv):
    """Step by step: the decoder positions of step s attend to the prompt entries `prompt_kv(s)`
    (per-layer (k, v), already RoPE-rotated at their own positions) and to the decoder positions
    before them, through a KV cache that holds nothing else; decoder RoPE positions P, P+1, ... as in
    the full layout. Logits [B, L] at the last position of every step."""
    body = m.backbone.lm.get_decoder()
    dec_kv, past, out = None, 0, []
    for s, seg in enumerate(segs):
        cache = DynamicCache()
        for i, (k, v) in enumerate(prompt_kv(s)):
            if dec_kv is not None:
                k, v = torch.cat([k, dec_kv[i][0]], 2), torch.cat([v, dec_kv[i][1]], 2)
            cache.update(k, v, i)
        q = seg.shape[1]
        pos = (P + past + torch.arange(q))[None].expand(seg.shape[0], -1)
        h = run_with_cache(body, cache, True, inputs_embeds=seg, position_ids=pos)[0].last_hidden_state
        past += q
        dec_kv = [(layer.keys[:, :, -past:], layer.values[:, :, -past:]) for layer in cache.layers]
        out.append(m.backbone.logits(h[:, -1]))
    return torch.stack(out, 1)


def full_layout_levels(hist):
    """The SID level of every prompt position (the same in every row: full histories, no padding)."""
    assert bool(hist.mask.all()) and bool((hist.levels == hist.levels[:1]).all())
    return lev(hist)[0]


# ---- 1. decoder side: physically restricted reads of one history encoding ---------------------
def test_tiger_default_is_cascade_encoding_read_by_restricted_cross_attention():
    """TIGER default (progressive_history auto = true): the encoder output equals the cascade built
    from standard-mask runs, and every step's logits equal a decoder whose step-s positions
    cross-attend only to the level <= s rows of it."""
    m = build("tiger", seed=1)
    assert m.heads[0].progressive_history is True
    hist = m.encode_history(HISTS)
    tg = targets(m, len(HISTS))
    with torch.no_grad():
        states = m.context(hist).states
        casc = t5_cascade(m, hist)
        torch.testing.assert_close(states[hist.mask], casc[hist.mask], atol=1e-5, rtol=1e-5)
        # the cascade is not the plain encoding (the history mask does something)
        assert not torch.allclose(casc[hist.mask], t5_std_encode(m, hist, hist.mask)[hist.mask], atol=1e-3)
        ref = t5_restricted_decode(m, eq2_segments(m, tg), gathered(casc, hist))
        torch.testing.assert_close(m(hist, tg).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_paper_history_encoding_is_standard_encoding_read_by_restricted_steps(kind):
    """progressive_history false (the paper; the decoder-LM default): the history is the backbone's
    standard encoding of the full history and step s reads only its level <= s rows."""
    if kind == "tiger":
        m = build("tiger", seed=2, progressive_history=False)
        hist = m.encode_history(HISTS)
        tg = targets(m, len(HISTS))
        with torch.no_grad():
            ref = t5_restricted_decode(m, eq2_segments(m, tg), gathered(t5_std_encode(m, hist, hist.mask), hist))
            got = m(hist, tg).logits
    else:
        m = build("decoder_lm", seed=2)  # default
        assert m.heads[0].progressive_history is False
        hist = m.encode_history(FULL)
        tg = targets(m, len(FULL))
        B, P = hist.tokens.shape
        lv = full_layout_levels(hist)
        with torch.no_grad():
            full = lm_prompt_kv(m, hist.tokens, torch.arange(P)[None].expand(B, -1))  # one standard causal encoding
            ref = lm_restricted_decode(m, eq2_segments(m, tg), P, lambda s: [(k[:, :, lv <= s], v[:, :, lv <= s]) for k, v in full])
            got = m(hist, tg).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ---- 2. Fig. 4 (each X~_t encoded separately, standard masks): step 0 only -----------------------
@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_fig4_separate_reencoding_matches_step0_only(kind):
    """Fig. 4's costly version: step s reads X~_s encoded on its own with the backbone's standard
    mask. With progressive_history true it equals the model at step 0 only; steps >= 1 differ (as
    care.py's docstring says; the model is the cascade, see the test above)."""
    m = build(kind, seed=1, progressive_history=True)
    hist = m.encode_history(HISTS if kind == "tiger" else FULL)
    tg = targets(m, hist.tokens.shape[0])
    segs = eq2_segments(m, tg)
    lv, valid = lev(hist), hist.mask
    with torch.no_grad():
        got = m(hist, tg).logits
        if kind == "tiger":  # X~_s: level > s positions padded, T5 relative positions unchanged
            ref = t5_restricted_decode(m, segs, lambda s: pack(t5_std_encode(m, hist, valid & (lv <= s)), valid & (lv <= s)))
        else:  # X~_s: a physically shorter prompt with the full layout's RoPE position ids
            B, P = hist.tokens.shape
            idx = [torch.nonzero(full_layout_levels(hist) <= s).flatten() for s in range(3)]
            ref = lm_restricted_decode(m, segs, P, lambda s: lm_prompt_kv(m, hist.tokens[:, idx[s]], idx[s][None].expand(B, -1)))
    torch.testing.assert_close(got[:, 0], ref[:, 0], atol=1e-5, rtol=1e-5)
    gap = (got[:, 1:] - ref[:, 1:]).abs().amax(dim=(0, 2))
    assert bool((gap > (1e-1 if kind == "tiger" else 1e-3)).all()), gap  # tiny random models: O(1) / O(1e-2)


# ---- 3. progressive history: level > t tokens cannot reach step t -----------------------------
def _perturb_above(m, hist, t, seed=0):
    """The same history with every token of level > t replaced by another token of its level."""
    g = torch.Generator().manual_seed(seed)
    tok = hist.tokens.clone()
    for b, j in torch.nonzero(hist.mask & (hist.levels > t)).tolist():
        lvl, n = int(hist.levels[b, j]), SIZES[int(hist.levels[b, j])]
        first = int(m.vocab.offsets[lvl])
        tok[b, j] = first + (int(tok[b, j]) - first + 1 + int(torch.randint(n - 1, (1,), generator=g))) % n
    return type(hist)(tok, hist.mask, hist.levels, hist.slots, hist.items)


@pytest.mark.parametrize("kind, hist_mask", [("tiger", "auto"), ("decoder_lm", True), ("decoder_lm", "auto")])
def test_level_above_t_tokens_reach_step_t_only_without_progressive_history(kind, hist_mask):
    m = build(kind, seed=3, progressive_history=hist_mask)
    hist = m.encode_history(HISTS if kind == "tiger" else FULL)
    tg = targets(m, hist.tokens.shape[0])
    with torch.no_grad():
        base = m(hist, tg).logits
        for t in range(2):
            other = _perturb_above(m, hist, t, seed=t)
            assert not torch.equal(other.tokens, hist.tokens)
            alt = m(other, tg).logits
            if m.heads[0].progressive_history:
                torch.testing.assert_close(alt[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
                assert not torch.allclose(alt[:, t + 1], base[:, t + 1], atol=1e-4)  # step t+1 reads level t+1
            else:  # the paper's encoding: earlier items' finer tokens reach step t through the prompt states
                assert not torch.allclose(alt[:, t], base[:, t], atol=1e-6)


# ---- item 1: the decoder-LM default keeps the standard history encoding -------------------------
def _capture_masks(m, hist, tg):
    got = {}
    if m.backbone.kind == "tiger":
        enc, dec = m.backbone.t5.get_encoder(), m.backbone.t5.get_decoder()
        f_enc, f_dec = enc.forward, dec.forward
        enc.forward = lambda **kw: (got.__setitem__("enc", kw["attention_mask"]), f_enc(**kw))[1]
        dec.forward = lambda **kw: (got.__setitem__("cross", kw["encoder_attention_mask"]), f_dec(**kw))[1]
        restore = lambda: (setattr(enc, "forward", f_enc), setattr(dec, "forward", f_dec))
    else:
        body = m.backbone.lm.get_decoder()
        f = body.forward
        body.forward = lambda **kw: (got.__setitem__("lm", kw["attention_mask"]), f(**kw))[1]
        restore = lambda: setattr(body, "forward", f)
    try:
        out = m(hist, tg)
    finally:
        restore()
    masks = {k: (v[:, 0] > torch.finfo(v.dtype).min / 2) if v.dim() == 4 else v.bool() for k, v in got.items()}
    return masks, out


def test_decoder_lm_default_leaves_history_self_attention_unrestricted():
    lm, tg5 = build("decoder_lm"), build("tiger")
    assert lm.heads[0].config()["progressive_history"] is False  # resolved "auto", stored in checkpoints
    assert tg5.heads[0].config()["progressive_history"] is True  # TIGER keeps its measured default
    assert CareHead(32).config()["progressive_history"] == "auto"  # not attached yet
    assert build("decoder_lm", progressive_history=True).heads[0].progressive_history is True
    assert build("tiger", progressive_history=False).heads[0].progressive_history is False
    with pytest.raises(CareConfigError, match=r"progressive_history 'sometimes': expected true, false or 'auto'"):
        CareHead(32, progressive_history="sometimes")
    hist = lm.encode_history(HISTS)  # left padding
    tg = targets(lm, len(HISTS))
    assert HISTORY_MASK_KEY not in lm.context(hist).extras
    with torch.no_grad():
        got = _capture_masks(lm, hist, tg)[0]["lm"]
    P = hist.tokens.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    torch.testing.assert_close(got[:, :P, :P], causal[None] & hist.mask[:, None, :])  # prompt block: causal + padding only
    # the decoder side is still progressive: BOS (step 0) sees the level-0 prompt tokens only
    torch.testing.assert_close(got[:, P, :P], hist.mask & (hist.levels <= 0))
    with torch.no_grad():
        restricted = _capture_masks(build("decoder_lm", progressive_history=True), hist, tg)[0]["lm"]
    assert not torch.equal(restricted[:, :P, :P], got[:, :P, :P])


# ---- item 3: Eq. 2 order, one query set per step, distinct queries ------------------------------
def _capture_decoder_inputs(m, run):
    calls = []
    if m.backbone.kind == "tiger":
        mod = m.backbone.t5.get_decoder()
    else:
        mod = m.backbone.lm.get_decoder()
    f = mod.forward
    mod.forward = lambda **kw: (calls.append(kw["inputs_embeds"].detach().clone()), f(**kw))[1]
    try:
        with torch.no_grad():
            res = run()
    finally:
        mod.forward = f
    return calls, res


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_decoder_inputs_follow_eq2_in_training_and_decoding(kind):
    """The decoder reads [BOS, Q_0, c_0, Q_1, c_1, Q_2] (Eq. 2: each step's queries right after the fed
    token), with step t's own n_t distinct query rows, and c_t is read at the last query of Q_t."""
    m = build(kind, seed=4, queries="1-2-2")
    h = m.heads[0]
    q = h.queries.detach()
    assert torch.cdist(q, q).add(torch.eye(len(q))).min() > 1e-3  # five distinct vectors
    hist = m.encode_history(HISTS)
    tg = targets(m, len(HISTS))
    segs = [s.detach() for s in eq2_segments(m, tg)]
    want = torch.cat(segs, 1)
    assert m.layout.readout.tolist() == [1, 4, 7]  # the last query of every step
    calls, out = _capture_decoder_inputs(m, lambda: m(hist, tg))
    torch.testing.assert_close(calls[-1][:, -want.shape[1] :], want)
    ends = torch.tensor([s.shape[1] for s in segs]).cumsum(0) - 1
    torch.testing.assert_close(m.backbone.logits(out.hidden[:, ends]), out.logits)
    # incremental decoding feeds the same segments, one per step
    state = m.begin(hist)
    prev = torch.cat([torch.full((len(HISTS), 1), BOS), tg[:, :-1]], 1)
    for t in range(3):
        calls, _ = _capture_decoder_inputs(m, lambda t=t: m.step(state, t, prev[:, t]))
        torch.testing.assert_close(calls[-1][:, -segs[t].shape[1] :], segs[t])


def test_every_query_row_is_used_and_trained():
    m = build("tiger", seed=5, queries="1-2-2", alpha=0.0).train()
    out = m(m.encode_history(HISTS), targets(m, len(HISTS)))
    out.losses["rec"].backward()
    g = m.heads[0].queries.grad
    assert g is not None and bool((g.abs().sum(1) > 0).all()), g.abs().sum(1)


# ---- item 3c: train mode builds the same masks and logits as eval / decoding ------------------
@pytest.mark.parametrize("kind, hist_mask", [("tiger", "auto"), ("decoder_lm", "auto"), ("decoder_lm", True)])
def test_train_mode_masks_and_logits_equal_eval_and_decoding(kind, hist_mask):
    """Dropout 0 (the tiny backbones): the masks the attention layers receive and the logits are the
    same in train and eval mode and equal the incremental decoding steps (so no mask is applied in
    one mode only)."""
    m = build(kind, seed=6, progressive_history=hist_mask)
    hist = m.encode_history(HISTS)
    tg = targets(m, len(HISTS))
    with torch.no_grad():
        m.eval()
        masks_eval, out_eval = _capture_masks(m, hist, tg)
        m.train()
        masks_train, out_train = _capture_masks(m, hist, tg)
        m.eval()
        state = m.begin(hist)
        prev = torch.cat([torch.full((len(HISTS), 1), BOS), tg[:, :-1]], 1)
        steps = torch.stack([m.step(state, t, prev[:, t]) for t in range(3)], 1)
    assert masks_train.keys() == masks_eval.keys()
    for k in masks_eval:
        assert torch.equal(masks_train[k], masks_eval[k]), k
    torch.testing.assert_close(out_train.logits, out_eval.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps, out_eval.logits, atol=1e-4, rtol=1e-4)
    # the masks are the progressive ones in both modes (a mode that drops them would equal this)
    plain = build(kind, seed=6, progressive=False)
    with torch.no_grad():
        assert not torch.allclose(plain(hist, tg).logits, out_train.logits, atol=1e-3)
