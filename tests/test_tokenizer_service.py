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
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="0", fields={"title": "x"})]), grpc.StatusCode.INVALID_ARGUMENT, "already in the codebook"),
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id="e", fields={"title": " "})]), grpc.StatusCode.INVALID_ARGUMENT, "has no text"),
        ("AddItems", tokenizer_pb2.AddItemsRequest(items=[]), grpc.StatusCode.INVALID_ARGUMENT, "no items"),
    ],
)
def test_bad_requests(served, call, req, code, fragment):
    stub = served[0]
    with pytest.raises(grpc.RpcError) as e:
        getattr(stub, call)(req, timeout=10)
    assert e.value.code() == code and fragment in e.value.details()
