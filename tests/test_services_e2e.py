"""Generator → retrieval over gRPC with a GenPlugin (RAR) model: neighbours change the answer,
and when the retrieval service dies the generator keeps answering, flagged, with no errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from components.generator.heads.genplugin import GenPluginHead
from components.generator.model import GenerativeRecommender
from components.generator.recommend import Recommender
from components.generator.service import GeneratorService, Limits
from components.generator.service import registration as gen_registration
from components.generator.vocab import SIDVocab
from components.retrieval import UserRetriever
from components.retrieval.service import RetrievalService
from components.retrieval.service import registration as ret_registration
from components.serving.clients import RetrievalClient
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import generator_pb2, generator_pb2_grpc
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import random_sids, synthetic_dataset, tiny_backbone


@pytest.fixture(scope="module")
def world():
    ds = synthetic_dataset(n_items=24, n_users=40)
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    retriever = UserRetriever.build(ds, emb, fields=("title",), dataset_ref="dataset/synth@x")
    torch.manual_seed(0)
    sizes = [3, 4, 2]
    sids = random_sids(sizes, ds.n_items)
    head = GenPluginHead(32, n_items=ds.n_items, text_dim=8, lan_heads=2, lan_ff=32, proj_hidden=16, dataset="dataset/synth@x", v=3, z=6, rar_active=True)
    head.item_text.copy_(torch.from_numpy(emb))
    model = GenerativeRecommender(tiny_backbone("tiger", SIDVocab(sids, sizes)), [head], max_items=ds.max_history).eval()
    cb = Codebook(sids=sids, sizes=sizes, item_ids=ds.item_ids, method="random")
    rec = Recommender(model, cb, np.ones(ds.n_items))
    return ds, retriever, rec


def _stack(world, retrieval_port):
    ds, _, rec = world
    client = RetrievalClient(f"127.0.0.1:{retrieval_port}", timeout_s=2, retries=1, backoff_s=0.01)
    return GeneratorService(rec, "generator/synth@test", limits=Limits(max_k=24, max_beam=50), retrieval=client)


def test_generator_calls_retrieval_and_degrades_when_it_dies(world):
    ds, retriever, _ = world
    ret_server = BackgroundServer([ret_registration(RetrievalService(retriever, "retrieval-index/synth@x", default_z=6, default_v=3))])
    rport = ret_server.__enter__()
    gen = _stack(world, rport)
    assert gen.model_uses_retrieval()
    with BackgroundServer([gen_registration(gen)]) as gport, grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)
        hist = ds.item_ids[3:6]
        with_r = stub.Recommend(generator_pb2.RecommendRequest(history=hist, k=10, heads=generator_pb2.HeadOptions(use_retrieval=True)), timeout=30)
        assert with_r.retrieval_used and not with_r.retrieval_unavailable and len(with_r.item_ids) == 10
        ret_server.stop()  # the retrieval service goes away
        for _ in range(5):
            r = stub.Recommend(generator_pb2.RecommendRequest(history=hist, k=10, heads=generator_pb2.HeadOptions(use_retrieval=True)), timeout=30)
            assert r.retrieval_unavailable and not r.retrieval_used and len(r.item_ids) == 10
        # without neighbours the GenPlugin decoder sees different context: scores change
        assert not np.allclose(list(with_r.scores), list(r.scores))
