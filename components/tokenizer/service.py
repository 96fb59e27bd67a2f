"""The tokenizer gRPC service: Tokenize, Detokenize, AddItems, CodebookStats.

It serves one *current* codebook; ``AddItems`` writes a new codebook artifact (parent = the
current one; named ``<name>-live`` so that the offline pipeline's ``codebook/<name>@latest`` still
matches its dataset; params ``extends_codebook``/``dataset`` name what it extends) holding the new items and swaps it in atomically (a lock guards the swap; readers
take a consistent snapshot). Requests naming another codebook ref are answered from that
artifact (loaded from the registry, so an unknown ref is NOT_FOUND); a ref that resolves to the
current codebook (``codebook/<name>@latest``, a version prefix) is the current one.

``AddItems`` is idempotent: items already in the codebook with the same text (same sha256 of their
fields) get their SIDs back without a new artifact, so a retry after a lost answer succeeds; an id
already taken by other text (or by the catalog the codebook was built on) is FAILED_PRECONDITION.
An optional ``request_id`` (stored in the new artifact's params) makes a replay return exactly the
commit it made. The request's deadline is checked right before the commit: a call whose client
has given up writes nothing (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from components.registry import ArtifactIncompatible, ArtifactNotFound, Registry, parse_ref
from components.serving.grpc_server import DeadlineExceeded, unary
from components.serving.pb.genrec.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TextEncoder, TokenizerError
from components.tokenizer.online import TEXT_HASHES, embed_records, extend_codebook, text_hash
from components.tokenizer.tokenize import new_item_support

log = logging.getLogger(__name__)
SERVICE_NAME = "genrec.v1.Tokenizer"
LIVE_SUFFIX = "-live"  # AddItems writes codebook/<name>-live, never moving codebook/<name>@latest


class ItemConflict(ArtifactIncompatible):
    """Item ids already in the codebook with other text (FAILED_PRECONDITION)."""


class _Snapshot:
    def __init__(self, ref: str, cb: Codebook):
        self.ref, self.cb = ref, cb
        self.index = {iid: i for i, iid in enumerate(cb.item_ids)}
        self.lookup = cb.lookup()


def live_head(registry: Registry, codebook_ref: str) -> str:
    """The codebook a (re)started tokenizer serves for ``codebook_ref``: the newest AddItems version
    (``<name>-live@latest``) when it extends exactly this codebook version, else the codebook itself
    (fully resolved). So a restart keeps every item added live, and a rebuilt offline codebook (a
    new version) starts a new live lineage instead of resuming one that extends an older catalog."""
    base = registry.load(codebook_ref, verify=False)
    name = base.ref.split("@")[0].split("/", 1)[1]
    if name.endswith(LIVE_SUFFIX):
        return base.ref
    try:
        live = registry.load(f"codebook/{name}{LIVE_SUFFIX}@latest", verify=False)
    except ArtifactNotFound:
        return base.ref
    if live.params.get("extends_codebook") == base.ref:
        log.info("resuming the live catalog %s (extends %s)", live.ref, base.ref)
        return live.ref
    log.warning("codebook/%s%s@latest extends %s, not %s: serving %s without those live items",
                name, LIVE_SUFFIX, live.params.get("extends_codebook"), base.ref, base.ref)
    return base.ref


class TokenizerService(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, registry: Registry, codebook_ref: str, params: Any, seed: int = 0, encoder: TextEncoder | None = None, max_items: int = 1000,
                 resume_live: bool = True):
        """``resume_live``: serve the live head of ``codebook_ref`` (:func:`live_head`), so that items
        added before a restart are still there."""
        self.registry, self.params, self.seed, self.encoder = registry, params, seed, encoder
        self.max_items = max_items
        art = registry.load(live_head(registry, codebook_ref) if resume_live else codebook_ref)
        self._current = _Snapshot(art.ref, Codebook.from_artifact(art))
        self._lock = threading.Lock()
        self._requests = self._committed_requests(art.ref)  # request_id → (codebook ref, item ids)

    def _committed_requests(self, ref: str) -> dict[str, tuple[str, list[str]]]:
        """The request ids of the AddItems commits in the current codebook's online lineage."""
        out: dict[str, tuple[str, list[str]]] = {}
        art = self.registry.load(ref, verify=False)
        while "online_items" in art.params:
            rid = art.params.get("request_id")
            if rid and rid not in out:
                out[rid] = (art.ref, list(art.params["online_items"]))
            if not art.manifest.parents:
                break
            art = self.registry.load(art.manifest.parents[0], verify=False)
        return out

    def _resolve(self, ref: str) -> str:
        """``kind/name@<full version>`` of a ref (``@latest`` or a version prefix), without loading it."""
        r = parse_ref(ref)
        return f"{r.kind}/{r.name}@{self.registry.resolve(r).name}"

    @property
    def current_ref(self) -> str:
        return self._current.ref

    def _snapshot(self, ref: str) -> _Snapshot:
        cur = self._current
        if not ref or ref == cur.ref or self._resolve(ref) == cur.ref:
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

    async def AddItems(self, request, context):
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return await self._add_items_call((request, deadline), context)

    @unary
    def _add_items_call(self, args):
        return self._add_items(*args)

    def _answer(self, ref: str, snap: _Snapshot, ids: list[str]):
        return tokenizer_pb2.AddItemsResponse(
            codebook_ref=ref, sids=[common_pb2.SemanticId(item_id=i, tokens=snap.cb.sids[snap.index[i]].tolist()) for i in ids]
        )

    @staticmethod
    def _check_deadline(deadline: float | None, what: str) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"the deadline passed {what}: nothing committed")

    def _add_items(self, request, deadline: float | None = None):
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
        if not records:
            raise TokenizerError("no items given")
        hashes = {i: text_hash(f) for i, f in records.items()}
        rid = request.request_id.strip()
        with self._lock:  # one writer at a time; readers keep using the old snapshot meanwhile
            cur = self._current
            known = cur.cb.stats.get(TEXT_HASHES, {})
            present = [i for i in records if i in cur.index]
            catalog = [i for i in present if i not in known]
            changed = [i for i in present if i in known and known[i] != hashes[i]]
            if catalog or changed:
                why = []
                if changed:
                    why.append(f"added earlier with different text: {changed[:10]}")
                if catalog:
                    why.append(f"from the catalog the codebook was built on: {catalog[:10]}")
                raise ItemConflict(f"items already in the codebook {cur.ref}, " + "; ".join(why))
            if rid and rid in self._requests:  # a replay: that commit's answer
                ref, _ = self._requests[rid]
                other = [i for i in records if i not in cur.index]
                if other:
                    raise ItemConflict(f"request_id {rid!r} was committed as {ref} with other items (not in it: {other[:10]})")
                return self._answer(ref, cur, list(records))
            new = [i for i in records if i not in cur.index]
            if not new:  # a retry of items already added with the same text: same SIDs, nothing written
                return self._answer(cur.ref, cur, list(records))
            if request.codebook_ref:
                resolved = self._resolve(request.codebook_ref)
                if resolved != cur.ref:
                    named = request.codebook_ref if resolved == request.codebook_ref else f"{request.codebook_ref} (= {resolved})"
                    raise TokenizerError(f"AddItems extends the current codebook {cur.ref}; the request names {named}")
            why = new_item_support(cur.cb)  # decided from the codebook alone: refuse before loading an encoder
            if why:
                raise ArtifactIncompatible(why)
            self._check_deadline(deadline, "before the items were embedded")
            if self.encoder is None and self.params.encoder != "tfidf":
                from components.tokenizer.encoders import make_encoder

                self.encoder = make_encoder(self.params, seed=self.seed, progress=False)  # loaded once, reused
            emb = embed_records(cur.cb, {i: records[i] for i in new}, self.params, self.seed, self.encoder)
            new_cb, _ = extend_codebook(cur.cb, new, emb, text_hashes=hashes)
            # live versions go under <name>-live so the pipeline's codebook/<name>@latest keeps
            # matching its dataset; the params record the offline codebook and dataset they extend
            name = cur.ref.split("@")[0].split("/", 1)[1]
            live = name if name.endswith(LIVE_SUFFIX) else name + LIVE_SUFFIX
            extends = self.registry.load(cur.ref, verify=False).params.get("extends_codebook", cur.ref)
            params = {"online_items": sorted(new), "extends_codebook": extends, "dataset": cur.cb.dataset_ref,
                      **({"request_id": rid} if rid else {})}
            self._check_deadline(deadline, "before the new codebook was written")  # the client gave up: do not commit
            art = new_cb.save(self.registry, live, parents=[cur.ref], params=params)
            self._current = snap = _Snapshot(art.ref, new_cb)
            if rid:
                self._requests[rid] = (art.ref, sorted(new))
        return self._answer(art.ref, snap, list(records))

    @unary
    def CodebookStats(self, request):
        snap = self._snapshot(request.codebook_ref)
        stats = {**{k: v for k, v in snap.cb.stats.items() if k != TEXT_HASHES}, "n_items": snap.cb.n_items, "sizes": snap.cb.sizes, "collisions": snap.cb.n_collisions()}
        return tokenizer_pb2.CodebookStatsResponse(codebook_ref=snap.ref, stats=common_pb2.Stats(json=json.dumps(stats, default=str)))


def registration(service: TokenizerService):
    return (tokenizer_pb2_grpc.add_TokenizerServicer_to_server, service, SERVICE_NAME)
