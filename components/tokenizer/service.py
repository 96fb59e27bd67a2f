"""The tokenizer gRPC service: Tokenize, Detokenize, AddItems, CodebookStats.

It serves one *current* codebook; ``AddItems`` writes a new codebook artifact (parent = the
current one) holding the new items and swaps it in atomically (a lock guards the swap; readers
take a consistent snapshot). Requests naming another codebook ref are answered from that
artifact (loaded from the registry, so an unknown ref is NOT_FOUND).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from components.registry import ArtifactIncompatible, Registry
from components.serving.grpc_server import unary
from components.serving.pb.genrec.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TextEncoder, TokenizerError
from components.tokenizer.online import embed_records, extend_codebook
from components.tokenizer.tokenize import new_item_support

SERVICE_NAME = "genrec.v1.Tokenizer"


class _Snapshot:
    def __init__(self, ref: str, cb: Codebook):
        self.ref, self.cb = ref, cb
        self.index = {iid: i for i, iid in enumerate(cb.item_ids)}
        self.lookup = cb.lookup()


class TokenizerService(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, registry: Registry, codebook_ref: str, params: Any, seed: int = 0, encoder: TextEncoder | None = None, max_items: int = 1000):
        self.registry, self.params, self.seed, self.encoder = registry, params, seed, encoder
        self.max_items = max_items
        art = registry.load(codebook_ref)
        self._current = _Snapshot(art.ref, Codebook.from_artifact(art))
        self._lock = threading.Lock()

    @property
    def current_ref(self) -> str:
        return self._current.ref

    def _snapshot(self, ref: str) -> _Snapshot:
        cur = self._current
        if not ref or ref == cur.ref:
            return cur
        art = self.registry.load(ref)
        if art.kind != "codebook":
            raise TokenizerError(f"{art.ref} is not a codebook")
        return _Snapshot(art.ref, Codebook.from_artifact(art))

    def _bound(self, n: int) -> None:
        if n > self.max_items:
            raise TokenizerError(f"{n} items in one request: at most {self.max_items}")

    @unary
    def Tokenize(self, request):
        snap = self._snapshot(request.codebook_ref)
        self._bound(len(request.item_ids))
        unknown = [i for i in request.item_ids if i not in snap.index]
        if unknown:
            raise TokenizerError(f"unknown item ids: {unknown[:20]}")
        sids = [common_pb2.SemanticId(item_id=i, tokens=snap.cb.sids[snap.index[i]].tolist()) for i in request.item_ids]
        return tokenizer_pb2.TokenizeResponse(codebook_ref=snap.ref, sids=sids)

    @unary
    def Detokenize(self, request):
        snap = self._snapshot(request.codebook_ref)
        self._bound(len(request.sids))
        ids, found = [], []
        for s in request.sids:
            i = snap.lookup.get(tuple(int(t) for t in s.tokens))
            ids.append(snap.cb.item_ids[i] if i is not None else "")
            found.append(i is not None)
        return tokenizer_pb2.DetokenizeResponse(codebook_ref=snap.ref, item_ids=ids, found=found)

    @unary
    def AddItems(self, request):
        self._bound(len(request.items))
        records = {}
        for it in request.items:
            if not it.item_id:
                raise TokenizerError("an item without item_id")
            if it.item_id in records:
                raise TokenizerError(f"item {it.item_id!r} given twice")
            if not any(v.strip() for v in it.fields.values()):
                raise TokenizerError(f"item {it.item_id!r} has no text")
            records[it.item_id] = dict(it.fields)
        with self._lock:  # one writer at a time; readers keep using the old snapshot meanwhile
            snap = self._snapshot(request.codebook_ref)
            if snap is not self._current:
                raise TokenizerError(f"AddItems extends the current codebook {self._current.ref}, not {snap.ref}")
            why = new_item_support(snap.cb)  # decided from the codebook alone: refuse before loading an encoder
            if why:
                raise ArtifactIncompatible(why)
            if self.encoder is None and self.params.encoder != "tfidf":
                from components.tokenizer.encoders import make_encoder

                self.encoder = make_encoder(self.params, seed=self.seed, progress=False)  # loaded once, reused
            emb = embed_records(snap.cb, records, self.params, self.seed, self.encoder)
            new_cb, sids = extend_codebook(snap.cb, list(records), emb)
            name = snap.ref.split("@")[0].split("/", 1)[1]
            art = new_cb.save(self.registry, name, parents=[snap.ref], params={"online_items": sorted(records)})
            self._current = _Snapshot(art.ref, new_cb)
        return tokenizer_pb2.AddItemsResponse(
            codebook_ref=art.ref, sids=[common_pb2.SemanticId(item_id=i, tokens=row.tolist()) for i, row in zip(records, sids)]
        )

    @unary
    def CodebookStats(self, request):
        snap = self._snapshot(request.codebook_ref)
        stats = {**snap.cb.stats, "n_items": snap.cb.n_items, "sizes": snap.cb.sizes, "collisions": snap.cb.n_collisions()}
        return tokenizer_pb2.CodebookStatsResponse(codebook_ref=snap.ref, stats=common_pb2.Stats(json=json.dumps(stats, default=str)))


def registration(service: TokenizerService):
    return (tokenizer_pb2_grpc.add_TokenizerServicer_to_server, service, SERVICE_NAME)
