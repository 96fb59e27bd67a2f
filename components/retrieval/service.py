"""The retrieval gRPC service: ``SimilarUsers`` over a ``retrieval-index`` artifact."""

from __future__ import annotations

from components.retrieval.retriever import RetrievalError, UserRetriever
from components.serving.grpc_server import unary
from components.serving.pb.genrec.v1 import retrieval_pb2, retrieval_pb2_grpc

SERVICE_NAME = "genrec.v1.Retrieval"


class RetrievalService(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, retriever: UserRetriever, index_ref: str, default_z: int = 20, default_v: int = 10, max_history: int = 200, max_z: int = 1000):
        self.retriever = retriever
        self.index_ref = index_ref
        self.default_z, self.default_v = default_z, default_v
        self.max_history, self.max_z = max_history, max_z

    @unary
    def SimilarUsers(self, request: retrieval_pb2.SimilarUsersRequest) -> retrieval_pb2.SimilarUsersResponse:
        which = request.WhichOneof("query")
        if which is None:
            raise RetrievalError("give user_id or history")
        z = request.z or self.default_z
        v = request.v or self.default_v
        if z > self.max_z or v > self.max_z:
            raise RetrievalError(f"z={z}, v={v}: at most {self.max_z}")
        if v > 0:
            v = min(v, max(1, self.retriever.n_users - 1))  # v only caps the answer (a caller may ask for all 2z candidates)
        exclude = None
        if request.exclude_item:
            exclude = self.retriever.items_to_indices([request.exclude_item])[0]
        if which == "user_id":
            nbrs = self.retriever.similar_users(user=request.user_id, z=z, v=v, exclude_item=exclude)
        else:
            items = list(request.history.item_ids)
            if len(items) > self.max_history:
                raise RetrievalError(f"history of {len(items)} items: at most {self.max_history}")
            ex_user = request.exclude_user if request.exclude_user in self.retriever.user_index else None  # a new user: nothing to drop
            nbrs = self.retriever.similar_users(history=self.retriever.items_to_indices(items), z=z, v=v, exclude_item=exclude,
                                                exclude_user=ex_user)
        return retrieval_pb2.SimilarUsersResponse(
            users=[
                retrieval_pb2.Neighbor(
                    user_id=self.retriever.user_ids[n.user], score=n.score, path=n.path,
                    item_ids=[self.retriever.item_ids[i] for i in self.retriever.train_histories[n.user]],
                )
                for n in nbrs
            ],
            index_ref=self.index_ref,
        )


def registration(service: RetrievalService):
    return (retrieval_pb2_grpc.add_RetrievalServicer_to_server, service, SERVICE_NAME)
