"""Experiments: variants as params, runs per seed, resume, the aggregated report (smoke preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from components.cli import main
from components.experiment.aggregate import aggregate, change_vs, fmt_change, fmt_mean_std, relative_change, significance
from components.experiment.params import ExperimentParams
from components.experiment.runner import run_name, seed_list
from components.params import ParamsError, load_params
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import random_sids, synthetic_dataset

# ---- seed aggregation: hand-computed ---------------------------------------------------------------


def test_aggregate_mean_sample_std_and_noise_flags():
    runs = [{"HR@10": 0.10, "DGU@10": 0.50, "tag": "x"}, {"HR@10": 0.12, "DGU@10": 0.40}, {"HR@10": 0.14, "DGU@10": 0.30}]
    a = aggregate(runs)
    assert "tag" not in a
    assert a["HR@10"]["mean"] == pytest.approx(0.12) and a["HR@10"]["n"] == 3
    # sample std (ddof=1) of 0.10, 0.12, 0.14 = 0.02 (population std would be 0.01633)
    assert a["HR@10"]["std"] == pytest.approx(0.02)
    assert a["DGU@10"]["std"] == pytest.approx(0.1)
    ref = {"mean": 0.12, "std": 0.02, "n": 3}
    assert significance({"mean": 0.17, "std": 0.01, "n": 3}, ref) == "sig"  # |0.05| >= 2 * 0.02
    assert significance({"mean": 0.155, "std": 0.01, "n": 3}, ref) == "n.s."  # |0.035| < 0.04
    assert significance({"mean": 0.5, "std": 0.0, "n": 1}, ref) == "1 seed"
    assert relative_change(0.09, 0.12) == pytest.approx(-0.25) and relative_change(1.0, 0.0) is None
    assert fmt_mean_std(a["HR@10"]) == "0.1200 ± 0.0200" and fmt_mean_std({"mean": 0.5, "std": 0.0, "n": 1}) == "0.5000"
    assert fmt_change({"change": -0.25, "flag": "sig"}) == "-25.0%" and fmt_change({"change": 0.1, "flag": "n.s."}) == "+10.0% (n.s.)"


def test_change_vs_reference():
    agg = {"tiger": aggregate([{"HR@10": 0.10, "DGU@10": 0.50}, {"HR@10": 0.12, "DGU@10": 0.52}]),
           "crab": aggregate([{"HR@10": 0.11, "DGU@10": 0.30}, {"HR@10": 0.11, "DGU@10": 0.32}])}
    c = change_vs(agg, "tiger", 10)
    assert list(c) == ["crab"]
    # DGU: 0.31 vs 0.51 -> -39.2%; stds 0.01414 each -> |0.2| >= 0.028: significant
    assert c["crab"]["DGU@10"]["change"] == pytest.approx((0.31 - 0.51) / 0.51)
    assert c["crab"]["DGU@10"]["flag"] == "sig"
    # HR: 0.11 vs 0.11 -> 0%, within noise
    assert c["crab"]["HR@10"]["change"] == pytest.approx(0.0) and c["crab"]["HR@10"]["flag"] == "n.s."
    with pytest.raises(ValueError, match="reference variant"):
        change_vs(agg, "nope", 10)


# ---- params: bad variants fail naming the key -------------------------------------------------------


@pytest.mark.parametrize("block, msg", [
    ({"variants": {"a": {"init_from": "b"}}, "reference": "a"}, "a.init_from: unknown variant 'b'"),
    ({"variants": {"a": {"init_from": "b"}, "b": {"init_from": "a"}}, "reference": "a"}, "warm-start cycle"),
    ({"variants": {"a": {"kind": "baseline", "method": "sasrec", "codebook": "crab"}}, "reference": "a"}, "takes only method"),
    ({"variants": {"a": {"kind": "baseline", "method": "bpr"}}, "reference": "a"}, "needs method in"),
    ({"variants": {"a": {}}, "reference": "a", "pipeline": ["zz"]}, "pipeline: unknown variant"),
    ({"variants": {"a": {}}, "reference": "b"}, "reference: unknown variant"),
    ({"variants": {"A B": {}}, "reference": "A B"}, "variant names must match"),
    ({"variants": {"a": {}}, "reference": "a", "seeds": 0}, "seeds"),
    ({"variants": {"a": {}, "a-s2025": {}}, "reference": "a"}, "collides with another variant's seed run"),
    ({"variants": {"sasrec": {}}, "reference": "sasrec"}, "cannot take a baseline's name"),
    ({"variants": {"a": {"kind": "baseline", "method": "sasrec"}, "b": {"kind": "baseline", "method": "sasrec"}}, "reference": "a"},
     "named by several variants"),
    ({"variants": {"a": {"label": "x"}, "b": {"label": "x"}}, "reference": "a"}, "duplicate report labels"),
    ({"variants": {"tiger": {}}, "reference": "tiger", "pipeline": ["tiger"]}, "always runs"),
    ({"variants": {"tiger": {}, "b": {}, "c": {"init_from": "b"}}, "reference": "tiger", "pipeline": ["c"]}, "only from tiger"),
])
def test_bad_experiment_params(tmp_path, block, msg):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"experiment": block}))
    with pytest.raises(ParamsError, match="experiment") as e:
        load_params(p)
    assert msg in str(e.value)


def test_seed_list_and_names():
    assert seed_list(7, 3) == [7, 8, 9]
    with pytest.raises(ValueError, match="seeds"):
        seed_list(7, 0)
    assert run_name("ds", "tiger", 7, 7) == "ds-tiger" and run_name("ds", "tiger", 8, 7) == "ds-tiger-s8"


def test_repo_params_variants_are_valid():
    ep = load_params("params.yaml").experiment
    assert isinstance(ep, ExperimentParams)
    assert {"tiger", "tiger-crab", "tiger-rw", "tiger-care", "tiger-genplugin", "tiger-flexcode", "tiger-rqkmeans", "decoder-lm", "stacked",
            "popular", "sasrec", "sasrec-rr", "sasrec-rw"} <= set(ep.variants)
    assert ep.variants["tiger-crab"].init_from == "tiger" and ep.variants["tiger-crab"].codebook == "crab"
    # the equal-budget control: the same parent, schedule and parameter set as the stacks it controls, on TIGER's own SIDs
    cont = ep.variants["tiger-cont"]
    assert cont.init_from == "tiger" and cont.codebook == "base" and not cont.generator.get("heads")
    for v in ("crab-care", "stacked"):
        assert ep.variants[v].init_from == cont.init_from and ep.variants[v].generator["finetune"] == cont.generator["finetune"]


# ---- end to end on a tiny dataset (smoke preset) -----------------------------------------------------

SMOKE = ["data.dataset=synth", "generator.preset=smoke", "generator.train.device=cpu", "generator.train.num_threads=1",
         "generator.decode.max_samples=0", "generator.decode.k=5", "generator.decode.beam=6", "evaluation.ks=[1,5]",
         "evaluation.report_k=5", "evaluation.topk=5", "evaluation.baselines.sasrec.epochs=1", "tokenizer.method=balanced"]


def _experiment_params(tmp_path, variants, **extra):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"experiment": {"variants": variants, "reference": "tiger", **extra}}))
    return p


def _args(registry, params, extra=()):
    out = ["--registry", str(registry.root), "--params", str(params)]
    for s in [*SMOKE, *extra]:
        out += ["--set", s]
    return out


@pytest.fixture
def synth(registry):
    ds = synthetic_dataset(n_items=12, n_users=20)
    ds_art = ds.save(registry)
    sizes = [3, 2, 2]
    cb = Codebook(sids=random_sids(sizes, 12), sizes=sizes, item_ids=ds.item_ids, method="balanced", dataset_ref=ds_art.ref)
    cb.save(registry, "synth-balanced", parents=[ds_art.ref], params={})
    return ds


VARIANTS = {
    "popular": {"kind": "baseline", "method": "popular"},
    "tiger": {},
    "tiger-rw": {"generator": {"train": {"reweight_power": 0.5}}},
    "tiger-ft": {"init_from": "tiger", "generator": {"train": {"epochs": 1, "lr": 0.001}}},
}


def test_experiment_run_seeds_resume_and_report(tmp_path, registry, synth, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _experiment_params(tmp_path, VARIANTS)
    out = tmp_path / "out"
    rep = ["--metrics-out", str(out / "m.json"), "--plots-dir", str(out / "plots"), "--report", str(out / "r.md")]
    assert main([*_args(registry, params), "experiment", "run", "--seeds", "2", "--no-progress", *rep]) == 0
    text = capsys.readouterr().out
    assert "8 runs (0 finished, 8 to run)" in text and "expected time" in text
    # names: the params seed gets the plain name, other seeds a -s<seed> suffix
    for v in ("tiger", "tiger-rw", "tiger-ft", "popular"):
        for name in (f"synth-{v}", f"synth-{v}-s2025"):
            art = registry.load(f"rankings/{name}@latest")
            assert art.meta["run_key"] and art.meta["seed"] in (2024, 2025)
    for v in ("tiger", "tiger-rw", "tiger-ft"):
        assert registry.load(f"generator/synth-{v}-s2025@latest").meta["seed"] == 2025
    # the warm-started variant was initialised from the same seed's tiger checkpoint
    ft = registry.load("generator/synth-tiger-ft-s2025@latest")
    assert ft.params["init_from"] == registry.load("rankings/synth-tiger-s2025@latest").meta["checkpoint"]
    assert ft.params["init_from"].startswith("generator/synth-tiger-s2025@")
    rw = registry.load("generator/synth-tiger-rw@latest")
    assert rw.params["generator"]["train"]["reweight_power"] == 0.5 and rw.params["generator"]["tiger"]["d_model"] == 16  # smoke size
    m = json.loads((out / "m.json").read_text())
    assert set(m["methods"]) == set(VARIANTS) and m["n_seeds"]["tiger"] == 2 and m["seeds"] == [2024, 2025]
    per = m["per_seed"]["tiger"]
    hr = [per["2024"]["HR@5"], per["2025"]["HR@5"]]
    assert m["methods"]["tiger"]["HR@5"] == pytest.approx(np.mean(hr)) and m["std"]["tiger"]["HR@5"] == pytest.approx(np.std(hr, ddof=1))
    assert set(m["change_vs"]) == {"popular", "tiger-rw", "tiger-ft"} and "DGU@5" in m["change_vs"]["tiger-rw"]
    # the paired per-user test on all users is the difference of the seed means (HR is a per-user mean, DGU a per-seed mean)
    assert set(m["paired_vs"]) == {"popular", "tiger-rw", "tiger-ft"}
    for key in ("HR@5", "NDCG@5", "DGU@5", "MGU@5"):
        p = m["paired_vs"]["tiger-rw"][key]
        assert p["delta"] == pytest.approx(m["methods"]["tiger-rw"][key] - m["methods"]["tiger"][key], abs=1e-9)
        assert p["low"] <= p["delta"] <= p["high"] and p["n_users"] == per["2024"]["n"] and p["flag"] in ("sig", "n.s.")
    md = (out / "r.md").read_text()
    assert "CRAB Table 1 layout" in md and "Change vs tiger" in md and "±" in md and "Paired per-user test vs tiger" in md
    for png in ("accuracy_bias.png", "exposure.png", "token_bias.png"):
        assert (out / "plots" / png).stat().st_size > 0
    assert len((out / "plots" / "accuracy_bias.csv").read_text().splitlines()) == 1 + 8

    # resume: everything finished is skipped
    assert main([*_args(registry, params), "experiment", "run", "--seeds", "2", "--no-progress", "--no-report"]) == 0
    assert "8 runs (8 finished, 0 to run)" in capsys.readouterr().out
    # a changed variant block reruns that variant and the variants warm-started from it, nothing else
    assert main([*_args(registry, params, ["generator.train.lr=0.002"]), "experiment", "run", "--seeds", "1", "--dry-run",
                 "--variants", "tiger", "tiger-ft", "popular"]) == 0
    assert "3 runs (1 finished, 2 to run)" in capsys.readouterr().out


def test_experiment_errors_name_the_key(tmp_path, registry, synth, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _experiment_params(tmp_path, VARIANTS)
    assert main([*_args(registry, params), "experiment", "run", "--variants", "nope", "--dry-run"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    assert main([*_args(registry, params), "experiment", "run", "--seeds", "0", "--dry-run"]) == 2
    assert "seeds" in capsys.readouterr().err
    bad = _experiment_params(tmp_path, {"tiger": {"generator": {"train": {"epochz": 3}}}})
    assert main([*_args(registry, bad), "experiment", "run", "--dry-run"]) == 2
    assert "generator.train.epochz: unknown key" in capsys.readouterr().err
    crab = _experiment_params(tmp_path, {"tiger": {}, "c": {"codebook": "codebook/synth-crab@latest", "init_from": "tiger"}})
    assert main([*_args(registry, crab), "experiment", "run", "--variants", "c"]) == 2
    err = capsys.readouterr().err
    assert "codebook/synth-crab@latest does not exist" in err


def test_only_seeds_runs_one_seed_with_the_full_lists_names_and_parents(tmp_path, registry, synth, capsys, monkeypatch):
    """`--only-seeds 2025` (one core or machine per seed): the plan holds that seed's runs only, named
    and warm-started as in the full seed list (-s2025, its own tiger); a seed outside the list is refused."""
    monkeypatch.chdir(tmp_path)
    params = _experiment_params(tmp_path, VARIANTS)
    assert main([*_args(registry, params), "experiment", "run", "--seeds", "2", "--only-seeds", "2025", "--dry-run",
                 "--variants", "tiger", "tiger-ft"]) == 0
    text = capsys.readouterr().out
    assert "2 runs (0 finished, 2 to run)" in text
    assert "synth-tiger-s2025" in text and "synth-tiger-ft-s2025" in text
    assert "synth-tiger " not in text and "synth-tiger-ft " not in text  # the params seed's runs are not planned
    assert main([*_args(registry, params), "experiment", "run", "--seeds", "2", "--only-seeds", "2026", "--dry-run"]) == 2
    assert "--only-seeds [2026]" in capsys.readouterr().err


def test_paper_preset_without_gpu_is_refused_before_training(tmp_path, registry, synth, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = _experiment_params(tmp_path, VARIANTS)
    assert main([*_args(registry, params, ["generator.preset=paper", "generator.train.device=auto"]), "experiment", "run", "--dry-run"]) == 2
    assert "generator.preset=paper" in capsys.readouterr().err
    assert main([*_args(registry, params, ["generator.preset=paper", "generator.train.device=auto"]), "train", "--no-progress"]) == 2
    assert "generator.preset=paper" in capsys.readouterr().err
    # an explicit CPU device is the user's choice: the plan goes ahead
    assert main([*_args(registry, params, ["generator.preset=paper"]), "experiment", "run", "--dry-run"]) == 0


def test_ablation_helper_runs_a_variant_dict_through_the_experiment(tmp_path, registry, synth, monkeypatch):
    """bench scripts are thin callers: a dict of blocks -> runs + report, reusing identical runs."""
    from components.experiment.ablation import run_variants
    from components.tokenizer.encoders import save_embeddings

    monkeypatch.chdir(tmp_path)
    ds_ref = registry.load("dataset/synth@latest").ref
    save_embeddings(registry, np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32), ds_ref, "synth", "random", {})
    params = tmp_path / "params.yaml"
    params.write_text("{}")
    sets = [s for s in SMOKE]
    res = run_variants({"tiger": {}, "abl-rw": {"generator": {"train": {"reweight_power": 1.0}}}}, name="abl", reference="tiger",
                       params_path=str(params), overrides=sets, registry_root=str(registry.root))
    assert set(res["methods"]) == {"tiger", "abl-rw"} and "abl-rw" in res["change_vs"]
    assert (tmp_path / "reports" / "abl.md").exists() and (tmp_path / "plots" / "abl" / "accuracy_bias.png").exists()
    key = registry.load("rankings/synth-tiger@latest").meta["run_key"]
    # the same block again (e.g. the pipeline's tiger) is not retrained
    n_versions = len(list((registry.root / "rankings" / "synth-tiger").iterdir()))
    run_variants({"tiger": {}}, name="abl2", reference="tiger", params_path=str(params), overrides=sets, registry_root=str(registry.root))
    assert len(list((registry.root / "rankings" / "synth-tiger").iterdir())) == n_versions
    assert registry.load("rankings/synth-tiger@latest").meta["run_key"] == key


def test_report_leaves_out_stale_runs(tmp_path, registry, synth, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _experiment_params(tmp_path, {"tiger": {}, "popular": {"kind": "baseline", "method": "popular"}})
    out = tmp_path / "o"
    rep = ["--metrics-out", str(out / "m.json"), "--plots-dir", str(out / "p"), "--report", str(out / "r.md")]
    assert main([*_args(registry, params), "experiment", "run", "--no-progress", *rep]) == 0
    assert set(json.loads((out / "m.json").read_text())["methods"]) == {"tiger", "popular"}
    # params changed since tiger ran: its rankings no longer describe the current config
    assert main([*_args(registry, params, ["generator.train.lr=0.0005"]), "experiment", "report", *rep]) == 0
    m = json.loads((out / "m.json").read_text())
    assert set(m["methods"]) == {"popular"} and any("synth-tiger (stale" in x for x in m["missing"])
    assert main([*_args(registry, params, ["generator.train.lr=0.0005"]), "experiment", "report", "--strict", *rep]) == 2


def test_dvc_stages_run_params_variants_and_declare_their_outputs():
    """dvc.yaml's generator stages name experiment variants that exist, and declare exactly the
    checkpoint and rankings artifacts those variants write at the params seed."""
    import re
    from pathlib import Path

    dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    ep = load_params("params.yaml").experiment
    seen = []
    for name, st in dvc.items():
        body = st.get("do", st)
        m = re.match(r"genrec experiment variant (\S+)", body.get("cmd", ""))
        if not m:
            continue
        v = m.group(1)
        seen.append(v)
        if v != "${item}":
            assert v in ep.variants and ep.variants[v].kind == "generator"
        outs = [str(o) for o in body["outs"]]
        assert outs == [f"artifacts/generator/${{data.dataset}}-{v}", f"artifacts/rankings/${{data.dataset}}-{v}"]
        if ep.variants.get(v) is not None and ep.variants[v].init_from:
            assert f"artifacts/generator/${{data.dataset}}-{ep.variants[v].init_from}" in body["deps"]
    assert seen == ["tiger", "tiger-crab", "${item}"]
    assert dvc["variants"]["foreach"] == "${experiment.pipeline}"
    assert "experiment report" in dvc["evaluate"]["cmd"]


def test_warm_start_uses_the_parents_finished_checkpoint(tmp_path, registry, synth, monkeypatch):
    """A child warm-starts from the checkpoint its parent's finished run ranked, even after
    generator/<ds>-tiger@latest moved (e.g. a plain `genrec train` with the default name)."""
    monkeypatch.chdir(tmp_path)
    variants = {"tiger": {}, "tiger-ft": {"init_from": "tiger", "generator": {"train": {"epochs": 1}}}}
    params = _experiment_params(tmp_path, variants)
    assert main([*_args(registry, params), "experiment", "run", "--variants", "tiger", "--no-progress", "--no-report"]) == 0
    finished = registry.load("rankings/synth-tiger@latest").meta["checkpoint"]
    assert main([*_args(registry, params, ["generator.train.lr=0.0001"]), "train", "--no-progress", "--run-dir", str(tmp_path / "x")]) == 0
    assert registry.load("generator/synth-tiger@latest").ref != finished  # @latest moved
    assert main([*_args(registry, params), "experiment", "run", "--variants", "tiger-ft", "--no-progress", "--no-report"]) == 0
    assert registry.load("generator/synth-tiger-ft@latest").params["init_from"] == finished


def test_crab_variant_with_rebalance_overrides_builds_its_own_codebook(tmp_path, registry, synth, capsys, monkeypatch):
    """A CRAB ablation is a params block: `rebalance: {levels: [0]}` builds codebook/<ds>-crab-levels0
    on first use; generator.finetune keys change only warm-started runs' keys."""
    monkeypatch.chdir(tmp_path)
    variants = {"tiger": {}, "c0": {"codebook": "crab", "rebalance": {"levels": [0], "split_ratio": 0.5}, "init_from": "tiger"}}
    params = _experiment_params(tmp_path, variants)
    assert main([*_args(registry, params, ["rebalance.embeddings=null"]), "experiment", "run", "--seeds", "1", "--no-progress",
                 "--no-report"]) == 0
    cb = registry.load("codebook/synth-crab-levels0-splitratio0.5@latest")
    assert cb.params["rebalance"]["levels"] == [0] and cb.params["rebalance"]["split_ratio"] == 0.5
    ft = registry.load("generator/synth-c0@latest")
    assert ft.meta["codebook"] == cb.ref and ft.meta["finetune"] == "lora"
    capsys.readouterr()
    # a fine-tune key leaves tiger finished and reruns the warm-started variant
    assert main([*_args(registry, params, ["rebalance.embeddings=null", "generator.finetune.lr=0.02"]), "experiment", "run",
                 "--seeds", "1", "--dry-run"]) == 0
    assert "2 runs (1 finished, 1 to run)" in capsys.readouterr().out
    for bad, msg in (({"codebook": "base", "rebalance": {"levels": [0]}}, "codebook: crab only"),
                     ({"codebook": "crab", "rebalance": {"nope": 1}}, "unknown or fixed key"),
                     ({"codebook": "crab", "rebalance": {"split_ratio": 2.0}}, "split_ratio")):
        with pytest.raises(Exception, match=msg):
            ExperimentParams.model_validate({"variants": {"tiger": {}, "x": bad}})


