"""Reliability of the gRPC services on loopback: load, fuzz and fault injection.

Builds its own registry (Industrial dataset, the released MiniOneRec SIDs as the codebook, a
TIGER-size generator with random weights — decoding cost does not depend on training — and a
retrieval index), starts each service as its own ``genrec serve`` process, then:

- ``load``:  N concurrent clients (grpc.aio) for D seconds against the generator (bounded: stops
             by itself): requests, errors, p50/p99 latency, throughput;
- ``fuzz``:  M malformed / adversarial requests against each service (random fields, huge
             histories, unknown ids, negative k, garbage refs): every answer must be OK or a
             proper client-error status, never INTERNAL/UNKNOWN, and the server must survive;
- ``fault``: load on the generator with ``use_retrieval`` while the retrieval service is killed
             mid-run: the generator's error rate must stay 0 (answers flagged
             ``retrieval_unavailable`` once it is gone). Needs a model with a retrieval-aware head.

    python -m bench.serving_reliability load --clients 100 --seconds 60
    python -m bench.serving_reliability fuzz --requests 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import write

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GENREC_DATA_MIRROR", REPO.parent / "shared" / "data"))
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}


def build_registry(root: Path, heads: list | None = None) -> dict[str, str]:
    from components.data import load_minionerec
    from components.generator.checkpoint import save_checkpoint
    from components.generator.model import GenerativeRecommender
    from components.generator.params import GeneratorParams
    from components.generator.vocab import SIDVocab
    from components.registry import Registry
    from components.retrieval import UserRetriever
    from components.tokenizer.reference import codebook_from_index_json

    reg = Registry(root)
    ds = load_minionerec(DATA / "Industrial_and_Scientific", name="industrial")
    dart = ds.save(reg)
    cb = codebook_from_index_json(DATA / "Industrial_and_Scientific" / "reference" / "minionerec.index.json", ds)
    cb.dataset_ref = dart.ref
    cart = cb.save(reg, "industrial-reference", parents=[dart.ref], params={})
    gp = GeneratorParams()
    cfg = {"backbone": {"kind": "tiger", **gp.tiger.model_dump()}, "heads": heads or [], "max_items": 10}
    model = GenerativeRecommender.from_config(cfg, SIDVocab.from_codebook(cb))
    gart = save_checkpoint(reg, "industrial-tiger", model, cart.ref, dart.ref, {"bench": "random weights"}, popularity=ds.train_item_counts())
    iv = np.random.default_rng(0).normal(size=(ds.n_items, 32)).astype(np.float32)
    rart = UserRetriever.build(ds, iv, dataset_ref=dart.ref).save(reg, "industrial", parents=[dart.ref], params={})
    return {"dataset": dart.ref, "codebook": cart.ref, "generator": gart.ref, "retrieval": rart.ref, "items": ds.item_ids, "users": ds.user_ids}


class Server:
    """``genrec serve SERVICE`` in its own process; the port is read from its first line.

    ``env``: when given, the child gets this process's environment without any ``GENREC_*``
    security variable (:data:`components.serving.security.ENV`), plus ``env`` (so a plaintext run is
    plaintext whatever the caller's shell exports). Its output is drained in a thread (a chatty
    server never blocks on a full pipe); the last lines are kept in ``tail``."""

    def __init__(self, service: str, root: Path, artifact: str, extra: list[str] = (), env: dict[str, str] | None = None):
        import collections
        import threading

        from components.serving.security import ENV

        cmd = [sys.executable, "-m", "components.cli", "--registry", str(root), *extra, "serve", service, "--port", "0", "--artifact", artifact]
        child_env = dict(os.environ, PYTHONUNBUFFERED="1")
        if env is not None:
            child_env = {k: v for k, v in child_env.items() if k not in set(ENV.values())} | dict(env)
        self.service = service
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        deadline = time.time() + 180
        self.port = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{service} server exited ({self.proc.returncode}): {''.join(self.tail)[-3000:]}")
            self.tail.append(line)
            if "serving" in line and " on " in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        if self.port is None:
            raise RuntimeError(f"{service} server did not start")
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.tail.append(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


async def _load(address: str, make_request, clients: int, seconds: float, stop_hook=None, client_sec: dict | None = None) -> dict:
    """``client_sec``: TLS / token of the clients (:func:`_aio_channel`); default plaintext, no token."""
    from components.serving.pb.genrec.v1 import generator_pb2_grpc

    lat, errors, codes, flagged = [], 0, {}, 0
    metadata = _metadata(client_sec)
    t_end = time.perf_counter() + seconds
    async with _aio_channel(address, client_sec) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)

        async def client(cid: int) -> None:
            nonlocal errors, flagged
            rng = random.Random(cid)
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                try:
                    r = await stub.Recommend(make_request(rng), timeout=30, metadata=metadata)
                    flagged += int(r.retrieval_unavailable)
                    lat.append((time.perf_counter() - t) * 1000)
                except grpc.aio.AioRpcError as e:
                    errors += 1
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1

        tasks = [asyncio.create_task(client(c)) for c in range(clients)]
        if stop_hook:
            tasks.append(asyncio.create_task(stop_hook()))
        await asyncio.gather(*tasks)
    a = np.asarray(lat) if lat else np.zeros(1)
    return {"clients": clients, "seconds": seconds, "requests": len(lat) + errors, "errors": errors, "error_codes": codes,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "throughput_rps": len(lat) / seconds,
            "retrieval_unavailable_flags": flagged}


def cmd_load(args) -> None:
    """The same load twice in one run: the generator decoding each call alone
    (``serving.batch_wait_ms=0``) and merging concurrent calls (``batch_wait_ms`` = ``--wait-ms``)."""
    from components.serving.pb.genrec.v1 import generator_pb2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifacts"
        refs = build_registry(root)
        items = refs["items"]

        def req(rng):
            return generator_pb2.RecommendRequest(history=rng.sample(items, rng.randint(1, 10)), k=10, beam=20)

        out = {"model": "TIGER-size T5 (random weights), Industrial 3,686 items, beam 20, k 10, history 1-10", "runs": {}}
        for wait in (0.0, args.wait_ms):
            gen = Server("generator", root, refs["generator"], extra=["--set", f"serving.batch_wait_ms={wait}"])
            try:
                res = asyncio.run(_load(gen.address, req, args.clients, args.seconds))
            finally:
                res["server_exit_code_after_sigterm"] = gen.stop()
            out["runs"][f"batch_wait_ms={wait:g}"] = res
        a, b = out["runs"]["batch_wait_ms=0"], out["runs"][f"batch_wait_ms={args.wait_ms:g}"]
        out["throughput_ratio_batched_vs_alone"] = b["throughput_rps"] / max(a["throughput_rps"], 1e-9)
        write("serving_load", out)


def _garbage(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, n)))


def fuzz_requests(rng: random.Random, items: list[str], users: list[str]):
    """Yields (service, method, request) triples of random, mostly malformed requests."""
    from components.serving.pb.genrec.v1 import common_pb2, generator_pb2, rebalancer_pb2, retrieval_pb2, tokenizer_pb2

    def ids(sizes=(0, 1, 3, 10, 50, 300, 5000)):
        n = rng.choice(sizes)
        pool = [rng.choice(items), rng.choice(items), _garbage(rng), str(rng.randint(-10, 10**6)), ""]
        return rng.choices(pool, k=n)

    def num():
        return rng.choice([0, 1, 5, 20, -1, -(2**31), 2**31 - 1, rng.randint(-1000, 1000)])

    while True:
        kind = rng.randrange(8)
        if kind == 0:
            yield "generator", "Recommend", generator_pb2.RecommendRequest(history=ids(), k=num(), beam=num(), user_id=_garbage(rng),
                                                                           skip_unknown=rng.random() < 0.5,
                                                                           heads=generator_pb2.HeadOptions(use_retrieval=rng.random() < 0.5))
        elif kind == 1:
            yield "generator", "RecommendBatch", generator_pb2.RecommendBatchRequest(
                requests=[generator_pb2.RecommendRequest(history=ids((0, 1, 3, 20)), k=num(), beam=num()) for _ in range(rng.choice([0, 1, 3, 300]))])
        elif kind == 2:
            q = rng.random()
            req = retrieval_pb2.SimilarUsersRequest(z=num(), v=num(), exclude_item=rng.choice(["", rng.choice(items), _garbage(rng)]))
            if q < 0.4:
                req.user_id = rng.choice([rng.choice(users), _garbage(rng)])
            elif q < 0.8:
                req.history.item_ids.extend(ids())
            yield "retrieval", "SimilarUsers", req
        elif kind == 3:
            yield "tokenizer", "Tokenize", tokenizer_pb2.TokenizeRequest(codebook_ref=rng.choice(["", _garbage(rng), "codebook/x@latest"]), item_ids=ids())
        elif kind == 4:
            yield "tokenizer", "Detokenize", tokenizer_pb2.DetokenizeRequest(
                sids=[common_pb2.SemanticId(tokens=[num() for _ in range(rng.randint(0, 6))]) for _ in range(rng.randint(0, 20))])
        elif kind == 5:
            yield "tokenizer", "AddItems", tokenizer_pb2.AddItemsRequest(
                items=[tokenizer_pb2.NewItem(item_id=rng.choice(["", _garbage(rng), rng.choice(items)]), fields={"title": _garbage(rng, 40)}) for _ in range(rng.randint(0, 3))])
        elif kind == 6:
            yield "tokenizer", "CodebookStats", tokenizer_pb2.CodebookStatsRequest(codebook_ref=rng.choice(["", _garbage(rng), "codebook/none@latest"]))
        else:
            yield "rebalancer", "Rebalance", rebalancer_pb2.RebalanceRequest(
                codebook_ref=rng.choice(["", _garbage(rng), "codebook/none@latest", "codebook/industrial-reference@latest"]),
                # "" = the server's dataset: a valid (seconds-long) rebalance; kept rare so the fuzz stays fast
                dataset_ref="" if rng.random() < 0.02 else rng.choice([_garbage(rng), "dataset/none"]), split_ratio=rng.choice([0.0, -1.0, 2.0, 0.1]),
                max_splits=num(), levels=[num() for _ in range(rng.randint(0, 3))])


def cmd_fuzz(args) -> None:
    from components.serving.pb.genrec.v1 import generator_pb2_grpc, rebalancer_pb2_grpc, retrieval_pb2_grpc, tokenizer_pb2_grpc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifacts"
        refs = build_registry(root)
        servers = {
            "generator": Server("generator", root, refs["generator"]),
            "retrieval": Server("retrieval", root, refs["retrieval"]),
            "tokenizer": Server("tokenizer", root, refs["codebook"]),
            "rebalancer": Server("rebalancer", root, refs["codebook"]),
        }
        stubs = {}
        chans = []
        for name, cls in (("generator", generator_pb2_grpc.GeneratorStub), ("retrieval", retrieval_pb2_grpc.RetrievalStub),
                          ("tokenizer", tokenizer_pb2_grpc.TokenizerStub), ("rebalancer", rebalancer_pb2_grpc.RebalancerStub)):
            ch = grpc.insecure_channel(servers[name].address, options=[("grpc.max_send_message_length", 64 << 20)])
            chans.append(ch)
            stubs[name] = cls(ch)
        rng = random.Random(args.seed)
        per = {n: {"requests": 0, "ok": 0, "client_error": 0, "bad_status": 0, "codes": {}} for n in servers}
        bad_examples = []
        gen = fuzz_requests(rng, refs["items"], refs["users"])
        t0 = time.time()
        try:
            while min(p["requests"] for p in per.values()) < args.requests:
                service, method, req = next(gen)
                if per[service]["requests"] >= args.requests:
                    continue  # this service has had its share; keep drawing for the others
                p = per[service]
                p["requests"] += 1
                try:
                    getattr(stubs[service], method)(req, timeout=60)
                    p["ok"] += 1
                except grpc.RpcError as e:
                    code = e.code()
                    p["codes"][code.name] = p["codes"].get(code.name, 0) + 1
                    if code in CLIENT_ERRORS:
                        p["client_error"] += 1
                    else:
                        p["bad_status"] += 1
                        if len(bad_examples) < 10:
                            bad_examples.append({"service": service, "method": method, "code": code.name, "details": (e.details() or "")[:300]})
        finally:
            alive = {n: s.alive() for n, s in servers.items()}
            exit_codes = {n: s.stop() for n, s in servers.items()}
            for ch in chans:
                ch.close()
        write("serving_fuzz", {"requests_per_service": args.requests, "seconds": time.time() - t0, "per_service": per,
                               "alive_after": alive, "exit_code_after_sigterm": exit_codes, "bad_examples": bad_examples,
                               "crashes": sum(not a for a in alive.values())})


def cmd_fault(args) -> None:
    """Kill -9 the retrieval service mid-load; the generator (GenPlugin with RAR, which asks the
    retrieval service for neighbours) must keep answering: 0 errors, answers flagged."""
    import torch

    from components.generator.heads.genplugin import GenPluginHead
    from components.generator.model import GenerativeRecommender
    from components.generator.recommend import Recommender
    from components.generator.service import GeneratorService, Limits
    from components.generator.service import registration as gen_registration
    from components.generator.vocab import SIDVocab
    from components.registry import Registry
    from components.retrieval import UserRetriever
    from components.serving.clients import RetrievalClient
    from components.serving.grpc_server import BackgroundServer
    from components.serving.pb.genrec.v1 import generator_pb2
    from components.tokenizer.codebook import Codebook
    from tests.generator_helpers import random_sids, synthetic_dataset, tiny_backbone

    ds = synthetic_dataset(n_items=200, n_users=400, seq_len=12, max_history=10)
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 16)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifacts"
        reg = Registry(root)
        dart = ds.save(reg)
        rart = UserRetriever.build(ds, emb, fields=("title",), dataset_ref=dart.ref).save(reg, "synth", parents=[dart.ref], params={})
        torch.manual_seed(0)
        sizes = [8, 8, 4]
        sids = random_sids(sizes, ds.n_items)
        head = GenPluginHead(32, n_items=ds.n_items, text_dim=16, lan_heads=2, lan_ff=32, proj_hidden=16, dataset=dart.ref, v=5, z=10, rar_active=True)
        head.item_text.copy_(torch.from_numpy(emb))
        model = GenerativeRecommender(tiny_backbone("tiger", SIDVocab(sids, sizes)), [head], max_items=10).eval()
        rec = Recommender(model, Codebook(sids=sids, sizes=sizes, item_ids=ds.item_ids, method="random"), np.ones(ds.n_items))
        ret = Server("retrieval", root, rart.ref)
        client = RetrievalClient(ret.address, timeout_s=1.0, retries=1, backoff_s=0.02)
        gen = GeneratorService(rec, "generator/synth@fault", limits=Limits(max_k=20, max_beam=40), retrieval=client)
        items = ds.item_ids
        killed_at = {}

        async def killer():
            await asyncio.sleep(args.seconds / 3)
            killed_at["t"] = time.perf_counter()
            ret.kill()

        def req(rng):
            return generator_pb2.RecommendRequest(history=rng.sample(items, rng.randint(1, 10)), k=10, beam=20,
                                                  heads=generator_pb2.HeadOptions(use_retrieval=True))

        with BackgroundServer([gen_registration(gen)]) as port:
            out = asyncio.run(_load(f"127.0.0.1:{port}", req, args.clients, args.seconds, stop_hook=killer))
        out["retrieval_killed_after_s"] = args.seconds / 3
        out["model"] = "GenPlugin (RAR) on tiny TIGER, synthetic 200-item catalog, 400 users; retrieval over gRPC (timeout 1 s, 1 retry)"
        write("serving_fault", out)


# ---- security: certificates, channels ---------------------------------------------------------
def make_pki(d: Path) -> dict[str, str]:
    """A throwaway PKI in ``d`` (``cryptography``): a CA, a server certificate for 127.0.0.1 /
    localhost, a client certificate, and an unrelated CA with its own client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(cn: str, signer=None, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_name, issuer_key = (signer[0].subject, signer[1]) if signer else (name(cn), key)
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(issuer_key, hashes.SHA256())
        (d / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{cn}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        return cert, key

    ca, other = issue("bench-ca"), issue("other-ca")
    issue("server", ca, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("client", ca)
    issue("other-client", other)
    f = {n: str(d / n) for n in ("bench-ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                 "other-client.pem", "other-client.key")}
    return {"ca": f["bench-ca.pem"], "other_ca": f["other-ca.pem"], "cert": f["server.pem"], "key": f["server.key"],
            "client_cert": f["client.pem"], "client_key": f["client.key"],
            "other_client_cert": f["other-client.pem"], "other_client_key": f["other-client.key"]}


def _creds(sec: dict | None) -> grpc.ChannelCredentials | None:
    """``sec``: ``ca`` (PEM path: TLS trusting it; "system" = default roots), ``cert``/``key`` (client
    certificate, mTLS), ``token``. None or no ``ca`` = plaintext."""
    if not sec or not sec.get("ca"):
        return None
    rd = lambda k: Path(sec[k]).read_bytes() if sec.get(k) else None
    return grpc.ssl_channel_credentials(root_certificates=None if sec["ca"] == "system" else rd("ca"),
                                        private_key=rd("key"), certificate_chain=rd("cert"))


def _options(sec: dict | None) -> list:
    return [("grpc.ssl_target_name_override", sec["target_name"])] if sec and sec.get("target_name") else []


def _aio_channel(address: str, sec: dict | None = None) -> grpc.aio.Channel:
    c = _creds(sec)
    return grpc.aio.secure_channel(address, c, options=_options(sec)) if c else grpc.aio.insecure_channel(address)


def _sync_channel(address: str, sec: dict | None = None) -> grpc.Channel:
    c = _creds(sec)
    return grpc.secure_channel(address, c, options=_options(sec)) if c else grpc.insecure_channel(address)


def _metadata(sec: dict | None):
    return (("authorization", f"Bearer {sec['token']}"),) if sec and sec.get("token") else None


def _wait_healthy(srv: Server, sec: dict | None, service_name: str, timeout_s: float = 120) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline, last = time.time() + timeout_s, "no answer"
    while time.time() < deadline:
        if not srv.alive():
            raise RuntimeError(f"{srv.service} exited ({srv.proc.returncode}): {''.join(srv.tail)[-3000:]}")
        try:
            with _sync_channel(srv.address, sec) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service_name), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        time.sleep(0.2)
    raise RuntimeError(f"{srv.service} on {srv.address} not healthy after {timeout_s:.0f}s (last: {last})")


def _pct(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def _generator_items(root: Path, ref: str) -> tuple[str, list[str]]:
    """(resolved ref, item ids of the codebook the generator was trained on)."""
    from components.registry import Registry
    from components.tokenizer.codebook import Codebook

    reg = Registry(root)
    art = reg.load(ref, verify=False)
    cb = Codebook.from_artifact(reg.load(art.load_json("config.json")["codebook"], verify=False))
    return art.ref, list(cb.item_ids)


# ---- secure: Recommend latency with TLS on and off ---------------------------------------------------
SECURE_MODES = ("plaintext", "tls", "tls+token", "mtls")


def _mode(mode: str, pki: dict, token: str) -> tuple[dict[str, str], dict]:
    """(server environment, client settings) of a security mode."""
    if mode == "plaintext":
        return {}, {}
    env = {"GENREC_TLS_CERT": pki["cert"], "GENREC_TLS_KEY": pki["key"]}
    client = {"ca": pki["ca"]}
    if mode == "tls+token":  # every call needs the token (auth_all): the interceptor's cost on Recommend
        env |= {"GENREC_AUTH_TOKEN": token, "GENREC_AUTH_ALL": "1"}
        client["token"] = token
    elif mode == "mtls":
        env["GENREC_TLS_CLIENT_CA"] = pki["ca"]
        client |= {"cert": pki["client_cert"], "key": pki["client_key"]}
    elif mode != "tls":
        raise SystemExit(f"unknown mode {mode!r}: one of {SECURE_MODES}")
    return env, client


async def _sequential(address: str, sec: dict, make_request, n: int, warmup: int, seed: int) -> dict:
    """One client, one request at a time, on one (already connected) channel."""
    from components.serving.pb.genrec.v1 import generator_pb2_grpc

    rng, md, lat, errors = random.Random(seed), _metadata(sec), [], {}
    async with _aio_channel(address, sec) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)
        for i in range(warmup + n):
            req = make_request(rng)
            t = time.perf_counter()
            try:
                await stub.Recommend(req, timeout=30, metadata=md)
                if i >= warmup:
                    lat.append((time.perf_counter() - t) * 1000)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
    s = _pct(lat)
    return {"requests": n, "errors": sum(errors.values()), "error_codes": errors, "p50_ms": s.get("p50"), "p99_ms": s.get("p99"), "mean_ms": s.get("mean")}


async def _fresh(address: str, sec: dict, make_request, n: int, seed: int) -> dict:
    """A new channel per request: connection (+ TLS handshake) + the call."""
    from components.serving.pb.genrec.v1 import generator_pb2_grpc

    rng, md, lat, errors = random.Random(seed), _metadata(sec), [], 0
    for _ in range(n):
        req = make_request(rng)
        t = time.perf_counter()
        async with _aio_channel(address, sec) as ch:
            try:
                await generator_pb2_grpc.GeneratorStub(ch).Recommend(req, timeout=30, metadata=md)
                lat.append((time.perf_counter() - t) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1
    s = _pct(lat)
    return {"requests": n, "errors": errors, "p50_ms": s.get("p50"), "p99_ms": s.get("p99")}


def cmd_secure(args) -> None:
    """Recommend p50/p99 alone and under ``--clients`` concurrent clients, per security mode, one run."""
    import secrets

    from components.serving.pb.genrec.v1 import generator_pb2

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki, token = make_pki(tmp / "pki"), secrets.token_hex(32)
        if args.registry:
            root = Path(args.registry).resolve()
            gen_ref, items = _generator_items(root, args.generator or "generator/industrial-tiger@latest")
            model = f"{gen_ref} from {root}"
        else:
            root = tmp / "artifacts"
            refs = build_registry(root)
            gen_ref, items = refs["generator"], refs["items"]
            model = "TIGER-size T5 (random weights), Industrial 3,686 items"

        def req(rng):
            return generator_pb2.RecommendRequest(history=rng.sample(items, rng.randint(1, 10)), k=args.k, beam=args.beam)

        out = {"model": f"{model}, beam {args.beam}, k {args.k}, history 1-10", "serving.batch_wait_ms": args.wait_ms,
               "clients_share_one_channel": True, "modes": {}}
        for mode in modes:
            env, client = _mode(mode, pki, token)
            print(f"secure: {mode}", flush=True)
            srv = Server("generator", root, gen_ref, extra=["--set", f"serving.batch_wait_ms={args.wait_ms}"], env=env)
            res: dict = {}
            try:
                _wait_healthy(srv, client, "genrec.v1.Generator")
                res["sequential"] = asyncio.run(_sequential(srv.address, client, req, args.sequential, args.warmup, args.seed))
                res["fresh_channel_per_request"] = asyncio.run(_fresh(srv.address, client, req, args.fresh, args.seed + 1))
                res["concurrent"] = asyncio.run(_load(srv.address, req, args.clients, args.seconds, client_sec=client))
                res["alive_after"] = srv.alive()
            finally:
                res["server_exit_code_after_sigterm"] = srv.stop()
            out["modes"][mode] = res
        base = out["modes"].get("plaintext")
        if base:
            out["vs_plaintext"] = {
                m: {"sequential_p50_ratio": r["sequential"]["p50_ms"] / base["sequential"]["p50_ms"],
                    "sequential_p99_ratio": r["sequential"]["p99_ms"] / base["sequential"]["p99_ms"],
                    "concurrent_p50_ratio": r["concurrent"]["p50_ms"] / base["concurrent"]["p50_ms"],
                    "concurrent_p99_ratio": r["concurrent"]["p99_ms"] / base["concurrent"]["p99_ms"],
                    "throughput_ratio": r["concurrent"]["throughput_rps"] / max(base["concurrent"]["throughput_rps"], 1e-9)}
                for m, r in out["modes"].items() if m != "plaintext" and r.get("sequential", {}).get("p50_ms")}
        out["errors_total"] = sum(r.get("sequential", {}).get("errors", 0) + r.get("concurrent", {}).get("errors", 0)
                                  + r.get("fresh_channel_per_request", {}).get("errors", 0) for r in out["modes"].values())
        write("serving_secure", out)


# ---- live: items added while under load ------------------------------------------------------------
def _minilm_embeddings(ds, p, path: str | None) -> np.ndarray:
    """MiniLM embeddings of the catalog, made exactly as the tokenizer service embeds new items;
    cached in ``path`` (.npy) when given."""
    from components.tokenizer.encoders import SentenceTransformerEncoder, item_texts

    if path and Path(path).is_file():
        emb = np.load(path)
        if emb.shape[0] != ds.n_items:
            raise SystemExit(f"{path}: {emb.shape[0]} rows for {ds.n_items} items")
        return emb.astype(np.float32)
    t = time.perf_counter()
    enc = SentenceTransformerEncoder(None, device="cpu", batch_size=p.batch_size, normalize=p.normalize, progress=False)
    emb = enc.encode(item_texts(ds.item_ids, ds.item_text, p.text_fields, p.max_field_chars))
    print(f"embedded {ds.n_items} items with MiniLM in {time.perf_counter() - t:.0f}s", flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    return emb


def build_live_registry(root: Path, embeddings: str | None = None, generator: bool = True, levels: int | None = None,
                        codebook_size: int | None = None) -> dict:
    """A registry whose codebook can take new items: RQ-KMeans over MiniLM embeddings of the
    Industrial catalog (codewords kept; ``stats`` record encoder and embedding config, so the
    tokenizer service with the default ``tokenizer:`` params accepts AddItems), and — with
    ``generator`` — a TIGER-size generator with random weights on it."""
    from components.data import load_minionerec
    from components.params import load_params
    from components.registry import Registry
    from components.tokenizer.online import embedding_config
    from components.tokenizer.tokenize import build_codebook

    reg = Registry(root)
    ds = load_minionerec(DATA / "Industrial_and_Scientific", name="industrial")
    dart = ds.save(reg)
    p = load_params(REPO / "params.yaml", ["tokenizer.encoder=minilm"]).tokenizer
    emb = _minilm_embeddings(ds, p, embeddings)
    bp = p.model_copy(update={"method": "rqkmeans", "levels": levels or p.levels, "codebook_size": codebook_size or p.codebook_size})
    cb = build_codebook(emb, ds.item_ids, bp, item_counts=ds.train_item_counts(), seed=0, dataset_ref=dart.ref)
    cb.stats["encoder"] = "minilm"
    cb.stats["embedding_config"] = embedding_config(p, "minilm")
    cart = cb.save(reg, "industrial-minilm", parents=[dart.ref], params={"bench": "rqkmeans on MiniLM"})
    out = {"dataset": dart.ref, "codebook": cart.ref, "items": ds.item_ids, "sizes": list(cb.sizes)}
    if generator:
        from components.generator.checkpoint import save_checkpoint
        from components.generator.model import GenerativeRecommender
        from components.generator.params import GeneratorParams
        from components.generator.vocab import SIDVocab

        gp = GeneratorParams()
        cfg = {"backbone": {"kind": "tiger", **gp.tiger.model_dump()}, "heads": [], "max_items": 10}
        model = GenerativeRecommender.from_config(cfg, SIDVocab.from_codebook(cb))
        out["generator"] = save_checkpoint(reg, "industrial-tiger", model, cart.ref, dart.ref, {"bench": "random weights"},
                                           popularity=ds.train_item_counts()).ref
    return out


_BRANDS = ["Hillman", "3M", "uxcell", "Gorilla", "Loctite", "DEWALT", "Brady", "Fluke", "Mitutoyo", "Eisco", "Kimberly-Clark", "Thorlabs", "Parker"]
_ADJ = ["Stainless Steel", "Heavy Duty", "Nitrile", "Anti-Static", "Waterproof", "Digital", "Precision", "Industrial-Grade", "Heat Resistant", "Borosilicate"]
_NOUNS = ["Hex Bolt", "Safety Glasses", "Caliper", "Cable Ties", "Beaker Set", "Pipe Clamp", "Multimeter", "Work Gloves", "Shelf Bracket",
          "Label Tape", "Torque Wrench", "Pressure Gauge", "Lab Thermometer", "Zip Bags", "O-Ring Kit", "Drill Bit Set"]
_SIZES = ["1/4 inch", "M6 x 30mm", "Pack of 100", "6 inch", "500 ml", "Large", "12-Piece", "50 ft", "0-100 psi", "2 Pack"]
_CATS = ["Industrial & Scientific > Fasteners", "Industrial & Scientific > Lab & Scientific Products", "Industrial & Scientific > Test, Measure & Inspect",
         "Industrial & Scientific > Occupational Health & Safety Products", "Industrial & Scientific > Tapes, Adhesives & Sealants"]


def fake_item(rng: random.Random) -> dict[str, str]:
    brand, adj, noun, size = rng.choice(_BRANDS), rng.choice(_ADJ), rng.choice(_NOUNS), rng.choice(_SIZES)
    return {"title": f"{brand} {adj} {noun}, {size}", "brand": brand, "categories": str(["Industrial & Scientific", rng.choice(_CATS).split(" > ")[1]]),
            "description": f"{adj} {noun.lower()} by {brand}. {size}. Model {rng.randint(1000, 99999)}; for workshop, lab and field use."}


async def _live(gen_addr: str, tok_addr: str, items: list[str], args) -> dict:
    import uuid

    from components.serving.pb.genrec.v1 import generator_pb2, generator_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc

    rng, run = random.Random(args.seed), uuid.uuid4().hex[:6]
    adds, probes, add_errors = [], [], {}
    counter = iter(range(10**9))

    async with grpc.aio.insecure_channel(tok_addr) as tch, grpc.aio.insecure_channel(gen_addr) as gch:
        tok, gen = tokenizer_pb2_grpc.TokenizerStub(tch), generator_pb2_grpc.GeneratorStub(gch)

        async def probe(iid: str, t_ret: float) -> dict:
            attempts, codes = 0, {}
            while time.perf_counter() - t_ret < args.probe_timeout:
                attempts += 1
                try:
                    await gen.Recommend(generator_pb2.RecommendRequest(history=[iid], k=10, beam=20), timeout=30)
                    return {"item": iid, "seconds": time.perf_counter() - t_ret, "attempts": attempts, "failed_codes": codes}
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1
                    await asyncio.sleep(0.05)
            return {"item": iid, "seconds": None, "attempts": attempts, "failed_codes": codes}

        async def add_once() -> list[dict]:
            n = next(counter)
            new = {f"live-{run}-{n}-{j}": fake_item(rng) for j in range(args.items_per_add)}
            req = tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=i, fields=f) for i, f in new.items()],
                                                request_id=uuid.uuid4().hex)
            t = time.perf_counter()
            try:
                r = await tok.AddItems(req, timeout=args.add_timeout)
            except grpc.aio.AioRpcError as e:
                add_errors[e.code().name] = add_errors.get(e.code().name, 0) + 1
                return []
            t_ret = time.perf_counter()
            adds.append({"ms": (t_ret - t) * 1000, "codebook_ref": r.codebook_ref, "sids": [list(s.tokens) for s in r.sids]})
            return list(await asyncio.gather(*(probe(i, t_ret) for i in new)))

        t = time.perf_counter()  # warm-up, not counted: the tokenizer loads MiniLM, the generator swaps its first codebook
        warm = await add_once()
        warmup = {"seconds": time.perf_counter() - t, "recommendable": bool(warm) and all(p["seconds"] is not None for p in warm)}
        adds.clear()

        def req(r):
            return generator_pb2.RecommendRequest(history=r.sample(items, r.randint(1, 10)), k=10, beam=20)

        async def adder() -> None:
            t0, tasks, n = time.perf_counter(), [], 0
            while t0 + n * args.add_every < t0 + args.seconds:
                await asyncio.sleep(max(0.0, t0 + n * args.add_every - time.perf_counter()))
                tasks.append(asyncio.create_task(add_once()))
                n += 1
            for res in await asyncio.gather(*tasks):
                probes.extend(res)

        load = await _load(gen_addr, req, args.clients, args.seconds, stop_hook=adder)
        stats = await tok.CodebookStats(tokenizer_pb2.CodebookStatsRequest(), timeout=30)
    ttr = [p["seconds"] for p in probes if p["seconds"] is not None]
    a = _pct([x["ms"] for x in adds])
    r = _pct(ttr)
    return {"warmup": warmup, "load": load,
            "add_items": {"calls": len(adds) + sum(add_errors.values()), "ok": len(adds), "errors": sum(add_errors.values()), "error_codes": add_errors,
                          "items_per_call": args.items_per_add, "every_s": args.add_every,
                          "p50_ms": a.get("p50"), "p99_ms": a.get("p99"), "max_ms": a.get("max")},
            "items_added": len(adds) * args.items_per_add,
            "recommendable": {"items": len(ttr), "never_within_s": args.probe_timeout, "not_recommendable": [p["item"] for p in probes if p["seconds"] is None][:20],
                              "p50_s": r.get("p50"), "p99_s": r.get("p99"), "max_s": r.get("max"),
                              "probe_attempts_max": max((p["attempts"] for p in probes), default=0),
                              "probe_failed_codes": {k: sum(p["failed_codes"].get(k, 0) for p in probes) for k in {c for p in probes for c in p["failed_codes"]}}},
            "tokenizer_after": {"codebook_ref": stats.codebook_ref, "n_items": __import__("json").loads(stats.stats.json).get("n_items")}}


def cmd_live(args) -> None:
    """Load on Recommend while AddItems adds an item every second; each new item must become
    recommendable (Recommend(history=[it]) succeeds) and the load must see 0 errors."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifacts"
        refs = build_live_registry(root, args.embeddings)
        tok = Server("tokenizer", root, refs["codebook"], extra=["--set", "tokenizer.encoder=minilm"], env={})
        gen = None
        try:
            _wait_healthy(tok, None, "genrec.v1.Tokenizer")
            gen = Server("generator", root, refs["generator"], env={},
                         extra=["--set", f"serving.tokenizer_address={tok.address}", "--set", f"serving.refresh_s={args.refresh_s}",
                                "--set", f"serving.batch_wait_ms={args.wait_ms}"])
            _wait_healthy(gen, None, "genrec.v1.Generator")
            res = asyncio.run(_live(gen.address, tok.address, refs["items"], args))
            res["alive_after"] = {"tokenizer": tok.alive(), "generator": gen.alive()}
        finally:
            codes = {"generator": gen.stop() if gen else None, "tokenizer": tok.stop()}
        res["exit_code_after_sigterm"] = codes
        n0 = len(refs["items"])
        res["model"] = (f"TIGER-size T5 (random weights) on an RQ-KMeans codebook {refs['sizes']} over MiniLM embeddings of Industrial "
                        f"({n0} items); load: beam 20, k 10, history 1-10; serving.refresh_s={args.refresh_s}, batch_wait_ms={args.wait_ms}")
        res["checks"] = {
            "load_errors_zero": res["load"]["errors"] == 0,
            "add_errors_zero": res["add_items"]["errors"] == 0,
            "every_added_item_recommendable": res["recommendable"]["items"] == res["items_added"],
            "tokenizer_has_every_item": res["tokenizer_after"]["n_items"] == n0 + res["items_added"] + args.items_per_add,  # + warm-up
            "alive_after": all(res["alive_after"].values()),
        }
        res["ok"] = all(res["checks"].values())
        write("serving_live", res)


# ---- fuzz-security: transport, tokens and replays against a TLS + token tokenizer ---------------------
DENIED = {"UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE"}


class _Cases:
    def __init__(self, server: str):
        self.server, self.cases = server, {}

    def run(self, name: str, expected: set[str], fn, n: int, denied: bool, state=None) -> dict:
        """``fn(i)`` → anything (OK) or raises. ``state()`` (before/after) must not change when ``denied``."""
        rec = self.cases.setdefault(name, {"server": self.server, "n": 0, "codes": {}, "expected": sorted(expected), "unexpected": 0,
                                           "denied_call": denied, "state_changed": False, "examples": []})
        before = state() if state else None
        for i in range(n):
            try:
                fn(i)
                code, detail = "OK", ""
            except grpc.RpcError as e:
                code, detail = e.code().name, (e.details() or "")[:200]
                if code == "INTERNAL" and detail == "Invalid metadata" and not getattr(e, "trailing_metadata", lambda: None)():
                    code = "CLIENT_REFUSED:invalid_metadata"  # grpc core refuses to send it (non-ASCII / control characters)
            except Exception as e:  # noqa: BLE001 (refused by the client library: never sent)
                code, detail = f"CLIENT_REFUSED:{type(e).__name__}", str(e)[:200]
            rec["n"] += 1
            rec["codes"][code] = rec["codes"].get(code, 0) + 1
            ok = code in expected or (code.startswith("CLIENT_REFUSED") and "CLIENT_REFUSED" in expected)
            if not ok:
                rec["unexpected"] += 1
                if len(rec["examples"]) < 3:
                    rec["examples"].append({"i": i, "code": code, "details": detail})
        if state:
            after = state()
            if denied and after != before:
                rec["state_changed"] = True
            rec.setdefault("state_before_after", []).append([before, after])
        return rec


def cmd_fuzz_security(args) -> None:
    import concurrent.futures
    import secrets
    import socket
    import uuid

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from components.serving.pb.genrec.v1 import tokenizer_pb2, tokenizer_pb2_grpc

    N = args.repeat
    rng = random.Random(args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "artifacts"
        pki, token = make_pki(tmp / "pki"), secrets.token_hex(32)
        refs = build_live_registry(root, args.embeddings, generator=False)
        catalog = refs["items"]

        def n_codebooks() -> int:
            return len(list((root / "codebook").rglob("manifest.json")))

        def add_req(prefix: str, i: int, rid: str = "") -> tokenizer_pb2.AddItemsRequest:
            return tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=f"{prefix}-{i}-{uuid.uuid4().hex[:6]}", fields=fake_item(rng))],
                                                 request_id=rid)

        def call(addr: str, sec: dict | None, method: str, req, md=None, timeout: float = 10):
            with _sync_channel(addr, sec) as ch:
                return getattr(tokenizer_pb2_grpc.TokenizerStub(ch), method)(req, timeout=timeout, metadata=md)

        results, alive, exit_codes, servers_desc = {}, {}, {}, {}

        # -- server A: TLS + token guarding writes (reads open) -----------------------------------------
        env_a = {"GENREC_TLS_CERT": pki["cert"], "GENREC_TLS_KEY": pki["key"], "GENREC_AUTH_TOKEN": token}
        good = {"ca": pki["ca"], "token": token}
        srv = Server("tokenizer", root, refs["codebook"], extra=["--set", "tokenizer.encoder=minilm"], env=env_a)
        servers_desc["A"] = "tokenizer, TLS + bearer token on AddItems (reads open)"
        c = _Cases("A")
        try:
            _wait_healthy(srv, good, "genrec.v1.Tokenizer")
            A = srv.address

            def state() -> tuple:
                return n_codebooks(), call(A, good, "CodebookStats", tokenizer_pb2.CodebookStatsRequest()).codebook_ref

            gmd = (("authorization", f"Bearer {token}"),)
            # transport: each try is a fresh channel (a fresh handshake) carrying a valid token and a new item
            bad_transport = {
                "tls_plaintext_client": None,
                "tls_untrusted_ca": {"ca": pki["other_ca"]},
                "tls_system_roots": {"ca": "system"},
                "tls_wrong_server_name": {"ca": pki["ca"], "target_name": "not-this-server.example"},
            }
            for name, sec in bad_transport.items():
                c.run(f"{name}/AddItems", {"UNAVAILABLE"}, lambda i, s=sec: call(A, s, "AddItems", add_req("tr", i), gmd), N, True, state)
                c.run(f"{name}/CodebookStats", {"UNAVAILABLE"}, lambda i, s=sec: call(A, s, "CodebookStats", tokenizer_pb2.CodebookStatsRequest()), N, True)

            def raw(i: int) -> None:  # garbage on the socket: random bytes, a TLS record header + junk, an HTTP/2 preface in clear
                host, port = A.rsplit(":", 1)
                payload = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))),
                           b"\x16\x03\x01" + bytes(rng.getrandbits(8) for _ in range(rng.randint(2, 600))),
                           b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rng.getrandbits(8) for _ in range(64))][i % 3]
                with socket.create_connection((host, int(port)), timeout=3) as s:
                    s.sendall(payload)
                    try:
                        s.recv(4096)
                    except (TimeoutError, ConnectionError):
                        pass
            c.run("raw_garbage_bytes", {"OK"}, raw, N, True, state)

            # tokens on AddItems (good TLS): missing, wrong, malformed, garbage, very long
            def tok_case(name: str, md_of, expected: set[str], n: int = N) -> None:
                c.run(f"token_{name}/AddItems", expected, lambda i: call(A, {"ca": pki["ca"]}, "AddItems", add_req("tk", i), md_of(i)), n, True, state)

            printable = string.ascii_letters + string.digits + string.punctuation + " "
            tok_case("missing", lambda i: None, {"UNAUTHENTICATED"})
            tok_case("empty_value", lambda i: (("authorization", ""),), {"UNAUTHENTICATED"})
            tok_case("scheme_only", lambda i: (("authorization", rng.choice(["Bearer", "Bearer ", "bearer   "])),), {"UNAUTHENTICATED"})
            tok_case("other_scheme", lambda i: (("authorization", f"{rng.choice(['Basic', 'Token', 'Digest', 'Bearer:'])} {token}"),), {"UNAUTHENTICATED"})
            tok_case("no_scheme", lambda i: (("authorization", token),), {"UNAUTHENTICATED"})
            tok_case("other_header", lambda i: ((rng.choice(["x-api-key", "token", "auth"]), token),), {"UNAUTHENTICATED"})
            tok_case("binary_header", lambda i: (("authorization-bin", f"Bearer {token}".encode()),), {"UNAUTHENTICATED"})
            tok_case("wrong", lambda i: (("authorization", f"Bearer {secrets.token_hex(32)}"),), {"PERMISSION_DENIED"})
            tok_case("near_miss", lambda i: (("authorization", "Bearer " + [token + "x", token[:-1], token.upper(), token[1:] + token[0], f"{token} {token}"][i % 5]),),
                     {"PERMISSION_DENIED"})
            tok_case("duplicate_wrong_first", lambda i: (("authorization", "Bearer nope"), ("authorization", f"Bearer {token}")), {"PERMISSION_DENIED"})
            tok_case("garbage", lambda i: (("authorization", "".join(rng.choice(printable) for _ in range(rng.randint(0, 300)))),),
                     {"UNAUTHENTICATED", "PERMISSION_DENIED", "CLIENT_REFUSED"})
            tok_case("bearer_garbage", lambda i: (("authorization", "Bearer " + "".join(rng.choice(printable) for _ in range(rng.randint(1, 300)))),),
                     {"UNAUTHENTICATED", "PERMISSION_DENIED", "CLIENT_REFUSED"})
            tok_case("non_ascii", lambda i: (("authorization", ["Bearer tök€n", "Bearer \x00" + token, "Bearer \n" + token, "Bearer \x7f"][i % 4]),),
                     {"UNAUTHENTICATED", "PERMISSION_DENIED", "CLIENT_REFUSED"})
            for n in (1_000, 7_000, 16_000, 64_000, 1_000_000):  # gRPC's default header limits (8 KiB soft, 16 KiB hard) sit in here
                tok_case(f"long_{n}", lambda i, n=n: (("authorization", "Bearer " + "A" * n),), {"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"},
                         max(1, N // 4))
            c.run("reads_open_without_token/CodebookStats", {"OK"}, lambda i: call(A, {"ca": pki["ca"]}, "CodebookStats", tokenizer_pb2.CodebookStatsRequest()), N, False)
            c.run("health_open/Check", {"OK"}, lambda i: health_pb2_grpc.HealthStub(_sync_channel(A, {"ca": pki["ca"]})).Check(health_pb2.HealthCheckRequest(), timeout=5), N, False)

            # replays: authorized AddItems (these may change state, as stated per case)
            def add(req, timeout: float = 120):
                return call(A, good, "AddItems", req, gmd, timeout)

            replay = {}
            n_before = n_codebooks()
            first_req = tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=f"rp-{k}", fields=fake_item(rng)) for k in range(2)],
                                                      request_id=uuid.uuid4().hex)
            first = add(first_req)
            sids = lambda r: [(s.item_id, list(s.tokens)) for s in r.sids]
            replay["first_commit"] = {"codebook_ref": first.codebook_ref, "new_artifacts": n_codebooks() - n_before}
            n1 = n_codebooks()
            same: list = []
            c.run("replay_same_request_id/AddItems", {"OK"}, lambda i: same.append(add(first_req)), N, True, lambda: n_codebooks())
            replay["same_request_id_same_answer"] = all(r.codebook_ref == first.codebook_ref and sids(r) == sids(first) for r in same)
            again: list = []
            fresh_rid = lambda: tokenizer_pb2.AddItemsRequest(items=first_req.items, request_id=uuid.uuid4().hex)
            c.run("replay_same_items_new_request_id/AddItems", {"OK"}, lambda i: again.append(add(fresh_rid())), N, True, lambda: n_codebooks())
            replay["same_items_same_sids"] = all(sids(r) == sids(first) for r in again)
            no_rid = tokenizer_pb2.AddItemsRequest(items=first_req.items)
            c.run("replay_same_items_no_request_id/AddItems", {"OK"}, lambda i: again.append(add(no_rid)), N, True, lambda: n_codebooks())
            replay["same_items_same_sids"] = all(sids(r) == sids(first) for r in again)
            other_text = lambda i: tokenizer_pb2.AddItemsRequest(
                items=[tokenizer_pb2.NewItem(item_id="rp-0", fields={"title": f"something else {i}"})], request_id=rng.choice(["", uuid.uuid4().hex]))
            c.run("replay_same_id_other_text/AddItems", {"FAILED_PRECONDITION"}, lambda i: add(other_text(i)), N, True, lambda: n_codebooks())
            c.run("replay_request_id_other_items/AddItems", {"FAILED_PRECONDITION"},
                  lambda i: add(add_req("rid-reuse", i, first_req.request_id)), N, True, lambda: n_codebooks())
            c.run("catalog_id/AddItems", {"FAILED_PRECONDITION"}, lambda i: add(tokenizer_pb2.AddItemsRequest(
                items=[tokenizer_pb2.NewItem(item_id=rng.choice(catalog), fields=fake_item(rng))])), N, True, lambda: n_codebooks())
            replay["no_artifacts_from_replays"] = n_codebooks() == n1
            # the same new request sent 8 times at once: one commit, one answer
            conc_req = tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=f"conc-{uuid.uuid4().hex[:6]}", fields=fake_item(rng))],
                                                     request_id=uuid.uuid4().hex)
            n2 = n_codebooks()
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                futs = [ex.submit(add, conc_req) for _ in range(8)]
            outs, codes = [], {}
            for f in futs:
                try:
                    outs.append(f.result())
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1
            replay["concurrent_same_request"] = {"codes": codes, "new_artifacts": n_codebooks() - n2,
                                                 "one_answer": len({(r.codebook_ref, str(sids(r))) for r in outs}) == 1}
            # a deadline that passes first, then the retry with the same request_id
            dl_req = add_req("deadline", 0, uuid.uuid4().hex)
            n3 = n_codebooks()
            try:
                add(dl_req, timeout=0.001)
                dl_first = "OK"
            except grpc.RpcError as e:
                dl_first = e.code().name
            time.sleep(1.0)
            n_mid = n_codebooks()
            retry = add(dl_req)
            replay["deadline_then_retry"] = {"first": dl_first, "artifacts_after_first": n_mid - n3, "retry_ok": bool(retry.sids),
                                             "artifacts_after_retry": n_codebooks() - n3}
            replay["ok"] = (replay["first_commit"]["new_artifacts"] == 1 and replay["same_request_id_same_answer"] and replay["same_items_same_sids"]
                            and replay["no_artifacts_from_replays"] and replay["concurrent_same_request"]["new_artifacts"] == 1
                            and replay["concurrent_same_request"]["one_answer"] and replay["deadline_then_retry"]["artifacts_after_retry"] == 1)
            results["replay"] = replay
            try:
                call(A, good, "CodebookStats", tokenizer_pb2.CodebookStatsRequest())
                alive["A"] = srv.alive()
            except grpc.RpcError:
                alive["A"] = False
        finally:
            exit_codes["A"] = srv.stop()
            results["log_tail_A"] = [ln.rstrip() for ln in srv.tail if "Traceback" in ln or ln.startswith("ERROR")][-10:]
        cases = dict(c.cases)

        # -- server B: mutual TLS + token on every call ------------------------------------------------
        env_b = {"GENREC_TLS_CERT": pki["cert"], "GENREC_TLS_KEY": pki["key"], "GENREC_TLS_CLIENT_CA": pki["ca"],
                 "GENREC_AUTH_TOKEN": token, "GENREC_AUTH_ALL": "1"}
        mgood = {"ca": pki["ca"], "cert": pki["client_cert"], "key": pki["client_key"]}
        srv = Server("tokenizer", root, refs["codebook"], extra=["--set", "tokenizer.encoder=minilm"], env=env_b)
        servers_desc["B"] = "tokenizer, mutual TLS + bearer token on every call (auth_all)"
        c = _Cases("B")
        try:
            _wait_healthy(srv, mgood, "genrec.v1.Tokenizer")
            B = srv.address
            gmd = (("authorization", f"Bearer {token}"),)

            def state_b() -> tuple:
                return n_codebooks(), call(B, mgood, "CodebookStats", tokenizer_pb2.CodebookStatsRequest(), gmd).codebook_ref

            bad_b = {
                "mtls_plaintext_client": None,
                "mtls_no_client_cert": {"ca": pki["ca"]},
                "mtls_client_cert_other_ca": {"ca": pki["ca"], "cert": pki["other_client_cert"], "key": pki["other_client_key"]},
                "mtls_untrusted_server_ca": {"ca": pki["other_ca"], "cert": pki["client_cert"], "key": pki["client_key"]},
            }
            for name, sec in bad_b.items():
                c.run(f"{name}/AddItems", {"UNAVAILABLE"}, lambda i, s=sec: call(B, s, "AddItems", add_req("mt", i), gmd), N, True, state_b)
                c.run(f"{name}/CodebookStats", {"UNAVAILABLE"}, lambda i, s=sec: call(B, s, "CodebookStats", tokenizer_pb2.CodebookStatsRequest(), gmd), N, True)
            c.run("auth_all_missing/CodebookStats", {"UNAUTHENTICATED"}, lambda i: call(B, mgood, "CodebookStats", tokenizer_pb2.CodebookStatsRequest()), N, True)
            c.run("auth_all_wrong/Tokenize", {"PERMISSION_DENIED"}, lambda i: call(B, mgood, "Tokenize", tokenizer_pb2.TokenizeRequest(item_ids=catalog[:3]),
                                                                                    (("authorization", f"Bearer {secrets.token_hex(8)}"),)), N, True)
            c.run("auth_all_missing/AddItems", {"UNAUTHENTICATED"}, lambda i: call(B, mgood, "AddItems", add_req("mb", i)), N, True, state_b)
            c.run("auth_all_wrong/AddItems", {"PERMISSION_DENIED"}, lambda i: call(B, mgood, "AddItems", add_req("mb", i), (("authorization", "Bearer x"),)),
                  N, True, state_b)
            c.run("mtls_health_open_without_token/Check", {"OK"},
                  lambda i: health_pb2_grpc.HealthStub(_sync_channel(B, mgood)).Check(health_pb2.HealthCheckRequest(), timeout=5), N, False)
            c.run("mtls_good/Tokenize", {"OK"}, lambda i: call(B, mgood, "Tokenize", tokenizer_pb2.TokenizeRequest(item_ids=catalog[:3]), gmd), N, False)
            try:
                state_b()
                alive["B"] = srv.alive()
            except grpc.RpcError:
                alive["B"] = False
        finally:
            exit_codes["B"] = srv.stop()
            results["log_tail_B"] = [ln.rstrip() for ln in srv.tail if "Traceback" in ln or ln.startswith("ERROR")][-10:]
        cases |= c.cases

    bad = {n: r["codes"] for n, r in cases.items() if any(k in ("INTERNAL", "UNKNOWN") for k in r["codes"])}
    changed = [n for n, r in cases.items() if r["denied_call"] and r["state_changed"]]
    unexpected = {n: r["codes"] for n, r in cases.items() if r["unexpected"]}
    for r in cases.values():
        if r.get("state_before_after"):
            r["state_before_after"] = [[list(x) if isinstance(x, tuple) else x for x in ba] for ba in r["state_before_after"]]
    summary = {"cases": len(cases), "calls": sum(r["n"] for r in cases.values()), "internal_or_unknown": bad, "state_changed_on_denied": changed,
               "unexpected_statuses": unexpected, "alive_after": alive, "exit_code_after_sigterm": exit_codes, "replay_ok": results.get("replay", {}).get("ok")}
    summary["ok"] = (not bad and not changed and not unexpected and all(alive.values()) and bool(summary["replay_ok"]))
    write("serving_fuzz_security", {"servers": servers_desc, "repeat": N, "seconds": time.time() - t0, "summary": summary,
                                    "replay": results.get("replay"), "cases": cases,
                                    "server_log_errors": {"A": results.get("log_tail_A"), "B": results.get("log_tail_B")}})


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("load")
    lo.add_argument("--clients", type=int, default=100)
    lo.add_argument("--seconds", type=float, default=60)
    lo.add_argument("--wait-ms", type=float, default=5.0, help="batch_wait_ms of the batched run")
    lo.set_defaults(func=cmd_load)
    fz = sub.add_parser("fuzz")
    fz.add_argument("--requests", type=int, default=10_000, help="per service")
    fz.add_argument("--seed", type=int, default=0)
    fz.set_defaults(func=cmd_fuzz)
    fa = sub.add_parser("fault")
    fa.add_argument("--clients", type=int, default=50)
    fa.add_argument("--seconds", type=float, default=30)
    fa.set_defaults(func=cmd_fault)
    se = sub.add_parser("secure", help="Recommend p50/p99 alone and under load, TLS off / on (/ + token / mTLS) in one run")
    se.add_argument("--clients", type=int, default=100)
    se.add_argument("--seconds", type=float, default=60)
    se.add_argument("--sequential", type=int, default=500, help="requests sent one at a time (after --warmup)")
    se.add_argument("--warmup", type=int, default=20)
    se.add_argument("--fresh", type=int, default=50, help="requests each on a new channel (connect + TLS handshake + call)")
    se.add_argument("--modes", default="plaintext,tls,tls+token", help=f"comma list of {', '.join(SECURE_MODES)}")
    se.add_argument("--registry", default=None, help="an existing registry root (default: build one with random weights)")
    se.add_argument("--generator", default=None, help="generator ref in --registry (default generator/industrial-tiger@latest)")
    se.add_argument("--wait-ms", type=float, default=5.0, help="serving.batch_wait_ms of the generator")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--beam", type=int, default=20)
    se.add_argument("--seed", type=int, default=0)
    se.set_defaults(func=cmd_secure)
    li = sub.add_parser("live", help="load on Recommend while AddItems adds items every second; time until each is recommendable")
    li.add_argument("--clients", type=int, default=100)
    li.add_argument("--seconds", type=float, default=60)
    li.add_argument("--add-every", type=float, default=1.0, help="seconds between AddItems calls")
    li.add_argument("--items-per-add", type=int, default=1)
    li.add_argument("--add-timeout", type=float, default=60.0, help="AddItems deadline (s)")
    li.add_argument("--probe-timeout", type=float, default=60.0, help="an item not recommendable this long after AddItems returned counts as never")
    li.add_argument("--refresh-s", type=float, default=0.0, help="serving.refresh_s of the generator (0 = swap on the first unknown item)")
    li.add_argument("--wait-ms", type=float, default=5.0, help="serving.batch_wait_ms of the generator")
    li.add_argument("--embeddings", default=None, help=".npy cache of the catalog's MiniLM embeddings (made and saved there when missing)")
    li.add_argument("--seed", type=int, default=0)
    li.set_defaults(func=cmd_live)
    fs = sub.add_parser("fuzz-security", help="TLS / mTLS / bearer-token / AddItems-replay fuzz against tokenizer services")
    fs.add_argument("--repeat", type=int, default=50, help="calls per case")
    fs.add_argument("--embeddings", default=None, help=".npy cache of the catalog's MiniLM embeddings (made and saved there when missing)")
    fs.add_argument("--seed", type=int, default=0)
    fs.set_defaults(func=cmd_fuzz_security)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
