"""The ``rebalance`` stage through the CLI: artifacts in, rebalanced codebook + metrics + plots out;
the disabled pass-through; a codebook whose stored tree disagrees with its SIDs."""

import json

import numpy as np
import pytest

from components.cli import main
from components.tokenizer.codebook import Codebook
from tests.conftest import SHARED_DATA
from tests.helpers_codebook import reference_codebook


@pytest.fixture(scope="module")
def stage_registry(tmp_path_factory, industrial):
    from components.registry import Registry

    root = tmp_path_factory.mktemp("stage") / "artifacts"
    reg = Registry(root)
    ds_art = industrial.save(reg)
    cb = reference_codebook(SHARED_DATA / "Industrial_and_Scientific/reference/minionerec.index.json", industrial.item_ids, ds_art.ref)
    cb_art = cb.save(reg, "industrial-ref", parents=[ds_art], params={"source": "minionerec"})
    return reg, cb_art


def _params(tmp_path, **rebalance):
    lines = ["data:", "  dataset: industrial", "rebalance:", "  codebook: industrial-ref"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in rebalance.items()]
    p = tmp_path / "params.yaml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_cli_rebalance_writes_codebook_metrics_and_plots(stage_registry, tmp_path, capsys):
    reg, cb_art = stage_registry
    m, png, csv = tmp_path / "m.json", tmp_path / "p.png", tmp_path / "p.csv"
    rc = main(["--params", _params(tmp_path, levels=[1]), "--registry", str(reg.root), "rebalance",
               "--metrics-out", str(m), "--plot-out", str(png), "--csv-out", str(csv)])
    assert rc == 0, capsys.readouterr().err
    art = reg.load("codebook/industrial-crab@latest")
    assert cb_art.ref in art.manifest.parents and art.params["rebalance"]["levels"] == [1]
    new = Codebook.from_artifact(art)
    old = Codebook.from_artifact(cb_art)
    assert new.sizes[0] == old.sizes[0] and new.sizes[2] == old.sizes[2] and new.sizes[1] > old.sizes[1]  # middle level only
    assert new.n_collisions() == 0
    metrics = json.loads(m.read_text())
    lv1 = metrics["levels"]["level_1"]
    assert lv1["top_share_after"] < lv1["top_share_before"] and lv1["gini_after"] < lv1["gini_before"]
    assert metrics["levels"]["level_0"]["top_share_after"] == metrics["levels"]["level_0"]["top_share_before"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert csv.read_text().splitlines()[0] == "level,rank,before,after"
    stats = art.load_json("stats.json")
    assert stats["split_levels"] == [1] and stats["semantic_levels"] == 3


def test_cli_rebalance_disabled_passes_input_through(stage_registry, tmp_path):
    reg, cb_art = stage_registry
    m = tmp_path / "m.json"
    assert main(["--params", _params(tmp_path, enabled=False, name="passthru"), "--registry", str(reg.root),
                 "rebalance", "--metrics-out", str(m)]) == 0
    art = reg.load("codebook/passthru@latest")
    assert art.params["rebalance"]["enabled"] is False and cb_art.ref in art.manifest.parents
    np.testing.assert_array_equal(art.load_numpy("sids.npy"), cb_art.load_numpy("sids.npy"))
    assert json.loads(m.read_text())["enabled"] is False


def test_cli_rejects_tree_inconsistent_codebook_and_bad_params(stage_registry, tmp_path, capsys):
    reg, cb_art = stage_registry
    sids = cb_art.load_numpy("sids.npy")
    with reg.create("codebook", "broken", params={}) as w:
        w.write_numpy("sids.npy", sids)
        w.write_json("codebook.json", cb_art.load_json("codebook.json"))
        tree = cb_art.load_numpy("tree.npz")
        tree["edges_1"] = tree["edges_1"][1:]  # drop one parent-child edge
        w.write_npz("tree.npz", **tree)
    assert main(["--params", _params(tmp_path, codebook="broken"), "--registry", str(reg.root), "rebalance"]) == 2
    assert "stored tree at level 1 is inconsistent with the SIDs" in capsys.readouterr().err
    assert main(["--params", _params(tmp_path, split_ratio=1.5), "--registry", str(reg.root), "rebalance"]) == 2
    assert "rebalance.split_ratio" in capsys.readouterr().err
    assert main(["--params", _params(tmp_path, max_splits=1), "--registry", str(reg.root), "rebalance"]) == 2
    assert "rebalance.max_splits" in capsys.readouterr().err
