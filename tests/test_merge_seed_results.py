"""bench/merge_seed_results.py: merging experiment reports from different registries, hand-computed."""

import json
import math

import pytest

from bench.merge_seed_results import MergeError, main, merge, summarize

PROTO = {"dataset": "ml-100k", "split": "test", "ranking": "all items"}


def _report(per_seed, **kw):
    return {**PROTO, **kw, "per_seed": per_seed}


A = _report({"a": {"1": {"HR@10": 0.1, "DGU@10": 0.5}, "2": {"HR@10": 0.3, "DGU@10": 0.7}}})
B = _report({"a": {"1": {"HR@10": 0.1, "DGU@10": 0.5}}, "b": {"1": {"HR@10": 0.2, "DGU@10": 0.2}, "2": {"HR@10": 0.2, "DGU@10": 0.2}}})


def test_merge_aggregates_the_union_and_flags_noise():
    per_seed, reproduced = merge([("A", A), ("B", B)])
    assert sorted(per_seed) == ["a", "b"] and sorted(per_seed["a"]) == ["1", "2"]
    assert reproduced == [{"variant": "a", "seed": "1", "in": ["A", "B"], "max_abs_diff": 0.0, "metrics_compared": 2}]
    s = summarize(per_seed, ["a", "b"], "a")
    a, b = s["agg"]["a"], s["agg"]["b"]
    assert a["HR@10"]["mean"] == pytest.approx(0.2) and a["HR@10"]["std"] == pytest.approx(math.sqrt(0.02))  # (0.1² + 0.1²) / (2 - 1)
    assert b["DGU@10"]["mean"] == pytest.approx(0.2) and b["DGU@10"]["std"] == 0.0
    ch = s["change_vs"]["b"]
    assert ch["HR@10"]["change"] == pytest.approx(0.0) and ch["HR@10"]["flag"] == "n.s."
    # DGU: (0.2 - 0.6) / 0.6 = -66.7%; |0.4| >= 2 * 0.1414 -> beyond noise
    assert ch["DGU@10"]["change"] == pytest.approx(-2 / 3) and ch["DGU@10"]["flag"] == "sig"


def test_merge_refuses_a_different_computation_or_protocol():
    other = _report({"a": {"1": {"HR@10": 0.1 + 1e-6, "DGU@10": 0.5}}})
    with pytest.raises(MergeError, match=r"a seed 1 differs between A and C: HR@10"):
        merge([("A", A), ("C", other)])
    assert merge([("A", A), ("C", other)], tol=1e-5)[1][0]["max_abs_diff"] == pytest.approx(1e-6)
    with pytest.raises(MergeError, match=r"D: split 'valid' differs from A's 'test'"):
        merge([("A", A), ("D", {**B, "split": "valid"})])
    with pytest.raises(MergeError, match="no 'per_seed'"):
        merge([("A", A), ("E", PROTO)])
    with pytest.raises(MergeError, match=r"no results for \['zzz'\]"):
        summarize(merge([("A", A)])[0], ["a", "zzz"], "a")


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(A))
    pb.write_text(json.dumps(B))
    assert main([str(pa), str(pb), "--columns", "a", "b", "--reference", "a", "--out", str(tmp_path / "m")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["n_seeds"] == {"a": 2, "b": 2} and got["methods"]["a"]["DGU@10"] == pytest.approx(0.6)
    assert "| DGU@10 | 0.6000 ± 0.1414 | 0.2000 ± 0.0000 |" in (tmp_path / "m.md").read_text()
    assert "-66.7%" in capsys.readouterr().out
    pb.write_text("{not json")
    assert main([str(pa), str(pb), "--columns", "a", "--reference", "a"]) == 2
    assert "error:" in capsys.readouterr().err


def test_tags_keep_runs_of_different_machines_apart():
    other = _report({"a": {"1": {"HR@10": 0.15, "DGU@10": 0.5}}})
    per_seed, reproduced = merge([("A", A), ("C", other)], tags=["", "@box2"])
    assert sorted(per_seed) == ["a", "a@box2"] and per_seed["a@box2"]["1"]["HR@10"] == 0.15 and reproduced == []
    with pytest.raises(MergeError, match="1 tags for 2 reports"):
        merge([("A", A), ("C", other)], tags=["x"])
