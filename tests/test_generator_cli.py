"""`genrec import-sids | train | rank | recommend` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json

import numpy as np

from components.cli import main
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import random_sids, synthetic_dataset

TINY = ["generator.tiger.d_model=32", "generator.tiger.d_kv=8", "generator.tiger.d_ff=64", "generator.tiger.num_layers=1",
        "generator.tiger.num_decoder_layers=1", "generator.tiger.num_heads=2", "generator.train.epochs=2",
        "generator.train.max_steps_per_epoch=3", "generator.train.batch_size=32", "generator.train.valid_samples=8",
        "generator.train.device=cpu", "generator.train.num_threads=1", "generator.decode.max_samples=10", "generator.decode.k=5", "generator.decode.beam=6",
        "data.dataset=synth"]


def _sets(extra=()):
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def test_cli_train_rank_recommend(tmp_path, registry, capsys):
    ds = synthetic_dataset(n_items=12, n_users=16)
    ds_art = ds.save(registry)
    sizes = [3, 2, 2]
    cb = Codebook(sids=random_sids(sizes, 12), sizes=sizes, item_ids=ds.item_ids, method="random", dataset_ref=ds_art.ref)
    cb.save(registry, "synth-random", parents=[ds_art.ref], params={})
    reg = ["--registry", str(registry.root)]
    run_dir = str(tmp_path / "run")
    assert main([*reg, *_sets(), "train", "--no-progress", "--run-dir", run_dir, "--metrics-out", str(tmp_path / "train.json")]) == 0
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["epochs_run"] == 2 and m["checkpoint"].startswith("generator/synth-tiger@") and len(m["history"]) == 2
    art = registry.load("generator/synth-tiger@latest")
    assert any(p.startswith("codebook/synth-random@") for p in art.manifest.parents)  # latest codebook of the dataset
    assert main([*reg, *_sets(), "rank", "--no-progress", "--metrics-out", str(tmp_path / "rank.json")]) == 0
    r = json.loads((tmp_path / "rank.json").read_text())
    assert r["test"]["n"] == 10 and 0.0 <= r["test"]["ndcg@5"] <= r["test"]["hr@5"] <= 1.0 and "hr@10" not in r["test"]
    rk = registry.load("rankings/synth-tiger@latest").load_numpy("rankings.npz")
    assert rk["test_topk"].shape == (10, 5) and rk["test_topk"].dtype == np.int32
    assert all(len(set(row)) == 5 for row in rk["test_topk"].tolist())
    capsys.readouterr()
    assert main([*reg, *_sets(), "recommend", "--history", "i1,i2", "--history", "", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["fallback"] for o in out] == [False, True] and all(len(o["items"]) == 3 for o in out)
    assert main([*reg, *_sets(), "recommend", "--history", "i1,bogus", "-k", "3"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_train_without_codebook_says_what_to_do(registry, capsys, tmp_path):
    synthetic_dataset(n_items=12, n_users=16).save(registry)
    rc = main(["--registry", str(registry.root), *_sets(["generator.reference_sids=null"]), "train", "--no-progress",
               "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "no codebook for dataset/synth" in capsys.readouterr().err


def test_set_flags_win_over_preset():
    from components.cli import Context, build_parser
    from components.generator.commands import _gp

    args = build_parser().parse_args(["--set", "generator.preset=smoke", "--set", "generator.train.epochs=7", "artifacts", "list"])
    gp = _gp(Context(args))
    assert gp.train.epochs == 7 and gp.tiger.d_model == 16 and gp.train.max_steps_per_epoch == 3
