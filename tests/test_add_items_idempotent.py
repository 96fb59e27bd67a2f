"""AddItems is idempotent and honours the deadline (issue #17): a retry of the same items gets the
same SIDs, other text under a taken id is refused, a request_id replays its commit, a call whose
deadline passed commits nothing, and ``codebook/<name>@latest`` naming the current codebook is
accepted."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from components.registry import Registry
from components.serving.clients import TokenizerClient
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import item_texts
from components.tokenizer.params import TokenizerParams
from components.tokenizer.service import TokenizerService, registration
from components.tokenizer.tokenize import build_codebook

WORDS = [f"w{i}" for i in range(40)]
P = TokenizerParams(method="rqkmeans", levels=3, codebook_size=8, encoder="minilm")


class HashEncoder:
    name = "hash-64"

    def __init__(self):
        self.vec = HashingVectorizer(n_features=4096, alternate_sign=False, norm="l2")
        self.proj = np.random.default_rng(0).normal(size=(4096, 64)).astype(np.float32)
        self.delay_s = 0.0
        self.done = threading.Event()

    def encode(self, texts):
        time.sleep(self.delay_s)
        x = (self.vec.transform(texts) @ self.proj).astype(np.float32)
        self.done.set()
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def base_cb():
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(300)]
    texts = [{"title": " ".join(rng.choice(WORDS, 4))} for _ in ids]
    emb = HashEncoder().encode(item_texts(ids, texts, P.text_fields, P.max_field_chars))
    cb = build_codebook(emb, ids, P, item_counts=np.ones(300, dtype=np.int64), seed=0)
    cb.stats["encoder"] = HashEncoder.name
    cb.dataset_ref = "dataset/shop@0123abcd"
    return cb


@pytest.fixture()
def served(tmp_path, base_cb):
    reg = Registry(tmp_path / "artifacts")
    art = base_cb.save(reg, "shop", parents=[], params={})
    enc = HashEncoder()
    service = TokenizerService(reg, art.ref, P, encoder=enc, max_items=100)
    with BackgroundServer([registration(service)]) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield tokenizer_pb2_grpc.TokenizerStub(ch), service, reg, enc, port


def _items(*pairs):
    return [tokenizer_pb2.NewItem(item_id=i, fields={"title": t}) for i, t in pairs]


def _versions(reg):
    """Every stored codebook version (not only the LATEST ones)."""
    return sorted(str(p.parent) for p in (reg.root / "codebook").glob("*/*/manifest.json"))


def _sids(r):
    return [(s.item_id, list(s.tokens)) for s in r.sids]


def test_live_versions_leave_the_pipeline_latest_alone(served, base_cb):
    """Issue #17 item 4: AddItems writes codebook/<name>-live; codebook/<name>@latest (what dvc
    stages load) still covers exactly its dataset, and the live versions record what they extend."""
    stub, service, reg, _, _ = served
    base = service.current_ref
    first = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n1", "w1 w2"))), timeout=30)
    second = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n2", "w3 w4"))), timeout=30)
    assert reg.load("codebook/shop@latest").ref == base
    assert Codebook.from_artifact(reg.load("codebook/shop@latest")).n_items == base_cb.n_items
    assert first.codebook_ref.startswith("codebook/shop-live@") and reg.load("codebook/shop-live@latest").ref == second.codebook_ref
    for r, parent in ((first, base), (second, first.codebook_ref)):
        art = reg.load(r.codebook_ref)
        assert art.manifest.parents == [parent]
        assert art.params["extends_codebook"] == base and art.params["dataset"] == base_cb.dataset_ref
    restarted = TokenizerService(reg, "codebook/shop-live@latest", P, encoder=service.encoder)  # keeps writing -live
    third = restarted._add_items(tokenizer_pb2.AddItemsRequest(items=_items(("n3", "w5"))))
    assert third.codebook_ref.startswith("codebook/shop-live@") and reg.load(third.codebook_ref).params["extends_codebook"] == base


def test_retry_returns_same_sids(served):
    stub, service, reg, _, _ = served
    req = tokenizer_pb2.AddItemsRequest(items=_items(("n1", "w1 w2 w3"), ("n2", "w4 w5 w6"), ("n3", "w7 w8")))
    first = stub.AddItems(req, timeout=30)
    before = _versions(reg)
    again = stub.AddItems(req, timeout=30)  # the retry after a lost answer
    assert again.codebook_ref == first.codebook_ref == service.current_ref
    assert _sids(again) == _sids(first) and [i for i, _ in _sids(first)] == ["n1", "n2", "n3"]
    assert _versions(reg) == before  # nothing new written
    # a batch mixing an added item (same text) with a new one adds only the new one
    mixed = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n2", "w4 w5 w6"), ("n4", "w9 w10"))), timeout=30)
    assert _sids(mixed)[0] == _sids(first)[1] and mixed.codebook_ref != first.codebook_ref


def test_different_text_refused(served):
    stub, service, _, _, _ = served
    stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n1", "w1 w2 w3"))), timeout=30)
    ref = service.current_ref
    with pytest.raises(grpc.RpcError) as e:
        stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n1", "w9 w9 w9"), ("n5", "w3"))), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "different text" in e.value.details() and "'n1'" in e.value.details() and "n5" not in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("i0", "w1"))), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "from the catalog" in e.value.details() and "'i0'" in e.value.details()
    assert service.current_ref == ref


def test_request_id_replay(served):
    stub, service, reg, enc, port = served
    req = tokenizer_pb2.AddItemsRequest(items=_items(("n1", "w1 w2"), ("n2", "w3 w4")), request_id="req-1")
    first = stub.AddItems(req, timeout=30)
    later = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n3", "w5 w6"))), timeout=30)
    assert service.current_ref == later.codebook_ref != first.codebook_ref
    replay = stub.AddItems(req, timeout=30)
    assert replay.codebook_ref == first.codebook_ref and _sids(replay) == _sids(first)
    assert reg.load(first.codebook_ref).params["request_id"] == "req-1"
    # a restarted service finds the request id in the codebook lineage
    restarted = TokenizerService(reg, "codebook/shop-live@latest", P, encoder=enc)
    assert restarted._add_items(req).codebook_ref == first.codebook_ref
    # the same request id with items it did not commit is refused
    with pytest.raises(grpc.RpcError) as e:
        stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("n9", "w7")), request_id="req-1"), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "req-1" in e.value.details()
    # the client sends one request id for all its tries
    client = TokenizerClient(f"127.0.0.1:{port}", timeout_s=30)
    try:
        a = client.add_items({"n7": {"title": "w8 w9"}}, request_id="req-2")
        client.add_items({"n8": {"title": "w10"}})
        assert client.add_items({"n7": {"title": "w8 w9"}}, request_id="req-2").codebook_ref == a.codebook_ref
    finally:
        client.close()


def test_expired_deadline_commits_nothing(served):
    stub, service, reg, enc, _ = served
    before, ref = _versions(reg), service.current_ref
    enc.delay_s, enc.done = 1.0, threading.Event()
    with pytest.raises(grpc.RpcError) as e:
        stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("late", "w1 w2"))), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert enc.done.wait(5)
    with service._lock:  # the abandoned call has finished
        pass
    assert _versions(reg) == before and service.current_ref == ref
    enc.delay_s = 0.0
    r = stub.AddItems(tokenizer_pb2.AddItemsRequest(items=_items(("late", "w1 w2"))), timeout=30)  # the retry commits once
    assert r.codebook_ref != ref and len(_versions(reg)) == len(before) + 1


def test_latest_ref_names_the_current_codebook(served, base_cb):
    stub, service, reg, _, _ = served
    base = service.current_ref
    r = stub.AddItems(tokenizer_pb2.AddItemsRequest(codebook_ref="codebook/shop@latest", items=_items(("n1", "w1"))), timeout=30)
    assert r.codebook_ref != base and service.current_ref == r.codebook_ref
    prefix = r.codebook_ref[: r.codebook_ref.index("@") + 9]
    stub.AddItems(tokenizer_pb2.AddItemsRequest(codebook_ref=prefix, items=_items(("n2", "w2"))), timeout=30)
    stub.AddItems(tokenizer_pb2.AddItemsRequest(codebook_ref="codebook/shop-live@latest", items=_items(("n4", "w4"))), timeout=30)
    with pytest.raises(grpc.RpcError) as e:  # an older version: a clear refusal
        stub.AddItems(tokenizer_pb2.AddItemsRequest(codebook_ref=base, items=_items(("n3", "w3"))), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert service.current_ref in e.value.details() and base in e.value.details()
    other = base_cb.save(reg, "other", parents=[], params={})
    with pytest.raises(grpc.RpcError) as e:  # @latest of another codebook: says what it resolved to
        stub.AddItems(tokenizer_pb2.AddItemsRequest(codebook_ref="codebook/other@latest", items=_items(("n3", "w3"))), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"(= {other.ref})" in e.value.details()
    tok = stub.Tokenize(tokenizer_pb2.TokenizeRequest(codebook_ref="codebook/shop-live@latest", item_ids=["n1"]), timeout=10)
    assert tok.codebook_ref == service.current_ref
