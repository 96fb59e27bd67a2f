"""Service-to-service gRPC clients with deadlines and bounded retries.

Only transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried, with
exponential backoff; after the last try the caller gets :class:`Unavailable` and decides how to
degrade (the generator answers without retrieval augmentation and flags it).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, TypeVar

import grpc

from components.serving.grpc_server import Unavailable
from components.serving.pb.genrec.v1 import retrieval_pb2, retrieval_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from components.serving.security import Security

log = logging.getLogger("genrec.clients")
T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class _Client:
    def __init__(self, address: str, timeout_s: float = 2.0, retries: int = 2, backoff_s: float = 0.05, security: Security | None = None):
        """``security``: TLS trust (``tls_ca``, mTLS client cert/key) and the bearer token sent as
        ``authorization: Bearer <token>`` on every call; default plaintext, no token."""
        if not address:
            raise ValueError("empty service address")
        self.address, self.timeout_s, self.retries, self.backoff_s = address, timeout_s, retries, backoff_s
        self.security = security or Security()
        self.channel = self.security.channel(address)
        self._metadata = self.security.metadata() or None

    def _call(self, fn: Callable[..., T], request, what: str) -> T:
        last: grpc.RpcError | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
                last = e
                if attempt < self.retries:
                    time.sleep(self.backoff_s * (2**attempt))
        raise Unavailable(f"{what} at {self.address} unavailable after {self.retries + 1} tries: {last.code().name if last else '?'}")

    def close(self) -> None:
        self.channel.close()


class RetrievalClient(_Client):
    def __init__(self, address: str, **kw):
        super().__init__(address, **kw)
        self.stub = retrieval_pb2_grpc.RetrievalStub(self.channel)

    def similar_users(self, history: list[str] | None = None, user_id: str | None = None, v: int = 0, z: int = 0,
                      exclude_user: str | None = None) -> list[retrieval_pb2.Neighbor]:
        """By ``user_id`` (its indexed history, itself excluded) or by ``history`` (``exclude_user``:
        the history's owner, dropped from the answer)."""
        if user_id:
            req = retrieval_pb2.SimilarUsersRequest(user_id=user_id, v=v, z=z)
        else:
            req = retrieval_pb2.SimilarUsersRequest(history=retrieval_pb2.History(item_ids=history or []), v=v, z=z,
                                                    exclude_user=exclude_user or "")
        return list(self._call(self.stub.SimilarUsers, req, "retrieval").users)


class TokenizerClient(_Client):
    def __init__(self, address: str, **kw):
        super().__init__(address, **kw)
        self.stub = tokenizer_pb2_grpc.TokenizerStub(self.channel)

    def current_codebook_ref(self) -> str:
        return self._call(self.stub.CodebookStats, tokenizer_pb2.CodebookStatsRequest(), "tokenizer").codebook_ref

    def add_items(self, items: dict[str, dict[str, str]], codebook_ref: str = "", request_id: str | None = None) -> tokenizer_pb2.AddItemsResponse:
        """Add items (id → text fields). Every try sends the same ``request_id`` (a fresh one unless
        given), so a retry after a lost answer gets the first commit's answer, not an error."""
        req = tokenizer_pb2.AddItemsRequest(
            codebook_ref=codebook_ref,
            items=[tokenizer_pb2.NewItem(item_id=i, fields=f) for i, f in items.items()],
            request_id=request_id or uuid.uuid4().hex,
        )
        return self._call(self.stub.AddItems, req, "tokenizer")
