"""The retrieval gRPC service on a loopback port: answers, statuses, health, keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from components.retrieval import UserRetriever
from components.retrieval.service import RetrievalService, registration
from components.serving.grpc_server import BackgroundServer
from components.serving.pb.genrec.v1 import retrieval_pb2, retrieval_pb2_grpc


@pytest.fixture(scope="module")
def stub(industrial):
    rng = np.random.default_rng(0)
    item_vectors = rng.normal(size=(industrial.n_items, 16)).astype(np.float32)
    retriever = UserRetriever.build(industrial, item_vectors)
    service = RetrievalService(retriever, "retrieval-index/industrial@test", max_history=50)
    with BackgroundServer([registration(service)]) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield retrieval_pb2_grpc.RetrievalStub(channel), channel, industrial
        channel.close()


def test_similar_users_by_user_and_history(stub):
    s, _, ds = stub
    user = next(ds.user_ids[u] for u, h in enumerate(ds.train_sequences()) if h)
    r = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(user_id=user, z=20, v=7), timeout=10)
    assert len(r.users) == 7 and user not in {n.user_id for n in r.users}
    assert {n.path for n in r.users} <= {"bm25", "cf", "both"}
    assert r.index_ref == "retrieval-index/industrial@test"
    r = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=ds.item_ids[:3])), timeout=10)
    assert len(r.users) == 10  # server default v


@pytest.mark.parametrize(
    "req, fragment",
    [
        (retrieval_pb2.SimilarUsersRequest(), "give user_id or history"),
        (retrieval_pb2.SimilarUsersRequest(user_id="nobody"), "unknown user"),
        (retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=["no-such-item"])), "unknown item ids"),
        (retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=[])), "empty history"),
        (retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=["0"] * 51)), "at most 50"),
        (retrieval_pb2.SimilarUsersRequest(user_id="x", z=-3), "≥ 1"),
        (retrieval_pb2.SimilarUsersRequest(user_id="x", z=10**6), "at most"),
    ],
)
def test_bad_requests_are_invalid_argument(stub, req, fragment):
    s, _, _ = stub
    with pytest.raises(grpc.RpcError) as e:
        s.SimilarUsers(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in e.value.details()


def test_health_and_still_serving_after_errors(stub):
    s, channel, ds = stub
    h = health_pb2_grpc.HealthStub(channel)
    assert h.Check(health_pb2.HealthCheckRequest(service="genrec.v1.Retrieval"), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    r = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=ds.item_ids[5:8]), v=3), timeout=10)
    assert len(r.users) == 3


def test_history_query_excludes_the_given_user(stub):
    """Issue #15 (4): the generator service queries by the request's history and excludes its user."""
    s, _, ds = stub
    train = ds.train_sequences()
    u = next(u for u, h in enumerate(train) if len(h) >= 3)
    hist = retrieval_pb2.History(item_ids=[ds.item_ids[i] for i in train[u]])
    plain = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(history=hist, v=5), timeout=10)
    assert ds.user_ids[u] in {n.user_id for n in plain.users}  # its own indexed history matches best
    r = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(history=hist, v=5, exclude_user=ds.user_ids[u]), timeout=10)
    assert len(r.users) == 5 and ds.user_ids[u] not in {n.user_id for n in r.users}
    r = s.SimilarUsers(retrieval_pb2.SimilarUsersRequest(history=hist, v=5, exclude_user="a-new-user"), timeout=10)
    assert [n.user_id for n in r.users] == [n.user_id for n in plain.users]  # an unknown user: nothing to drop
