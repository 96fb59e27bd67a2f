"""BentoML bundle: `genrec bento import` fills the model store; the service class answers
in-process; a real `bentoml serve` subprocess answers bentoml.SyncHTTPClient."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.generator.checkpoint import save_checkpoint
from components.registry import Registry
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import random_sids, tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bento_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bento")
    home = root / "bentoml"
    old = {k: os.environ.get(k) for k in ("BENTOML_HOME", "GENREC_BENTO_MODEL", "BENTOML_DO_NOT_TRACK")}
    os.environ.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    reg = Registry(root / "artifacts")
    sizes = [4, 4, 3]
    ids = [f"i{k}" for k in range(40)]
    sids = random_sids(sizes, len(ids), seed=1)
    cb = Codebook(sids=sids, sizes=sizes, item_ids=ids, method="random")
    cart = cb.save(reg, "toy", parents=[], params={})
    gart = save_checkpoint(reg, "toy-tiger", tiny_model("tiger", sids, sizes, max_items=5), cart.ref, "dataset/toy@0", {}, popularity=list(range(40)))
    from components.cli import main

    assert main(["--registry", str(reg.root), "bento", "import", gart.ref]) == 0
    import bentoml

    tag = str(bentoml.models.get("genrec-generator:latest").tag)
    os.environ["GENREC_BENTO_MODEL"] = tag
    yield {"home": home, "tag": tag, "ref": gart.ref, "ids": ids}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_service_in_process(bento_env):
    import components.serving.bento as bento

    bento = importlib.reload(bento)  # picks up GENREC_BENTO_MODEL
    svc = bento.GenRecService()
    ids = bento_env["ids"]
    reqs = [bento.RecommendRequest(history=ids[:3], k=5), bento.RecommendRequest(history=[], k=3),
            bento.RecommendRequest(history=["nope"], k=3), bento.RecommendRequest(history=ids[:2], k=0)]
    out = svc.recommend(reqs)
    assert len(out) == 4
    assert len(out[0].item_ids) == 5 and set(out[0].item_ids) <= set(ids) and out[0].error is None
    assert out[0].model_ref == bento_env["ref"]
    assert out[1].fallback_used and out[1].item_ids == ["i39", "i38", "i37"]  # popularity 0..39
    assert "nope" in out[2].error and "k=0" in out[3].error  # bad requests fail alone
    assert svc.info()["n_items"] == 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bentoml_serve_subprocess(bento_env):
    import bentoml

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "components.serving.bento:GenRecService", "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", timeout=60, server_ready_timeout=180) as client:
            out = client.recommend(requests=[{"history": bento_env["ids"][:4], "k": 4}, {"history": ["nope"], "k": 2}])
            assert len(out) == 2
            assert len(out[0]["item_ids"]) == 4 and out[0]["error"] is None
            assert "nope" in out[1]["error"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_bentoml_build(bento_env):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(REPO / "bentofile.yaml"), str(REPO)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = subprocess.run([sys.executable, "-m", "bentoml", "list", "-o", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert '"genrec:' in listed.stdout


def test_recommend_batch_passes_the_user_for_self_exclusion():
    """GenPlugin excludes the requesting user from its neighbours (as in training): the BentoML
    request carries ``user_id`` to ``Recommender.recommend(users=...)``."""
    import numpy as np

    from components.generator.recommend import Recommendations
    from components.serving.bento import RecommendRequest, recommend_batch

    calls = []

    class Rec:
        def recommend(self, histories, **kw):
            calls.append(kw)
            n = len(histories)
            return Recommendations([["a"]] * n, np.zeros((n, 1), np.int32), np.zeros((n, 1), np.float32), np.zeros(n, bool), None)

    out = recommend_batch(Rec(), "generator/x@1", [RecommendRequest(history=["1"], k=1, user_id="u7"), RecommendRequest(history=["2"], k=1)])
    assert [o.item_ids for o in out] == [["a"], ["a"]] and calls[0]["users"] == ["u7", None]
    recommend_batch(Rec(), "generator/x@1", [RecommendRequest(history=["1"], k=1)])
    assert "users" not in calls[-1]  # no user given: the head's own behaviour
