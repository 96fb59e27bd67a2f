"""CRAB §4.3 as the product runs it (issue 14): the fine-tune's parameter set (LoRA on attention +
token embeddings + heads, merged after training), warm start lineage and re-layout (also for a
pretrained decoder LM with LoRA), the alignment loss over every semantic level with its one weight
key, and the whole recipe end to end: train -> rebalance -> fine-tune -> rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from components.cli import main
from components.generator.checkpoint import save_checkpoint, warm_start
from components.generator.finetune import crab_alignment_loss, is_rebalanced, prepare_finetune
from components.generator.params import FinetuneParams
from components.generator.vocab import SIDVocab
from components.registry import Registry
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import ProbeHead, random_sids, synthetic_dataset, tiny_model


def _batch(model, n=6):
    hist = model.encode_history([[i % model.vocab.n_items, (i + 1) % model.vocab.n_items] for i in range(n)])
    return hist, model.vocab.item_tokens[torch.arange(n) % model.vocab.n_items].to(model.device)


# ---- what trains in the fine-tune -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiger", "decoder_lm"])
def test_lora_finetune_trains_attention_adapters_embeddings_and_heads_only(kind):
    sizes = [3, 2, 2]
    sids = random_sids(sizes, 10)
    model = tiny_model(kind, sids, sizes, heads=[ProbeHead])
    plain_keys = set(model.state_dict())
    handle = prepare_finetune(model, FinetuneParams(lora_r=2, lora_alpha=4, lora_dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    emb = "shared" if kind == "tiger" else "embed_tokens"
    assert all("lora_" in n or emb in n or n.startswith("heads.") for n in trainable), trainable
    assert any(n.startswith("heads.") for n in trainable) and any(emb in n for n in trainable)
    leaves = {"q", "k", "v", "o"} if kind == "tiger" else {"q_proj", "k_proj", "v_proj", "o_proj"}
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert adapted == leaves
    if kind == "tiger":  # cross-attention too
        assert any("EncDecAttention" in n for n in trainable if "lora_A" in n)
    assert not any(("DenseReluDense" in n or "mlp" in n or "layer_norm" in n or "norm" in n.split(".")[-2]) for n in trainable if "lora" not in n)
    assert handle.trainable_params < handle.total_params
    # a few optimizer steps move the adapters; merging keeps the function and restores the plain layout
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(*_batch(model)).losses["rec"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        before = model(*_batch(model)).logits
    handle.finish()
    assert set(model.state_dict()) == plain_keys  # the checkpoint a server loads has no adapters
    with torch.no_grad():
        after = model(*_batch(model)).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_full_finetune_trains_every_weight():
    sizes = [3, 2, 2]
    model = tiny_model("tiger", random_sids(sizes, 10), sizes)
    handle = prepare_finetune(model, FinetuneParams(trainable="full"))
    assert handle.trainable_params == handle.total_params and handle.wrapped is None


# ---- the alignment loss: every semantic level, one weight key ------------------------------------------


def test_alignment_covers_every_semantic_level_hand_computed():
    """Items A=[0,0,0], B=[0,0,1], C=[0,1,1], D=[1,0,1], all three levels semantic. Eq. 9 terms:
    level-1 children of level-0 token 0: {0, 1}; token 1 has one child (term 0, dropped).
    Level-2 children of level-1 token 0: {0, 1} (A, B, D); token 1: {1} only (dropped).
    1-D embeddings: level-1 tokens 1.0 and 3.0 (mean 2: (1-2)^2 + (3-2)^2 = 2); level-2 tokens 0.0
    and 4.0 (mean 2: 4 + 4 = 8). Sum 10 over 4 terms: mean 2.5 (level-1 edges only would give 1.0)."""
    from components.rebalancer.alignment import HierarchicalAlignmentLoss

    sids = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1]])
    cb = Codebook(sids=sids, sizes=[2, 2, 2], item_ids=list("ABCD"), method="t", stats={"semantic_levels": 3},
                  token_origin=[[0, 1], [0, 0], [0, 1]])
    offsets = [4, 6, 8]
    w = torch.zeros(10, 1)
    w[6, 0], w[7, 0], w[8, 0], w[9, 0] = 1.0, 3.0, 0.0, 4.0
    loss = HierarchicalAlignmentLoss.from_codebook(cb, offsets)
    assert loss.n_terms == 4
    assert float(loss(w)) == pytest.approx(2.5)
    assert float(HierarchicalAlignmentLoss.from_codebook(cb, offsets, reduction="sum")(w)) == pytest.approx(10.0)
    # the fine-tune adds it with generator.finetune.beta, only on a rebalanced codebook
    model = tiny_model("tiger", sids, [2, 2, 2])
    assert is_rebalanced(cb)
    assert crab_alignment_loss(model, cb, 0.3)["crab_align"][1] == 0.3
    assert crab_alignment_loss(model, cb, 0.0) == {}
    plain = Codebook(sids=sids, sizes=[2, 2, 2], item_ids=list("ABCD"), method="t")
    assert not is_rebalanced(plain) and crab_alignment_loss(model, plain, 0.3) == {}


def test_rebalance_beta_moved_to_generator_finetune(tmp_path):
    """Defect 5: one key for the alignment weight, read where the fine-tune builds the loss; the old
    key is refused with a message naming the new one."""
    from components.params import ParamsError, load_params

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"rebalance": {"beta": 0.2}}))
    with pytest.raises(ParamsError, match="generator.finetune.beta"):
        load_params(p)
    p.write_text(yaml.safe_dump({"generator": {"finetune": {"beta": 0.2}}}))
    assert load_params(p).generator.finetune.beta == 0.2


# ---- warm start: lineage and re-layout --------------------------------------------------------------------


def _rebalanced_pair(reg, ids, sizes, sids):
    cb = Codebook(sids=sids, sizes=sizes, item_ids=ids, method="random")
    cart = cb.save(reg, "orig", parents=[], params={})
    new_sids = sids.copy()
    moved = (sids[:, 0] == 0) & (sids[:, 1] >= 2)
    new_sids[moved, 0] = sizes[0]
    origin = [list(range(sizes[0])) + [0], list(range(sizes[1])), list(range(sizes[2]))]
    new_sizes = [sizes[0] + 1, *sizes[1:]]
    rb = Codebook(sids=new_sids, sizes=new_sizes, item_ids=ids, method="crab", token_origin=origin)
    return cb, cart, rb, rb.save(reg, "orig-crab", parents=[cart.ref], params={})


def test_warm_start_on_the_same_rebalanced_codebook_keeps_learned_split_rows(tmp_path, capsys):
    """Defect 2: a checkpoint already trained on the rebalanced codebook is continued as it is; the
    rows it learned for split tokens are not reset to their origin's."""
    reg = Registry(tmp_path / "artifacts")
    sizes, ids = [3, 4, 2], [f"i{k}" for k in range(20)]
    _, _, rb, rart = _rebalanced_pair(reg, ids, sizes, random_sids(sizes, 20, seed=3))
    src = tiny_model("tiger", rb.sids, rb.sizes, seed=1)
    v = src.vocab
    with torch.no_grad():
        src.backbone.t5.shared.weight[v.offsets[0] + 3] = 7.0  # the split token's learned row
    gart = save_checkpoint(reg, "crab-tiger", src, rart.ref, "dataset/x@0", {})
    model = tiny_model("tiger", rb.sids, rb.sizes, seed=2)
    warm_start(model, reg, gart.ref, rb, rart)
    assert "continuing it, no token re-layout" in capsys.readouterr().out
    row = model.backbone.t5.shared.weight[v.offsets[0] + 3].detach()
    assert torch.all(row == 7.0)
    from components.generator.losses import crab_alignment

    crab_alignment(model, rb)  # building the loss leaves it alone too
    assert torch.all(model.backbone.t5.shared.weight[v.offsets[0] + 3] == 7.0)