def test_plan_says_before_training_when_the_budget_will_cut_the_schedule(tmp_path, registry, synth, capsys):
    """Smoke preset on synth: 2 epochs of 2 steps (batch 64) reading 4 history
    items -> a guessed epoch of 2 * 64 * 0.4 / 600 = 0.0853 s. A budget of 0.15 s fits 1 of the 2
    epochs: the plan warns (once per variant, naming the key); 60 s fits both, no budget never warns."""
    from components.experiment.runner import Experiment
    from components.registry import Registry

    variants = {"tiger": {"generator": {"train": {"max_minutes": 0.15 / 60}}},
                "tiger-roomy": {"generator": {"train": {"max_minutes": 1.0}}}, "tiger-free": {}}
    exp = Experiment(load_params(str(_experiment_params(tmp_path, variants)), SMOKE), Registry(registry.root), overrides=SMOKE,
                     progress=False)
    assert -(-len(synth.splits["train"]) // 64) == 2 and synth.max_history == 4
    assert exp._guess_epoch_seconds(exp.spec("tiger", 2024)) == pytest.approx(2 * 64 * 0.4 / 600)
    w = exp.budget_warning(exp.spec("tiger", 2024))
    assert w and "~1 of 2 epochs" in w and "generator.train.max_minutes=0" in w
    assert exp.budget_warning(exp.spec("tiger-roomy", 2024)) is None and exp.budget_warning(exp.spec("tiger-free", 2024)) is None
    exp.run(["tiger", "tiger-roomy", "tiger-free"], [2024, 2025], dry_run=True)
    out = capsys.readouterr().out
    assert out.count("warning: tiger: train.max_minutes") == 1 and "tiger-roomy:" not in out


def test_expected_time_of_a_first_run_grows_with_the_history_read(tmp_path, registry, synth):
    """The planner's guess for a variant never run: samples x epochs / 600 per s and ranked samples /
    100 per s at 10 history items, scaled by the items each sample reads (ML-100k's 20 cost 2.4x)."""
    from components.experiment.runner import Experiment
    from components.registry import Registry

    params = _experiment_params(tmp_path, {"tiger": {}, "tiger-short": {"generator": {"max_items": 2}}})
    exp = Experiment(load_params(str(params), SMOKE), Registry(registry.root), progress=False)
    n_train, n_rank = len(synth.splits["train"]), len(synth.splits["valid"]) + len(synth.splits["test"])
    assert synth.max_history == 4
    for variant, items in (("tiger", 4), ("tiger-short", 2)):
        rs = exp.spec(variant, 2024)
        tp = rs.gp.train
        assert tp.max_minutes == 0
        steps = min(-(-n_train // tp.batch_size), tp.max_steps_per_epoch or n_train)
        want = steps * tp.batch_size * tp.epochs * (items / 10) / 600 + n_rank * (items / 10) / 100
        assert exp.expected_seconds(rs) == pytest.approx(want)


def test_expected_time_of_a_resumed_run_counts_its_earlier_training(tmp_path, registry, synth):
    """A run interrupted and resumed: its rankings say this call took 13 s (rank only) but training and
    validation took 1,623 s over every call (``wall_seconds``); the next plan expects 1,623 + 12 s."""
    from components.experiment.runner import Experiment
    from components.registry import Registry

    exp = Experiment(load_params(str(_experiment_params(tmp_path, {"tiger": {}, "tiger-b": {}})), SMOKE), Registry(registry.root),
                     progress=False)
    rs = exp.spec("tiger", 2024)
    with registry.create("rankings", rs.name) as w:
        w.meta.update({"run_seconds": 13.0, "train_seconds": 0.0, "wall_seconds": 1623.0, "rank_seconds": 12.0})
        w.write_json("x.json", {})
    assert exp.expected_seconds(rs) == pytest.approx(1635.0)
    rs = exp.spec("tiger-b", 2024)
    with registry.create("rankings", rs.name) as w:  # an uninterrupted run: its own wall time
        w.meta.update({"run_seconds": 700.0, "train_seconds": 560.0, "wall_seconds": 600.0, "rank_seconds": 90.0})
        w.write_json("x.json", {})
    assert exp.expected_seconds(rs) == pytest.approx(700.0)
