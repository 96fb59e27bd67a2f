"""The generator gRPC service end to end with the tokenizer service: recommend, bounds, unknown
items, empty-history fallback, and live new items (AddItems → trie swapped, no restart)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from components.generator.checkpoint import save_checkpoint
from components.generator.recommend import Recommender
from components.generator.service import GeneratorService, Limits, rebind_codebook
from components.generator.service import registration as gen_registration
from components.registry import ArtifactIncompatible, Registry
from components.serving.clients import TokenizerClient
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import generator_pb2, generator_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import item_texts
from components.tokenizer.params import TokenizerParams
from components.tokenizer.service import TokenizerService
from components.tokenizer.service import registration as tok_registration
from components.tokenizer.tokenize import build_codebook
from tests.generator_helpers import tiny_model
from tests.test_tokenizer_service import HashEncoder

N_ITEMS = 300


@pytest.fixture(scope="module")
def stack(tmp_path_factory, industrial):
    reg = Registry(tmp_path_factory.mktemp("gen") / "artifacts")
    dart = industrial.save(reg)
    enc = HashEncoder()
    p = TokenizerParams(method="rqkmeans", levels=3, codebook_size=8, encoder="minilm")
    ids = industrial.item_ids[:N_ITEMS]
    emb = enc.encode(item_texts(ids, industrial.item_text[:N_ITEMS], p.text_fields, p.max_field_chars))
    cb = build_codebook(emb, ids, p, seed=0)
    cb.stats["encoder"] = enc.name
    cart = cb.save(reg, "small", parents=[dart.ref], params={})
    model = tiny_model("tiger", cb.sids, cb.sizes, max_items=10)
    counts = industrial.train_item_counts()[:N_ITEMS]
    gart = save_checkpoint(reg, "small-tiger", model, cart.ref, dart.ref, {"test": True}, popularity=counts)
    tok = TokenizerService(reg, cart.ref, p, encoder=enc)
    with BackgroundServer([tok_registration(tok)]) as tport:
        rec = Recommender.from_registry(reg, gart.ref)
        gen = GeneratorService(rec, gart.ref, registry=reg, limits=Limits(max_history=50, max_k=N_ITEMS + 10, max_beam=400, max_batch=8),
                               tokenizer=TokenizerClient(f"127.0.0.1:{tport}", timeout_s=10), codebook_ref=cart.ref)
        with BackgroundServer([gen_registration(gen)]) as gport:
            with grpc.insecure_channel(f"127.0.0.1:{gport}") as gch, grpc.insecure_channel(f"127.0.0.1:{tport}") as tch:
                yield generator_pb2_grpc.GeneratorStub(gch), tokenizer_pb2_grpc.TokenizerStub(tch), gen, gch, ids, counts


def test_recommend(stack):
    stub, _, gen, _, ids, _ = stack
    r = stub.Recommend(generator_pb2.RecommendRequest(history=ids[:5], k=10, beam=20), timeout=30)
    assert len(r.item_ids) == 10 and len(set(r.item_ids)) == 10 and set(r.item_ids) <= set(ids)
    assert list(r.scores) == sorted(r.scores, reverse=True)
    assert r.model_ref == gen.model_ref and not r.fallback_used
    b = stub.RecommendBatch(generator_pb2.RecommendBatchRequest(requests=[
        generator_pb2.RecommendRequest(history=ids[:5], k=10, beam=20),
        generator_pb2.RecommendRequest(history=ids[7:9], k=3),
    ]), timeout=30)
    assert list(b.responses[0].item_ids) == list(r.item_ids) and len(b.responses[1].item_ids) == 3


def test_empty_history_popularity_fallback(stack):
    stub, _, _, _, ids, counts = stack
    r = stub.Recommend(generator_pb2.RecommendRequest(history=[], k=5), timeout=30)
    assert r.fallback_used
    assert list(r.item_ids) == [ids[i] for i in np.argsort(-counts, kind="stable")[:5]]


def test_unknown_items(stack):
    stub = stack[0]
    with pytest.raises(grpc.RpcError) as e:
        stub.Recommend(generator_pb2.RecommendRequest(history=["nope-1", stack[4][0]], k=5), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope-1" in e.value.details()
    r = stub.Recommend(generator_pb2.RecommendRequest(history=["nope-1", stack[4][0]], k=5, skip_unknown=True), timeout=30)
    assert list(r.skipped_items) == ["nope-1"] and len(r.item_ids) == 5


@pytest.mark.parametrize(
    "req, fragment",
    [
        (generator_pb2.RecommendRequest(history=["0"], k=-1), "k=-1"),
        (generator_pb2.RecommendRequest(history=["0"], k=5, beam=3), "beam (3) must be >= k (5)"),
        (generator_pb2.RecommendRequest(history=["0"], k=5, beam=10_000), "beam=10000"),
        (generator_pb2.RecommendRequest(history=["0"] * 51, k=5), "at most 50"),
        (generator_pb2.RecommendRequest(history=["0"], k=10**6), "k=1000000"),
    ],
)
def test_bounds(stack, req, fragment):
    with pytest.raises(grpc.RpcError) as e:
        stack[0].Recommend(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in e.value.details()


def test_batch_bounds(stack):
    with pytest.raises(grpc.RpcError) as e:
        stack[0].RecommendBatch(generator_pb2.RecommendBatchRequest(requests=[generator_pb2.RecommendRequest(history=["0"], k=1)] * 9), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 8" in e.value.details()


def test_live_new_items(stack):
    stub, tok, gen, gch, ids, _ = stack
    before = gen.codebook_ref
    added = tok.AddItems(tokenizer_pb2.AddItemsRequest(items=[
        tokenizer_pb2.NewItem(item_id="brand-new", fields={"title": "cordless drill with two batteries", "brand": "Acme"})
    ]), timeout=60)
    assert added.codebook_ref != before
    # the generator learns of the new item on first sight, without a restart
    r = stub.Recommend(generator_pb2.RecommendRequest(history=["brand-new", ids[0]], k=5), timeout=60)
    assert len(r.item_ids) == 5 and gen.codebook_ref == added.codebook_ref
    everything = stub.Recommend(generator_pb2.RecommendRequest(history=[ids[1]], k=N_ITEMS + 1, beam=N_ITEMS + 1), timeout=120)
    assert "brand-new" in everything.item_ids and len(set(everything.item_ids)) == N_ITEMS + 1
    h = health_pb2_grpc.HealthStub(gch)
    assert h.Check(health_pb2.HealthCheckRequest(service="genrec.v1.Generator"), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_rebind_refuses_incompatible_codebook(stack):
    gen = stack[2]
    cb = gen.recommender.codebook
    other = Codebook(sids=cb.sids[::-1].copy(), sizes=cb.sizes, item_ids=cb.item_ids, method="x")
    with pytest.raises(ArtifactIncompatible, match="keep every existing item"):
        rebind_codebook(gen.recommender, other)


def test_concurrent_calls_are_batched_and_equal_sequential(stack):
    from concurrent.futures import ThreadPoolExecutor

    stub, _, gen, _, ids, _ = stack
    reqs = [generator_pb2.RecommendRequest(history=ids[i : i + 3], k=5, beam=10) for i in range(0, 48, 3)]
    alone = [list(stub.Recommend(r, timeout=60).item_ids) for r in reqs]
    before_batches, before_items = gen._batcher.batches, gen._batcher.items
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: list(stub.Recommend(r, timeout=60).item_ids), reqs))
    assert together == alone
    batches = gen._batcher.batches - before_batches
    assert gen._batcher.items - before_items == len(reqs) and batches < len(reqs)  # some calls were merged
    # a bad request inside a merged batch fails alone
    bad = generator_pb2.RecommendRequest(history=["nope"], k=5)
    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(stub.Recommend, r, timeout=60) for r in [bad, *reqs[:7]]]
        with pytest.raises(grpc.RpcError) as e:
            futs[0].result()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [list(f.result().item_ids) for f in futs[1:]] == alone[:7]