def test_warm_start_accepts_a_pass_through_copy_of_the_parent_codebook(tmp_path):
    """Defect 2: `rebalance.enabled=false` re-saves the input as <ds>-crab; a model trained on that
    copy must warm-start a later real rebalance of the same input (same SIDs = same lineage)."""
    reg = Registry(tmp_path / "artifacts")
    sizes, ids = [3, 4, 2], [f"i{k}" for k in range(20)]
    sids = random_sids(sizes, 20, seed=3)
    cb, cart, rb, rart = _rebalanced_pair(reg, ids, sizes, sids)
    copy = Codebook(sids=sids, sizes=sizes, item_ids=ids, method="random", stats={"rebalanced": False})
    copy_art = copy.save(reg, "orig-crab-passthrough", parents=[cart.ref], params={"rebalance": {"enabled": False}})
    src = tiny_model("tiger", sids, sizes, seed=1)
    gart = save_checkpoint(reg, "pt-tiger", src, copy_art.ref, "dataset/x@0", {})
    model = tiny_model("tiger", rb.sids, rb.sizes, seed=2)
    warm_start(model, reg, gart.ref, rb, rart)  # the old code raised "was not rebalanced from it"
    ov, nv = src.vocab, model.vocab
    assert torch.equal(model.backbone.t5.shared.weight[nv.offsets[0] + 3], src.backbone.t5.shared.weight[ov.offsets[0] + 0])


