"""The generator gRPC service: ``Recommend`` / ``RecommendBatch`` over a generator checkpoint.

- Bounds from params (``serving:``): history length, k, beam, batch size → INVALID_ARGUMENT.
- Unknown item ids → INVALID_ARGUMENT listing them (or dropped and reported with
  ``skip_unknown``); empty histories → popularity fallback, ``fallback_used``.
- **Live new items**: when a request names unknown items and a tokenizer service is configured,
  the service asks it for its current codebook ref; if that changed (``AddItems`` wrote a new
  codebook), the new codebook is loaded from the shared registry, checked to extend the model's
  (same level sizes, every old item keeps its SID) and swapped in atomically — a new trie, the
  same model, no restart — and the request is retried. :meth:`refresh` can also be called on a
  timer.
- **Retrieval**: with ``heads.use_retrieval`` and a retrieval service configured, similar users
  are fetched over gRPC (deadline + retries) and handed to the model's retrieval-aware head; if
  the service is down the answer comes without augmentation and ``retrieval_unavailable`` is set.
  The service is asked for the checkpoint's ``z`` (not its own default) and for all ``2z``
  candidates of both paths; the head keeps its checkpoint's ``v`` of them by its ID-view re-rank
  (:meth:`GenPluginHead.select_neighbors`), the same selection as in training and ranking.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.generator.errors import GeneratorError, UnknownItemsError
from components.generator.recommend import Recommender
from components.generator.vocab import SIDVocab
from components.registry import ArtifactIncompatible, Registry
from components.serving.clients import RetrievalClient, TokenizerClient
from components.serving.grpc_server import MicroBatcher, Unavailable, status_for, unary
from components.serving.pb.genrec.v1 import generator_pb2, generator_pb2_grpc
from components.tokenizer.codebook import Codebook

log = logging.getLogger("genrec.generator.service")
SERVICE_NAME = "genrec.v1.Generator"


@dataclass(frozen=True)
class Limits:
    max_history: int = 200
    max_k: int = 100
    max_beam: int = 200
    max_batch: int = 256
    default_beam: int = 20
    batch_wait_ms: float = 5.0  # merge concurrent Recommend calls for this long (0 = decode each call alone)


def rebind_codebook(rec: Recommender, cb: Codebook) -> Recommender:
    """A Recommender over the same model with ``cb``, which must extend the model's codebook."""
    old = rec.codebook
    n = old.n_items
    if list(cb.sizes) != list(old.sizes):
        raise ArtifactIncompatible(f"new codebook level sizes {cb.sizes} differ from the model's {old.sizes}")
    if cb.n_items < n or cb.item_ids[:n] != old.item_ids or not np.array_equal(cb.sids[:n], old.sids):
        raise ArtifactIncompatible("new codebook does not keep every existing item's SID")
    # The model's vocabulary maps items to tokens for encoding histories: extend it in place. Token
    # ids are unchanged (same sizes), and old items keep their rows, so concurrent readers of the
    # previous Recommender see a superset of what they knew.
    rec.model.backbone.vocab = SIDVocab.from_codebook(cb)
    share = np.exp(rec.pop_logshare.astype(np.float64))
    pop = np.concatenate([share, np.zeros(cb.n_items - n)])
    return Recommender(rec.model, cb, pop, batch_size=rec.batch_size, device=rec.device)


