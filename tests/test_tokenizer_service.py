"""The tokenizer gRPC service: Tokenize/Detokenize round trip, AddItems swaps in a new codebook
artifact whose new SIDs collide with nothing, CodebookStats, and bad requests."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from components.registry import Registry
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import item_texts
from components.tokenizer.params import TokenizerParams
from components.tokenizer.service import TokenizerService, registration
from components.tokenizer.tokenize import build_codebook


class HashEncoder:
    """Deterministic text encoder for tests (hashing trick + fixed random projection)."""

    name = "hash-64"

    def __init__(self):
        self.vec = HashingVectorizer(n_features=4096, alternate_sign=False, norm="l2")
        self.proj = np.random.default_rng(0).normal(size=(4096, 64)).astype(np.float32)

    def encode(self, texts):
        x = (self.vec.transform(texts) @ self.proj).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def served(tmp_path_factory, industrial):
    reg = Registry(tmp_path_factory.mktemp("tok") / "artifacts")
    n = 600
    enc = HashEncoder()
    p = TokenizerParams(method="rqkmeans", levels=3, codebook_size=8, encoder="minilm")
    ids = industrial.item_ids[:n]
    emb = enc.encode(item_texts(ids, industrial.item_text[:n], p.text_fields, p.max_field_chars))
    cb = build_codebook(emb, ids, p, item_counts=industrial.train_item_counts()[:n], seed=0)
    cb.stats["encoder"] = enc.name
    art = cb.save(reg, "industrial-small", parents=[], params={})
    service = TokenizerService(reg, art.ref, p, encoder=enc, max_items=100)
    with BackgroundServer([registration(service)]) as port:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield tokenizer_pb2_grpc.TokenizerStub(ch), service, reg, cb, industrial


def test_tokenize_detokenize_roundtrip(served):
    stub, service, _, cb, ds = served
    ids = ds.item_ids[:20]
    r = stub.Tokenize(tokenizer_pb2.TokenizeRequest(item_ids=ids), timeout=10)
    assert r.codebook_ref == service.current_ref
    assert [list(s.tokens) for s in r.sids] == cb.sids[:20].tolist()
    back = stub.Detokenize(tokenizer_pb2.DetokenizeRequest(sids=[common_pb2.SemanticId(tokens=s.tokens) for s in r.sids]), timeout=10)
    assert list(back.item_ids) == ids and all(back.found)
    miss = stub.Detokenize(tokenizer_pb2.DetokenizeRequest(sids=[common_pb2.SemanticId(tokens=[99, 99, 99])]), timeout=10)
    assert list(miss.found) == [False]


def test_add_items_new_codebook(served):
    stub, service, reg, cb, ds = served
    old_ref = service.current_ref
    new = [tokenizer_pb2.NewItem(item_id=f"new-{k}", fields={"title": ds.item_text[700 + k]["title"]}) for k in range(5)]
    r = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=new), timeout=30)
    assert r.codebook_ref != old_ref and service.current_ref == r.codebook_ref
    art = reg.load(r.codebook_ref)
    assert art.manifest.parents == [old_ref]
    cb2 = Codebook.from_artifact(art)
    assert cb2.n_items == cb.n_items + 5 and cb2.n_collisions() == 0
    np.testing.assert_array_equal(cb2.sids[: cb.n_items], cb.sids)  # existing items keep their SIDs
    assert cb2.sizes == cb.sizes
    assert [list(s.tokens) for s in r.sids] == cb2.sids[-5:].tolist()
    t = stub.Tokenize(tokenizer_pb2.TokenizeRequest(item_ids=["new-3"]), timeout=10)
    assert list(t.sids[0].tokens) == cb2.sids[-2].tolist()
    old = stub.Tokenize(tokenizer_pb2.TokenizeRequest(codebook_ref=old_ref, item_ids=[ds.item_ids[0]]), timeout=10)
    assert old.codebook_ref == old_ref
    stats = json.loads(stub.CodebookStats(tokenizer_pb2.CodebookStatsRequest(), timeout=10).stats.json)
    assert stats["n_items"] == cb.n_items + 5 and stats["collisions"] == 0 and stats["online_items_added"] == 5


@pytest.mark.parametrize(
    "call, req, code, fragment",
    [
        ("Tokenize", tokenizer_pb2.TokenizeRequest(item_ids=["nope"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown item ids"),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(item_ids=["0"] * 101), grpc.StatusCode.INVALID_ARGUMENT, "at most 100"),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(codebook_ref="codebook/none@latest"), grpc.StatusCode.NOT_FOUND, "no artifact"),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(codebook_ref="bad ref"), grpc.StatusCode.NOT_FOUND, "malformed"),
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="0", fields={"title": "x"})]), grpc.StatusCode.FAILED_PRECONDITION, "from the catalog"),
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="e", fields={"title": " "})]), grpc.StatusCode.INVALID_ARGUMENT, "has no text"),
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[]), grpc.StatusCode.INVALID_ARGUMENT, "no items"),
    ],
)
def test_bad_requests(served, call, req, code, fragment):
    stub = served[0]
    with pytest.raises(grpc.RpcError) as e:
        getattr(stub, call)(req, timeout=10)
    assert e.value.code() == code and fragment in e.value.details()


# ---- codebooks that cannot or can place new items (issue #16) --------------------------------------
def _no_encoder_load(monkeypatch):
    from components.tokenizer import encoders

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise RuntimeError("the text encoder must not be loaded for a codebook that cannot place new items")

    monkeypatch.setattr(encoders, "make_encoder", refuse)
    return calls


def _flexcode_without_encoder(n: int = 40) -> Codebook:
    """A FlexCode codebook as written before new-item support: codewords in the latent space, no encoder."""
    rng = np.random.default_rng(0)
    sids = np.stack([rng.integers(0, 4, n), rng.integers(0, 4, n), rng.integers(0, 4, n)], 1)
    sids = np.unique(sids, axis=0)
    n = len(sids)
    sids = np.c_[sids, np.zeros(n, dtype=np.int64)]
    split = [{"semantic": 4, "cf": 0}, {"semantic": 2, "cf": 2}, {"semantic": 2, "cf": 2}]
    return Codebook(sids=sids, sizes=[4, 4, 4, 1], item_ids=[f"f{i}" for i in range(n)], method="flexcode",
                    codewords={lvl: rng.normal(size=(4, 8)).astype(np.float32) for lvl in range(3)},
                    stats={"semantic_levels": 3, "flexcode": {"token_split": split}})


@pytest.mark.parametrize("which, fragment", [("flexcode", "no semantic encoder"), ("no-codewords", "no codewords")])
def test_add_items_refused_before_loading_the_encoder(tmp_path, monkeypatch, which, fragment):
    calls = _no_encoder_load(monkeypatch)
    reg = Registry(tmp_path / "artifacts")
    if which == "flexcode":
        cb = _flexcode_without_encoder()
    else:
        cb = Codebook(sids=np.array([[0, 0], [0, 1], [1, 0]]), sizes=[2, 2], item_ids=["a", "b", "c"], method="reference")
    art = cb.save(reg, f"cannot-{which}", parents=[], params={})
    service = TokenizerService(reg, art.ref, TokenizerParams(encoder="minilm"), encoder=None)
    with BackgroundServer([registration(service)]) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = tokenizer_pb2_grpc.TokenizerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.AddItems(tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="x", fields={"title": "a new item"})]), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and fragment in e.value.details()
    assert calls == [] and service.encoder is None and service.current_ref == art.ref


def test_add_items_on_a_flexcode_codebook(tmp_path):
    """New items get a FlexCode SID: all semantic tokens (a new item has no interactions), unique."""
    from components.tokenizer.flexcode import CFView, cf_tokens_of, token_views

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    texts = [{"title": " ".join(rng.choice(words, 4))} for _ in range(300)]
    enc = HashEncoder()
    p = TokenizerParams(method="flexcode", levels=3, codebook_size=8, niter=8, encoder="minilm")
    p.flexcode = p.flexcode.model_copy(update={"epochs": 2, "hidden": 16, "latent_dim": 8, "gate_steps": 100, "mf_dim": 8})
    ids = [f"i{k}" for k in range(300)]
    emb = enc.encode(item_texts(ids, texts, p.text_fields, p.max_field_chars))
    counts = np.minimum(rng.zipf(1.5, 300) - 1, 200)
    cb = build_codebook(emb, ids, p, counts, seed=0, cf_view=CFView(rng.normal(size=(300, 8)).astype(np.float32), "mf"))
    cb.stats["encoder"] = enc.name
    reg = Registry(tmp_path / "artifacts")
    art = cb.save(reg, "tiny-flexcode", parents=[], params={})
    service = TokenizerService(reg, art.ref, p, encoder=enc)
    with BackgroundServer([registration(service)]) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = tokenizer_pb2_grpc.TokenizerStub(ch)
        new = [tokenizer_pb2.NewItem(item_id=f"new-{k}", fields={"title": " ".join(rng.choice(words, 4))}) for k in range(5)]
        r = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=new), timeout=30)
    cb2 = Codebook.from_artifact(reg.load(r.codebook_ref))
    assert cb2.n_items == 305 and cb2.n_collisions() == 0 and cb2.sizes == cb.sizes
    np.testing.assert_array_equal(cb2.sids[:300], cb.sids)
    assert [list(s.tokens) for s in r.sids] == cb2.sids[300:].tolist()
    assert (cf_tokens_of(cb2)[300:] == 0).all() and cb2.stats["flexcode"]["cf_tokens"][300:] == [0] * 5
    views = token_views(cb2)
    assert not any(views[lvl][cb2.sids[300:, lvl]].any() for lvl in range(3))  # semantic codes only
