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
    """``genrec serve SERVICE`` in its own process; the port is read from its first line."""

    def __init__(self, service: str, root: Path, artifact: str, extra: list[str] = ()):
        cmd = [sys.executable, "-m", "components.cli", "--registry", str(root), *extra, "serve", service, "--port", "0", "--artifact", artifact]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + 180
        self.port = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{service} server exited ({self.proc.returncode})")
            if "serving" in line and " on " in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        if self.port is None:
            raise RuntimeError(f"{service} server did not start")
        self.address = f"127.0.0.1:{self.port}"

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


async def _load(address: str, make_request, clients: int, seconds: float, stop_hook=None) -> dict:
    from components.serving.pb.genrec.v1 import generator_pb2_grpc

    lat, errors, codes, flagged = [], 0, {}, 0
    t_end = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(address) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)

        async def client(cid: int) -> None:
            nonlocal errors, flagged
            rng = random.Random(cid)
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                try:
                    r = await stub.Recommend(make_request(rng), timeout=30)
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
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