class GeneratorService(generator_pb2_grpc.GeneratorServicer):
    def __init__(
        self,
        recommender: Recommender,
        model_ref: str,
        registry: Registry | None = None,
        limits: Limits = Limits(),
        tokenizer: TokenizerClient | None = None,
        retrieval: RetrievalClient | None = None,
        codebook_ref: str | None = None,
    ):
        self._rec = recommender
        self.model_ref = model_ref
        self.registry = registry
        self.limits = limits
        self.tokenizer = tokenizer
        self.retrieval = retrieval
        self.codebook_ref = codebook_ref
        self._refresh_lock = threading.Lock()
        self._head_lock = threading.Lock()  # a retrieval head's representation cache is not thread-safe
        self._batcher = MicroBatcher(self._recommend_each, max_batch=limits.max_batch, max_wait_s=limits.batch_wait_ms / 1000)

    @property
    def recommender(self) -> Recommender:
        return self._rec

    # ---- live codebook ------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Swap in the tokenizer's current codebook if it changed; returns whether it did."""
        if self.tokenizer is None or self.registry is None:
            return False
        ref = self.tokenizer.current_codebook_ref()
        with self._refresh_lock:
            if ref == self.codebook_ref:
                return False
            cb = Codebook.from_artifact(self.registry.load(ref))
            self._rec = rebind_codebook(self._rec, cb)  # one reference assignment: atomic for readers
            self.codebook_ref = ref
            log.info("codebook swapped to %s (%d items)", ref, cb.n_items)
            return True

    # ---- requests -----------------------------------------------------------------------------
    def _check(self, req: generator_pb2.RecommendRequest) -> tuple[int, int]:
        lim = self.limits
        k = req.k or 10
        beam = req.beam or max(lim.default_beam, k)
        if not 1 <= k <= lim.max_k:
            raise GeneratorError(f"k={k}: must be in [1, {lim.max_k}]")
        if not 1 <= beam <= lim.max_beam:
            raise GeneratorError(f"beam={beam}: must be in [1, {lim.max_beam}]")
        if beam < k:
            raise GeneratorError(f"beam ({beam}) must be >= k ({k})")
        if len(req.history) > lim.max_history:
            raise GeneratorError(f"history of {len(req.history)} items: at most {lim.max_history}")
        return k, beam

    def model_uses_retrieval(self) -> bool:
        return self._rec.retrieval_head() is not None

    def _neighbors(self, req) -> tuple[Any, bool, bool]:
        """(neighbours or None, retrieval_used, retrieval_unavailable). Only a model with a
        retrieval-aware head (GenPlugin) asks the retrieval service."""
        head = self._rec.retrieval_head()
        if not req.heads.use_retrieval or head is None:
            return None, False, False
        if self.retrieval is None:
            return None, False, True
        if not req.history and not req.user_id:
            return None, False, False  # nothing to query with (the answer is the popularity fallback)
        try:  # the checkpoint's z; all ≤ 2z candidates of both paths come back and the head keeps its v by
            # its own ID-view re-rank, as in training and ranking. The request's history is the query and
            # its user is excluded (user only: the user's indexed history).
            kw = {"v": 2 * head.p.z, "z": head.p.z}
            if req.history:
                users = self.retrieval.similar_users(history=list(req.history), exclude_user=req.user_id or None, **kw)
            else:
                users = self.retrieval.similar_users(user_id=req.user_id or None, **kw)
        except Unavailable as e:
            log.warning("retrieval unavailable, answering without augmentation: %s", e)
            return None, False, True
        index = self._rec.index
        query = [index[x] for x in req.history if x in index]
        if not query:  # no history to re-rank against (a user-only request decodes the popularity fallback)
            return users[: head.p.v], True, False
        cands = [([index[x] for x in n.item_ids if x in index], n.path) for n in users]
        with self._head_lock:  # the head's representation cache is not thread-safe
            keep = head.select_neighbors(query, cands, model_ref=self.model_ref)
        return [users[k] for k in keep], True, False

    def _recommend_group(self, reqs: list[generator_pb2.RecommendRequest]) -> list[generator_pb2.RecommendResponse]:
        checked = [self._check(r) for r in reqs]
        ks = {c for c in checked}
        out: list[generator_pb2.RecommendResponse | None] = [None] * len(reqs)
        for k, beam in ks:  # one batched decode per distinct (k, beam)
            idx = [i for i, c in enumerate(checked) if c == (k, beam)]
            for start in range(0, len(idx), self.limits.max_batch):
                part = idx[start : start + self.limits.max_batch]
                aug = [self._neighbors(reqs[i]) for i in part]
                histories = [list(reqs[i].history) for i in part]
                skip = any(reqs[i].skip_unknown for i in part)
                nbrs = None
                if any(a[1] or a[2] for a in aug):  # retrieval asked for: its neighbours, or none (flagged)
                    nbrs = [[list(n.item_ids) for n in (a[0] or [])] for a in aug]
                res = self._decode(histories, k, beam, skip, [reqs[i].skip_unknown for i in part], nbrs,
                                   users=[reqs[i].user_id or None for i in part])
                for j, i in enumerate(part):
                    out[i] = generator_pb2.RecommendResponse(
                        item_ids=res.item_ids[j],
                        scores=res.scores[j].tolist(),
                        fallback_used=bool(res.fallback[j]),
                        retrieval_used=aug[j][1],
                        retrieval_unavailable=aug[j][2],
                        skipped_items=res.skipped[j] if res.skipped else [],
                        model_ref=self.model_ref,
                    )
        return out  # type: ignore[return-value]

    def _decode(self, histories, k, beam, skip_any, skip_flags, neighbors=None, users=None):
        kw = {"k": k, "beam": beam, "skip_unknown": skip_any, "neighbors": neighbors, "model_ref": self.model_ref}
        if users is not None and any(users) and self.model_uses_retrieval():
            kw["users"] = users  # the head's own retrieval excludes the requesting user
        try:
            res = self._call(histories, kw)
        except UnknownItemsError:
            if not self.refresh():  # maybe new items were just added to the tokenizer
                raise
            res = self._call(histories, kw)
        if skip_any and not all(skip_flags):  # mixed batch: requests without skip_unknown must fail on unknown ids
            bad = [s for s, f in zip(res.skipped, skip_flags) if s and not f]
            if bad:
                raise UnknownItemsError([x for b in bad for x in b])
        return res

    def _call(self, histories, kw):
        if self.model_uses_retrieval():
            with self._head_lock:
                return self._rec.recommend(histories, **kw)
        return self._rec.recommend(histories, **kw)

    def _recommend_each(self, reqs: list) -> list:
        """One batched decode for many callers; a failing request gets its own exception only."""
        try:
            return self._recommend_group(reqs)
        except Exception:  # noqa: BLE001 (isolate the bad request(s): answer one by one)
            if len(reqs) == 1:
                raise
            out = []
            for r in reqs:
                try:
                    out.append(self._recommend_group([r])[0])
                except Exception as e:  # noqa: BLE001
                    out.append(e)
            return out

    async def Recommend(self, request, context):
        """Validated at once; then merged with concurrent calls (``batch_wait_ms``) into one decode."""
        try:
            self._check(request)
            if self.limits.batch_wait_ms <= 0:
                call = asyncio.to_thread(self._recommend_group, [request])
                remaining = context.time_remaining()
                out = await (asyncio.wait_for(call, remaining) if remaining is not None else call)
                return out[0]
            remaining = context.time_remaining()
            call = self._batcher.submit(request)
            return await (asyncio.wait_for(call, remaining) if remaining is not None else call)
        except Exception as e:  # noqa: BLE001 (every failure becomes a status)
            await context.abort(status_for(e), (str(e).strip() or type(e).__name__)[:2000])

    @unary
    def RecommendBatch(self, request):
        if not request.requests:
            raise GeneratorError("empty batch")
        if len(request.requests) > self.limits.max_batch:
            raise GeneratorError(f"batch of {len(request.requests)}: at most {self.limits.max_batch}")
        return generator_pb2.RecommendBatchResponse(responses=self._recommend_group(list(request.requests)))


def registration(service: GeneratorService):
    return (generator_pb2_grpc.add_GeneratorServicer_to_server, service, SERVICE_NAME)
