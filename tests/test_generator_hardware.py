"""Machine-fitting training defaults: threads, bf16 where native (close to fp32), wall-clock budget,
early stopping with min_delta."""

from __future__ import annotations

import pytest
import torch

from components.generator import hardware
from components.generator.decoding import SIDTrie
from components.generator.params import TrainParams
from components.generator.train import Trainer
from tests.generator_helpers import random_sids, synthetic_dataset, tiny_model


def test_threads_default_to_available_cores(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    assert hardware.available_cores() == 3 and hardware.threads(0) == 3 and hardware.threads(1) == 1


def test_bf16_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert hardware.cpu_native_bf16(frozenset({"avx2", "amx_bf16"})) and hardware.cpu_native_bf16(frozenset({"avx512_bf16"}))
    assert not hardware.cpu_native_bf16(frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hardware.use_bf16("auto", cpu) is False  # emulated bf16 is slower: auto falls back to fp32
    assert hardware.use_bf16(True, cpu) is True and hardware.use_bf16(False, cpu) is False
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert hardware.use_bf16("auto", cpu) is True
    assert TrainParams(bf16="auto").bf16 == "auto"
    with pytest.raises(ValueError):
        TrainParams(bf16="maybe")


def test_bf16_autocast_stays_close_to_fp32():
    """Same weights, same batch: the bf16-autocast loss is within 2% of fp32, and gradients point the
    same way (cosine > 0.98) — what the trainer runs on a bf16-capable CPU."""
    sizes = [4, 3, 5]
    sids = random_sids(sizes, 30)
    torch.manual_seed(0)
    model = tiny_model("tiger", sids, sizes).train()
    for m in model.modules():  # dropout off: both passes must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    hist = model.encode_history([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]] * 8)
    tg = model.vocab.item_tokens[torch.tensor([5, 6, 7, 8] * 8)]

    def loss_and_grad(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(hist, tg).losses["rec"]
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    l32, g32 = loss_and_grad(False)
    l16, g16 = loss_and_grad(True)
    assert l16 == pytest.approx(l32, rel=0.02)
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.98
    assert l16 != l32  # autocast really ran in bf16


def _trainer(tmp_path, run_dir=None, **kw):
    ds = synthetic_dataset(n_items=12, n_users=16)
    sizes = [3, 2, 2]
    sids = random_sids(sizes, 12)
    model = tiny_model("tiger", sids, sizes, max_items=ds.max_history)
    p = TrainParams(epochs=6, batch_size=16, lr=3e-3, warmup_steps=1, valid_samples=8, device="cpu", num_threads=1, **kw)
    return Trainer(model, ds, SIDTrie(sids, sizes), p, eval_beam=6, run_dir=run_dir, progress=False)


def test_a_stopped_run_stays_stopped_when_resumed(tmp_path, monkeypatch):
    """Resuming a run that ended by patience or by its budget trains nothing more (the budget
    covers the whole run, not each call)."""
    import components.generator.train as train_mod

    clock = {"t": 0.0}
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock.__setitem__("t", clock["t"] + 1.0) or clock["t"])
    rd = tmp_path / "budget"
    first = _trainer(tmp_path, run_dir=rd, max_minutes=1e-9, patience=10).fit()
    assert first.epochs_run == 1 and first.extra["budget_hit"]
    again = _trainer(tmp_path, run_dir=rd, max_minutes=1e-9, patience=10).fit()
    assert again.epochs_run == 1 and again.extra["budget_hit"] and again.resumed_from == 1
    rd2 = tmp_path / "patience"
    first = _trainer(tmp_path, run_dir=rd2, min_delta=1.0, patience=2).fit()
    assert first.epochs_run == 3 and first.stopped_early
    again = _trainer(tmp_path, run_dir=rd2, min_delta=1.0, patience=2).fit()
    assert again.epochs_run == 3 and again.stopped_early
    # raising the patience extends the run (epochs / patience may change between calls)
    more = _trainer(tmp_path, run_dir=rd2, min_delta=1.0, patience=3).fit()
    assert more.epochs_run == 4


def test_wall_clock_budget_stops_before_an_epoch_that_would_pass_it(tmp_path, monkeypatch):
    import components.generator.train as train_mod

    clock = {"t": 0.0}

    def fake_clock():  # every call advances 1 s: an epoch (train + valid) takes a few "seconds"
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(train_mod.time, "perf_counter", fake_clock)
    tr = _trainer(tmp_path, max_minutes=1e-9, patience=10)
    res = tr.fit()
    assert res.epochs_run == 1 and res.extra["budget_hit"] and not res.stopped_early and res.best_epoch == 1
    # a budget of n mean epochs lets exactly n epochs run
    clock["t"] = 0.0
    first = _trainer(tmp_path, patience=10)
    r1 = first.fit(stop_after=1)
    per_epoch = r1.extra["wall_seconds"]
    clock["t"] = 0.0
    res = _trainer(tmp_path, max_minutes=3.5 * per_epoch / 60.0, patience=10).fit()
    assert res.epochs_run == 3 and res.extra["budget_hit"]
    res = _trainer(tmp_path, max_minutes=0.0, patience=10).fit()
    assert res.epochs_run == 6 and not res.extra["budget_hit"]


def test_a_resumed_run_reports_the_time_of_every_call(tmp_path, monkeypatch):
    """Interrupted after 3 of 6 epochs and resumed: the second call's train/wall seconds cover both
    calls (they were this call's only: a 27-minute run read "train s 0.0" in the report)."""
    import components.generator.train as train_mod

    clock = {"t": 0.0}
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock.__setitem__("t", clock["t"] + 1.0) or clock["t"])
    whole = _trainer(tmp_path, run_dir=tmp_path / "whole", patience=10).fit()
    clock["t"] = 0.0
    first = _trainer(tmp_path, run_dir=tmp_path / "split", patience=10).fit(stop_after=3)
    rest = _trainer(tmp_path, run_dir=tmp_path / "split", patience=10).fit()
    assert rest.resumed_from == 3 and 0 < first.train_seconds < rest.train_seconds
    # every clock read is one "second": the two calls together read it as often as the whole run
    assert rest.train_seconds == pytest.approx(whole.train_seconds)
    assert rest.extra["wall_seconds"] >= first.extra["wall_seconds"] + (rest.train_seconds - first.train_seconds)


def test_min_delta_counts_small_gains_as_no_improvement(tmp_path):
    # a gain of at most 1.0 in NDCG@10 is impossible: after the first validation nothing counts, so
    # patience 2 stops at epoch 3
    res = _trainer(tmp_path, min_delta=1.0, patience=2).fit()
    assert res.epochs_run == 3 and res.stopped_early and res.best_epoch == 1


def test_trainer_runs_bf16_autocast_when_resolved_on(tmp_path):
    """bf16=true on a CPU really trains under autocast (losses differ from fp32, but stay close)."""
    r32 = _trainer(tmp_path, bf16=False, patience=10, max_steps_per_epoch=2).fit(stop_after=1)
    r16 = _trainer(tmp_path, bf16=True, patience=10, max_steps_per_epoch=2).fit(stop_after=1)
    assert r32.extra["bf16"] is False and r16.extra["bf16"] is True
    a, b = r32.history[0]["loss.rec"], r16.history[0]["loss.rec"]
    assert a != b and b == pytest.approx(a, rel=0.05)