def test_init_from_a_pretrained_decoder_lm_with_lora(tmp_path):
    """Defect 3: a pretrained LM's rows = its own vocabulary + the SID vocabulary (and peft's
    trainable-token deltas = the SID rows); the re-layout must shift by the base vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from components.generator.backbones.decoder_lm import DecoderLMBackbone
    from components.generator.model import GenerativeRecommender

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "lm")
    reg = Registry(tmp_path / "artifacts")
    sizes, ids = [3, 4, 2], [f"i{k}" for k in range(20)]
    _, cart, rb, rart = _rebalanced_pair(reg, ids, sizes, random_sids(sizes, 20, seed=3))
    old_cb = Codebook.from_artifact(reg.load(cart.ref))

    def lm_model(cb, seed):
        torch.manual_seed(seed)
        return GenerativeRecommender(DecoderLMBackbone(SIDVocab.from_codebook(cb), pretrained=str(tmp_path / "lm")), [], max_items=3)

    src = lm_model(old_cb, 1)
    with torch.no_grad():  # make the SID rows distinguishable
        for name, p in src.named_parameters():
            if "trainable_tokens_delta" in name:
                p.copy_(torch.randn_like(p))
    gart = save_checkpoint(reg, "lm", src, cart.ref, "dataset/x@0", {})
    model = lm_model(rb, 2)
    warm_start(model, reg, gart.ref, rb, rart)  # the old code: "checkpoint shape (..) does not fit (..)"
    ov, nv, base = src.vocab, model.vocab, model.backbone.base_vocab
    e_old, e_new = src.backbone.sid_embeddings().detach(), model.backbone.sid_embeddings().detach()
    assert torch.allclose(e_new[nv.offsets[0] + 3], e_old[ov.offsets[0] + 0])  # split token = its origin
    for lvl in range(3):
        for t in range(sizes[lvl]):
            assert torch.allclose(e_new[nv.offsets[lvl] + t], e_old[ov.offsets[lvl] + t])
    w_old = src.backbone.lm.get_input_embeddings()
    w_new = model.backbone.lm.get_input_embeddings()
    tok = torch.arange(base)
    assert torch.allclose(w_new(tok), w_old(tok))  # the LM's own vocabulary is untouched


# ---- the recipe end to end ----------------------------------------------------------------------------------


def test_crab_recipe_end_to_end(tmp_path, monkeypatch):
    """train -> rebalance -> fine-tune (--init-from) -> rank, as the README runs it. The fine-tune
    trains LoRA + embeddings (frozen feed-forward weights are bit-identical to the source's), adds
    the alignment loss with generator.finetune.beta, and writes a plain checkpoint that ranks."""
    monkeypatch.chdir(tmp_path)
    reg = Registry(tmp_path / "artifacts")
    ds = synthetic_dataset(n_items=16, n_users=40, seed=1)
    ds_art = ds.save(reg)
    sizes = [3, 3, 2]
    cb = Codebook(sids=random_sids(sizes, ds.n_items, seed=4), sizes=sizes, item_ids=ds.item_ids, method="balanced",
                  dataset_ref=ds_art.ref)
    cb.save(reg, "synth-balanced", parents=[ds_art.ref], params={})
    args = ["--registry", str(reg.root)]
    for s in ["data.dataset=synth", "generator.preset=smoke", "generator.train.device=cpu", "generator.train.num_threads=1",
              "generator.decode.k=5", "generator.decode.beam=6", "generator.decode.max_samples=0", "rebalance.split_ratio=0.5", "rebalance.embeddings=null",
              "generator.finetune.epochs=2", "generator.finetune.lr=0.01"]:
        args += ["--set", s]
    assert main([*args, "train", "--codebook", "codebook/synth-balanced@latest", "--name", "synth-tiger", "--no-progress"]) == 0
    assert main([*args, "rebalance", "--codebook", "synth-balanced"]) == 0
    crab = Codebook.from_artifact(reg.load("codebook/synth-crab@latest"))
    assert sum(crab.sizes) > sum(sizes) and is_rebalanced(crab)
    assert main([*args, "train", "--codebook", "codebook/synth-crab@latest", "--init-from", "generator/synth-tiger@latest",
                 "--name", "synth-tiger-crab", "--no-progress"]) == 0
    ft = reg.load("generator/synth-tiger-crab@latest")
    assert ft.meta["finetune"] == "lora" and ft.meta["alignment_beta"] == 0.1
    assert 0 < ft.meta["trainable_params"] < ft.meta["params"]
    assert ft.params["generator"]["finetune"]["epochs"] == 2
    src_state = reg.load("generator/synth-tiger@latest").load_safetensors("model.safetensors")
    new_state = ft.load_safetensors("model.safetensors")
    assert set(src_state) == set(new_state)  # LoRA merged: the plain architecture
    ffn = [k for k in src_state if "DenseReluDense" in k]
    assert ffn and all(torch.equal(src_state[k], new_state[k]) for k in ffn)  # frozen
    attn = [k for k in src_state if k.endswith("SelfAttention.q.weight")]
    assert any(not torch.equal(src_state[k], new_state[k]) for k in attn)  # adapted (merged LoRA)
    assert main([*args, "rank", "--checkpoint", "generator/synth-tiger-crab@latest", "--no-progress"]) == 0
    assert reg.load("rankings/synth-tiger-crab@latest").meta["test.n"] == len(ds.splits["test"])
