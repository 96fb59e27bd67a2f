"""`genrec serve all` end to end (issue 17): the four services start wired from params, an item
added through the tokenizer is recommended by the generator, SIGTERM stops everything, and after a
restart the item is still there. Real subprocesses, the real offline MiniLM encoder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from components.cli import main
from components.generator.checkpoint import save_checkpoint
from components.registry import Registry
from components.serving.pb.genrec.v1 import generator_pb2, generator_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from components.tokenizer.encoders import SentenceTransformerEncoder, embed_dataset, save_embeddings
from components.tokenizer.online import EMBEDDING_CONFIG, embedding_config
from components.tokenizer.params import TokenizerParams
from components.tokenizer.tokenize import build_codebook
from tests.generator_helpers import synthetic_dataset, tiny_model

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
N_ITEMS = 40
SETS = ["data.dataset=synth", "tokenizer.method=rqkmeans", "serving.ports={tokenizer: 0, retrieval: 0, rebalancer: 0, generator: 0}",
        "serving.batch_wait_ms=0"]


@pytest.fixture(scope="module")
def stack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack") / "artifacts"
    reg = Registry(root)
    ds = synthetic_dataset(n_items=N_ITEMS, n_users=80, seq_len=8, max_history=4)
    dart = ds.save(reg)
    p = TokenizerParams(method="rqkmeans", levels=2, codebook_size=4, niter=5, encoder="minilm")
    enc = SentenceTransformerEncoder(None, device="cpu", progress=False)
    emb = embed_dataset(ds, p, enc)
    save_embeddings(reg, emb, dart.ref, "synth", enc.name, {}, config=embedding_config(p, enc.name))
    cb = build_codebook(emb, ds.item_ids, p, seed=0)
    cb.stats["encoder"] = enc.name
    cb.stats[EMBEDDING_CONFIG] = embedding_config(p, enc.name)
    cart = cb.save(reg, "synth-rqkmeans", parents=[dart.ref], params={})
    save_checkpoint(reg, "synth-tiger", tiny_model("tiger", cb.sids, cb.sizes, max_items=8), cart.ref, dart.ref, {},
                    popularity=ds.train_item_counts())
    assert main(["--params", PARAMS, "--registry", str(root), "--set", "data.dataset=synth", "retrieval", "build"]) == 0
    return root


def _start(root: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    cmd = [sys.executable, "-m", "components.cli", "--params", PARAMS, "--registry", str(root)]
    for s in SETS:
        cmd += ["--set", s]
    proc = subprocess.Popen([*cmd, "serve", "all", "--grace", "1", "--timeout", "150"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={"PYTHONUNBUFFERED": "1", **__import__("os").environ})
    deadline, lines = time.time() + 400, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail("serve all exited before it was ready:\n" + "".join(lines[-30:]))
        lines.append(line)
        if line.startswith("serve all: ready "):
            return proc, dict(kv.split("=", 1) for kv in line.split("ready ", 1)[1].split())
    proc.kill()
    pytest.fail("serve all never got ready:\n" + "".join(lines[-30:]))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _down(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return False
    except grpc.RpcError as e:
        return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _recommend_all(address: str, history: list[str]) -> list[str]:
    with grpc.insecure_channel(address) as ch:
        r = generator_pb2_grpc.GeneratorStub(ch).Recommend(generator_pb2.RecommendRequest(history=history, k=N_ITEMS + 2, beam=N_ITEMS + 2), timeout=120)
    return list(r.item_ids)


def test_serve_all_add_items_recommend_restart(stack_root):
    proc, addr = _start(stack_root)
    try:
        assert set(addr) == {"tokenizer", "retrieval", "rebalancer", "generator"}
        for svc, name in [("retrieval", "genrec.v1.Retrieval"), ("rebalancer", "genrec.v1.Rebalancer")]:
            with grpc.insecure_channel(addr[svc]) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert r.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(addr["tokenizer"]) as ch:
            added = tokenizer_pb2_grpc.TokenizerStub(ch).AddItems(tokenizer_pb2.AddItemsRequest(items=[
                tokenizer_pb2.NewItem(item_id="new-drill", fields={"title": "cordless drill with two batteries"}),
                tokenizer_pb2.NewItem(item_id="new-gloves", fields={"title": "nitrile gloves, box of 100"}),
            ]), timeout=120)
        assert added.codebook_ref.startswith("codebook/synth-rqkmeans-live@") and len(added.sids) == 2
        items = _recommend_all(addr["generator"], ["new-drill", "i0"])  # a history with a new item is understood
        assert {"new-drill", "new-gloves"} <= set(items) and len(set(items)) == N_ITEMS + 2
    finally:
        if proc.poll() is None:
            out = _stop(proc)
            assert "stopping" in out
    assert all(_down(a) for a in addr.values())  # every service went down with the stack

    proc, addr = _start(stack_root)  # restart: the live items are still there, at once
    try:
        items = _recommend_all(addr["generator"], ["new-gloves"])
        assert {"new-drill", "new-gloves"} <= set(items)
        proc.kill()  # the parent dies without stopping them: each service sees it and stops (no orphans)
        proc.communicate(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and not all(_down(a) for a in addr.values()):
            time.sleep(0.5)
        assert all(_down(a) for a in addr.values())
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_serve_all_refuses_a_missing_artifact_before_starting(tmp_path, capsys):
    rc = main(["--params", PARAMS, "--registry", str(tmp_path / "empty"), "--set", "data.dataset=synth", "serve", "all"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "generator/synth-tiger@latest not found" in err and "genrec train" in err


def test_serve_all_refuses_plaintext_off_loopback(tmp_path, capsys):
    rc = main(["--params", PARAMS, "--registry", str(tmp_path / "empty"), "--set", "data.dataset=synth", "serve", "all", "--host", "0.0.0.0"])
    assert rc == 2 and "TLS" in capsys.readouterr().err
