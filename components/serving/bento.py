"""BentoML bundle: GPU inference for the generator (falls back to CPU), with adaptive batching.

The model comes from the BentoML model store (``genrec-generator`` by default; env
``GENREC_BENTO_MODEL`` picks another tag), filled from the artifacts registry by
``genrec bento import REF``: the generator checkpoint and its codebook are copied, with their
manifests, into the model's directory, which is then opened as a (verified, sha256-checked)
registry — the same loading path as every other front door, and no pickle.

    genrec bento import generator/industrial-tiger@latest
    bentoml serve components.serving.bento:GenRecService --port 3000

``POST /recommend`` takes ``{"requests": [{"history": [...], "k": 10}, ...]}``; BentoML merges
concurrent calls into batches (``max_batch_size``, ``max_latency_ms``) and every request gets its
own answer: a bad request (unknown ids, k out of range) gets an ``error`` and does not fail the
others in its batch.

With ``GENREC_AUTH_TOKEN`` set (in the environment of ``bentoml serve``), every HTTP route but the
probes (``/livez``, ``/readyz``, ``/healthz``, ``/metrics``) needs ``Authorization: Bearer <token>``:
missing → 401, wrong → 403 (the same token rule as the gRPC services). TLS: ``bentoml serve
--ssl-certfile ... --ssl-keyfile ...`` or a TLS-terminating proxy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import bentoml
from pydantic import BaseModel, Field

from components.registry import Registry, parse_ref
from components.serving.security import bearer, check_token

log = logging.getLogger("genrec.bento")
MODEL_NAME = "genrec-generator"
MODEL_TAG = os.environ.get("GENREC_BENTO_MODEL", f"{MODEL_NAME}:latest")
MAX_K = int(os.environ.get("GENREC_BENTO_MAX_K", "100"))
MAX_HISTORY = int(os.environ.get("GENREC_BENTO_MAX_HISTORY", "200"))
AUTH_TOKEN_ENV = "GENREC_AUTH_TOKEN"
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


class BearerTokenMiddleware:
    """ASGI middleware: HTTP requests (but ``open_paths``) need ``Authorization: Bearer <token>``;
    missing → 401, wrong → 403, compared in constant time; the app is not reached."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...] = OPEN_PATHS):
        if not token:
            raise ValueError("empty auth token")
        self.app, self.token, self.open_paths = app, token, tuple(open_paths)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("path", "").rstrip("/") in self.open_paths:
            return await self.app(scope, receive, send)
        got = bearer([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])])
        code = check_token(self.token, got)
        if code is None:
            return await self.app(scope, receive, send)
        status, msg = (401, "missing bearer token (Authorization: Bearer <token>)") if code.name == "UNAUTHENTICATED" else (403, "invalid bearer token")
        body = json.dumps({"error": msg}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"www-authenticate", b'Bearer realm="genrec"')]})
        await send({"type": "http.response.body", "body": body})


def install_auth(service_cls, token: str | None = None) -> bool:
    """Add :class:`BearerTokenMiddleware` to a BentoML service when a token is given or in
    ``GENREC_AUTH_TOKEN``; True when installed."""
    token = (token or os.environ.get(AUTH_TOKEN_ENV, "")).strip()
    if not token:
        return False
    service_cls.add_asgi_middleware(BearerTokenMiddleware, token=token)
    return True


class RecommendRequest(BaseModel):
    history: list[str] = Field(default_factory=list, description="item ids, oldest first")
    k: int = Field(10, description="items to return")
    beam: int = Field(0, description="beam width; 0 = max(20, k)")
    skip_unknown: bool = Field(False, description="drop unknown item ids instead of failing")
    user_id: str | None = Field(None, description="the requesting user: excluded from a retrieval head's neighbours (GenPlugin), as in training")


class RecommendResponse(BaseModel):
    item_ids: list[str] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    fallback_used: bool = False
    skipped_items: list[str] = Field(default_factory=list)
    model_ref: str = ""
    error: str | None = None


def import_to_bentoml(registry: Registry, ref: str, name: str = MODEL_NAME) -> bentoml.Model:
    """Copy ``generator/...`` and its codebook into a new BentoML model (a mini registry)."""
    gen = registry.load(ref)
    if gen.kind != "generator":
        raise ValueError(f"{gen.ref} is a {gen.kind!r} artifact, not a generator checkpoint")
    codebook = registry.load(gen.load_json("config.json")["codebook"])
    with bentoml.models.create(name, labels={"kind": "genrec-generator"}, metadata={"generator_ref": gen.ref, "codebook_ref": codebook.ref}) as model:
        root = Path(model.path) / "registry"
        for art in (gen, codebook):
            r = parse_ref(art.ref)
            dst = root / r.kind / r.name / r.version
            shutil.copytree(art.path, dst)
            (dst.parent / "LATEST").write_text(r.version + "\n")
    return model


def load_recommender(model_path: str | Path, generator_ref: str):
    import torch

    from components.generator.recommend import Recommender

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Recommender.from_registry(Registry(Path(model_path) / "registry"), generator_ref, device=device), device


def recommend_batch(rec, model_ref: str, requests: list[RecommendRequest]) -> list[RecommendResponse]:
    """Answer each request; requests with equal (k, beam) are decoded together."""
    out: list[RecommendResponse | None] = [None] * len(requests)
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for i, r in enumerate(requests):
        if not 1 <= r.k <= MAX_K:
            out[i] = RecommendResponse(error=f"k={r.k}: must be in [1, {MAX_K}]", model_ref=model_ref)
        elif len(r.history) > MAX_HISTORY:
            out[i] = RecommendResponse(error=f"history of {len(r.history)} items: at most {MAX_HISTORY}", model_ref=model_ref)
        else:
            groups.setdefault((r.k, r.beam or max(20, r.k), r.skip_unknown), []).append(i)
    for (k, beam, skip), idx in groups.items():
        try:
            users = [requests[i].user_id for i in idx]
            res = rec.recommend([requests[i].history for i in idx], k=k, beam=beam, skip_unknown=skip,
                                **({"users": users} if any(users) else {}))
        except ValueError as e:  # GeneratorError, UnknownItemsError
            if len(idx) == 1:
                out[idx[0]] = RecommendResponse(error=str(e), model_ref=model_ref)
            else:  # isolate the bad request(s): answer the group one by one
                for i in idx:
                    out[i] = recommend_batch(rec, model_ref, [requests[i]])[0]
            continue
        for j, i in enumerate(idx):
            out[i] = RecommendResponse(
                item_ids=res.item_ids[j], scores=[float(s) for s in res.scores[j]], fallback_used=bool(res.fallback[j]),
                skipped_items=res.skipped[j] if res.skipped else [], model_ref=model_ref,
            )
    return out  # type: ignore[return-value]


@bentoml.service(name="genrec", traffic={"timeout": 60, "max_concurrency": 512})
class GenRecService:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        model = self.bento_model.resolve() if hasattr(self.bento_model, "resolve") else self.bento_model
        self.model_ref = model.info.metadata["generator_ref"]
        self.rec, self.device = load_recommender(model.path, self.model_ref)
        log.info("genrec bento: %s on %s", self.model_ref, self.device)

    @bentoml.api(batchable=True, max_batch_size=256, max_latency_ms=20)
    def recommend(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        return recommend_batch(self.rec, self.model_ref, requests)

    @bentoml.api
    def info(self) -> dict:
        return {"model_ref": self.model_ref, "device": self.device, "n_items": len(self.rec.item_ids)}


if install_auth(GenRecService):
    log.info("genrec bento: bearer token required (%s)", AUTH_TOKEN_ENV)
