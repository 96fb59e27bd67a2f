"""The rebalancer gRPC service: Rebalance a codebook ref → new ref + before/after stats; errors."""

from __future__ import annotations

import json

import grpc
import pytest

from components.rebalancer.params import RebalanceParams
from components.rebalancer.service import RebalancerService, registration
from components.registry import Registry
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import rebalancer_pb2, rebalancer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.reference import codebook_from_index_json


@pytest.fixture(scope="module")
def served(tmp_path_factory, industrial, industrial_dir):
    reg = Registry(tmp_path_factory.mktemp("rb") / "artifacts")
    dart = industrial.save(reg)
    cb = codebook_from_index_json(industrial_dir / "reference" / "minionerec.index.json", industrial)
    cb.dataset_ref = dart.ref
    cart = cb.save(reg, "industrial-reference", parents=[dart.ref], params={})
    service = RebalancerService(reg, RebalanceParams(n_init=1), seed=0)
    with BackgroundServer([registration(service)]) as port:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield rebalancer_pb2_grpc.RebalancerStub(ch), reg, cart, dart


def test_rebalance_returns_new_codebook(served):
    stub, reg, cart, dart = served
    r = stub.Rebalance(rebalancer_pb2.RebalanceRequest(codebook_ref=cart.ref, dataset_ref=dart.ref, levels=[1]), timeout=120)
    art = reg.load(r.codebook_ref)
    assert cart.ref in art.manifest.parents and r.codebook_ref != cart.ref
    new = Codebook.from_artifact(art)
    assert new.n_collisions() == 0 and new.sizes[1] > 256 and new.sizes[0] == Codebook.from_artifact(cart).sizes[0]
    before, after = json.loads(r.before.json), json.loads(r.after.json)
    assert after["level_1"]["max"] < before["level_1"]["max"]


@pytest.mark.parametrize(
    "req, code, fragment",
    [
        (rebalancer_pb2.RebalanceRequest(), grpc.StatusCode.INVALID_ARGUMENT, "codebook_ref is required"),
        (rebalancer_pb2.RebalanceRequest(codebook_ref="codebook/none@latest", dataset_ref="dataset/industrial@latest"), grpc.StatusCode.NOT_FOUND, "no artifact codebook/none"),
        (rebalancer_pb2.RebalanceRequest(codebook_ref="codebook/industrial-reference", dataset_ref="dataset/industrial", max_splits=1), grpc.StatusCode.INVALID_ARGUMENT, "max_splits"),
        (rebalancer_pb2.RebalanceRequest(codebook_ref="codebook/industrial-reference", dataset_ref="dataset/industrial", split_ratio=1.5), grpc.StatusCode.INVALID_ARGUMENT, "split_ratio"),
        (rebalancer_pb2.RebalanceRequest(codebook_ref="codebook/industrial-reference"), grpc.StatusCode.INVALID_ARGUMENT, "dataset_ref is required"),
    ],
)
def test_bad_requests(served, req, code, fragment):
    with pytest.raises(grpc.RpcError) as e:
        served[0].Rebalance(req, timeout=60)
    assert e.value.code() == code and fragment in e.value.details()
