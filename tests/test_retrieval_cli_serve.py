"""`genrec retrieval build|query` and `genrec serve retrieval` as a real subprocess (SIGTERM stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from components.cli import main
from components.serving.pb.genrec.v1 import retrieval_pb2, retrieval_pb2_grpc
from components.tokenizer.encoders import save_embeddings


@pytest.fixture(scope="module")
def built(tmp_path_factory, ml100k):
    from components.registry import Registry

    root = tmp_path_factory.mktemp("reg")
    reg = Registry(root / "artifacts")
    dart = ml100k.save(reg)
    emb = np.random.default_rng(0).normal(size=(ml100k.n_items, 16)).astype(np.float32)
    save_embeddings(reg, emb, dart.ref, "ml-100k", "random", {"test": True})
    return root


def test_cli_build_and_query(built, monkeypatch, capsys):
    monkeypatch.chdir(built)
    args = ["--set", "data.dataset=ml-100k"]
    assert main(args + ["retrieval", "build"]) == 0
    assert "943 users" in capsys.readouterr().out
    assert main(args + ["retrieval", "query", "--user", "196", "-v", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.split("\t")[2] in {"bm25", "cf", "both"} for line in lines)
    assert main(args + ["retrieval", "query", "--user", "nobody"]) == 2
    assert "unknown user" in capsys.readouterr().err


def test_serve_subprocess_and_sigterm(built):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "--set", "data.dataset=ml-100k", "serve", "retrieval", "--port", "0", "--grace", "1"],
        cwd=built, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        port = None
        deadline = time.time() + 120
        while time.time() < deadline and port is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail("server exited before serving")
            if "serving" in line and " on " in line:
                port = int(line.rsplit(":", 1)[1])
        assert port, "server never reported its port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = retrieval_pb2_grpc.RetrievalStub(ch)
            r = stub.SimilarUsers(retrieval_pb2.SimilarUsersRequest(user_id="196", v=5), timeout=30)
            assert len(r.users) == 5 and r.index_ref.startswith("retrieval-index/ml-100k@")
            with pytest.raises(grpc.RpcError) as e:
                stub.SimilarUsers(retrieval_pb2.SimilarUsersRequest(user_id="nobody"), timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
