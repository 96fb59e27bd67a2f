"""Live catalog on the default wiring (issue 17 items 1, 2, 5): an item added through the tokenizer
reaches a generator trained on the codebook it serves — for every tokenizer method, before and
after CRAB rebalancing; a restart keeps the live items; new items are embedded the way the catalog
was (encoder, template, fields, truncation, normalisation) or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.generator.checkpoint import save_checkpoint
from components.generator.recommend import Recommender
from components.generator.service import rebind_codebook
from components.params import load_params
from components.registry import Registry
from components.serving.pb.genrec.v1 import tokenizer_pb2
from components.serving.stack import default_codebook_ref
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TokenizerError, item_texts
from components.tokenizer.online import EMBEDDING_CONFIG, check_embedding_config, embed_records, embedding_config
from components.tokenizer.params import TokenizerParams
from components.tokenizer.service import LIVE_SUFFIX, TokenizerService, live_head
from components.tokenizer.tokenize import build_codebook
from tests.generator_helpers import tiny_model
from tests.test_tokenizer_service import HashEncoder

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
N = 240
WORDS = [f"w{i}" for i in range(60)]


def _catalog(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(N)]
    texts = [{"title": " ".join(rng.choice(WORDS, 4))} for _ in range(N)]
    counts = np.minimum(rng.zipf(1.4, N) - 1, 300).astype(np.int64)
    return ids, texts, counts


def _params(method: str) -> TokenizerParams:
    p = TokenizerParams(method=method, levels=3, codebook_size=8, niter=8, encoder="minilm", collisions="extra_level")
    p.rqvae = p.rqvae.model_copy(update={"hidden": [32], "latent_dim": 8, "epochs": 10, "dead_code_every": 5, "device": "cpu"})
    p.flexcode = p.flexcode.model_copy(update={"epochs": 2, "hidden": 16, "latent_dim": 8, "gate_steps": 50, "mf_dim": 8})
    return p


def _codebook(method: str, rebalanced: bool, enc: HashEncoder) -> tuple[Codebook, TokenizerParams, np.ndarray]:
    from components.rebalancer import rebalance_codebook

    ids, texts, counts = _catalog()
    p = _params(method)
    emb = enc.encode(item_texts(ids, texts, p.text_fields, p.max_field_chars))
    cf_view = None
    if method == "flexcode":
        from components.tokenizer.flexcode import CFView

        cf_view = CFView(np.random.default_rng(1).normal(size=(N, 8)).astype(np.float32), "mf")
    cb = build_codebook(emb, ids, p, counts, seed=0, cf_view=cf_view)
    cb.stats["encoder"] = enc.name
    cb.stats[EMBEDDING_CONFIG] = embedding_config(p, enc.name)
    if rebalanced:
        before = list(cb.sizes)
        cb = rebalance_codebook(cb, counts, embeddings=emb, split_ratio=0.2, max_splits=3, seed=0).codebook
        assert cb.sizes != before, "the rebalanced codebook must differ in level sizes (the case item 1 is about)"
    return cb, p, counts


@pytest.mark.parametrize("rebalanced", [False, True], ids=["original", "crab"])
@pytest.mark.parametrize("method", ["rqkmeans", "balanced", "rqvae", "flexcode"])
def test_new_item_reaches_the_generator_for_every_method(tmp_path, method, rebalanced):
    enc = HashEncoder()
    cb, p, counts = _codebook(method, rebalanced, enc)
    reg = Registry(tmp_path / "artifacts")
    name = f"shop-{method}" + ("-crab" if rebalanced else "")
    cart = cb.save(reg, name, parents=[], params={})
    gart = save_checkpoint(reg, "shop-tiger", tiny_model("tiger", cb.sids, cb.sizes, max_items=10), cart.ref, "dataset/shop@x",
                           {"test": True}, popularity=counts)
    # the default wiring: the tokenizer serves the codebook the served generator decodes
    params = load_params(PARAMS, ["data.dataset=shop", f"tokenizer.method={method}"])
    assert default_codebook_ref(params, reg) == cart.ref
    tok = TokenizerService(reg, default_codebook_ref(params, reg), p, encoder=enc)
    new = {"fresh-1": "w1 w2 w3 w4", "fresh-2": "w50 w51 w52 w53"}
    r = tok._add_items(tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=i, fields={"title": t}) for i, t in new.items()]))
    live = Codebook.from_artifact(reg.load(r.codebook_ref))
    assert live.sizes == cb.sizes and live.n_items == N + 2 and live.n_collisions() == 0
    np.testing.assert_array_equal(live.sids[:N], cb.sids)
    rec = rebind_codebook(Recommender.from_registry(reg, gart.ref), live)  # what the generator service does on refresh
    out = rec.recommend([["fresh-1", "i0"], ["i1"]], k=N + 2, beam=N + 2)
    assert {"fresh-1", "fresh-2"} <= set(out.item_ids[1]) and len(set(out.item_ids[1])) == N + 2  # decodable: in the trie
    assert len(out.item_ids[0]) == N + 2  # a history holding a new item encodes


def test_tokenizer_serves_the_codebook_of_the_served_generator(tmp_path):
    """The defect: the tokenizer served codebook/<ds>-<method>@latest while the generator decodes the
    CRAB codebook; AddItems then wrote SIDs the generator could not take (level sizes differ)."""
    enc = HashEncoder()
    base, _, counts = _codebook("rqkmeans", False, enc)
    crab, _, _ = _codebook("rqkmeans", True, enc)
    reg = Registry(tmp_path / "artifacts")
    bart = base.save(reg, "shop-rqkmeans", parents=[], params={})
    cart = crab.save(reg, "shop-crab", parents=[bart.ref], params={})
    params = load_params(PARAMS, ["data.dataset=shop", "tokenizer.method=rqkmeans"])
    assert default_codebook_ref(params, reg) == "codebook/shop-rqkmeans@latest"  # no generator yet: the tokenizer's own
    save_checkpoint(reg, "shop-tiger", tiny_model("tiger", crab.sids, crab.sizes), cart.ref, "dataset/shop@x", {})
    assert default_codebook_ref(params, reg) == cart.ref
    explicit = load_params(PARAMS, ["data.dataset=shop", "serving.codebook=codebook/shop-rqkmeans@latest"])
    assert default_codebook_ref(explicit, reg) == "codebook/shop-rqkmeans@latest"


def test_restart_resumes_the_live_head_of_this_codebook_version(tmp_path):
    enc = HashEncoder()
    cb, p, _ = _codebook("rqkmeans", False, enc)
    reg = Registry(tmp_path / "artifacts")
    v1 = cb.save(reg, "shop-rqkmeans", parents=[], params={})
    tok = TokenizerService(reg, "codebook/shop-rqkmeans@latest", p, encoder=enc)
    a = tok._add_items(tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="n1", fields={"title": "w1 w2"})]))
    b = tok._add_items(tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="n2", fields={"title": "w3 w4"})]))
    assert a.codebook_ref.startswith(f"codebook/shop-rqkmeans{LIVE_SUFFIX}@") and b.codebook_ref != a.codebook_ref
    assert live_head(reg, "codebook/shop-rqkmeans@latest") == b.codebook_ref
    again = TokenizerService(reg, "codebook/shop-rqkmeans@latest", p, encoder=enc)  # a restart
    assert again.current_ref == b.codebook_ref and {"n1", "n2"} <= set(again._current.index)
    assert TokenizerService(reg, v1.ref, p, encoder=enc, resume_live=False).current_ref == v1.ref
    # a rebuilt offline codebook (a new version) does not resume live items made for the old one
    cb2 = Codebook(sids=cb.sids[::-1].copy(), sizes=cb.sizes, item_ids=cb.item_ids, method=cb.method, codewords=cb.codewords,
                   stats=cb.stats)
    v2 = cb2.save(reg, "shop-rqkmeans", parents=[], params={"rebuilt": True})
    assert live_head(reg, "codebook/shop-rqkmeans@latest") == v2.ref
    assert live_head(reg, v1.ref) == b.codebook_ref


def _cb_with_config(p: TokenizerParams, name: str = "hash-64") -> Codebook:
    cb = Codebook(sids=np.array([[0, 0], [0, 1], [1, 0]]), sizes=[2, 2], item_ids=["a", "b", "c"], method="rqkmeans",
                  codewords={0: np.eye(2, 64, dtype=np.float32), 1: np.eye(2, 64, 3, dtype=np.float32)})
    cb.stats["encoder"] = name
    cb.stats[EMBEDDING_CONFIG] = embedding_config(p, name)
    return cb


@pytest.mark.parametrize("change,key", [
    ({"text_fields": ["title", "description"]}, "text_fields"),
    ({"text_fields": ["brand", "title", "categories", "description"]}, "text_fields"),  # same fields, other order
    ({"max_field_chars": {"description": 100}}, "max_field_chars"),
    ({"normalize": False}, "normalize"),
])
def test_new_items_embedded_with_another_template_are_refused(change, key):
    p = TokenizerParams(encoder="minilm")
    cb = _cb_with_config(p)
    enc = HashEncoder()
    assert embed_records(cb, {"x": {"title": "a new thing"}}, p, encoder=enc).shape == (1, 64)  # same config: fine
    with pytest.raises(TokenizerError, match=key) as e:
        embed_records(cb, {"x": {"title": "a new thing"}}, p.model_copy(update=change), encoder=enc)
    assert "built with" in str(e.value)


def test_embedding_config_hand_values_and_encoder_name():
    p = TokenizerParams(encoder="hf-mean", model_path="/models/e5", max_length=128, text_fields=["title"], max_field_chars={"title": 50})
    assert embedding_config(p) == {"encoder": "hf-mean:/models/e5", "template": "field: value; v1", "text_fields": ["title"],
                                   "max_field_chars": {"title": 50}, "normalize": True, "max_length": 128}
    assert "max_length" not in embedding_config(TokenizerParams(encoder="minilm"))
    cb = _cb_with_config(TokenizerParams(encoder="minilm"), name="minilm")
    with pytest.raises(TokenizerError, match="built on minilm embeddings"):
        check_embedding_config(cb, TokenizerParams(encoder="minilm"), "sentence-transformers:/x")
    legacy = Codebook(sids=cb.sids, sizes=cb.sizes, item_ids=cb.item_ids, method="rqkmeans", stats={"encoder": "minilm"})
    check_embedding_config(legacy, TokenizerParams(encoder="minilm", normalize=False), "minilm")  # nothing recorded: name only


def test_rebalancing_keeps_the_embedding_config():
    enc = HashEncoder()
    cb, p, _ = _codebook("rqkmeans", True, enc)
    assert cb.stats[EMBEDDING_CONFIG] == embedding_config(p, enc.name) and cb.stats["encoder"] == enc.name
