"""Data-parallel training (DDP, gloo, 2 CPU processes) against one process on a tiny model.

One spawn of 2 ranks runs every scenario (process start-up, i.e. importing torch and transformers,
is most of the cost):

- *equivalence* (TIGER + a probe head with an unused parameter + popularity re-weighting + an extra
  loss; 75 training samples in global batches of 32, so the trailing batch of 11 splits 6 / 5):
  each rank sees a disjoint contiguous half of the one-process global batch; the first step's
  averaged gradient, every step's logged loss, the final weights and the valid metrics match one
  process within float tolerance (stated below);
- *resume*: a 2-process run with dropout stopped after one epoch and resumed gives bit-for-bit
  the run directory of an uninterrupted 2-process run (weights, optimizer, every rank's RNG);
- *bad config*: a global batch the processes cannot split fails with a clear error on every rank.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.generator.decoding import SIDTrie
from components.generator.params import TrainParams
from components.generator.train import Trainer, check_ddp_supported, shard
from tests.generator_helpers import ProbeHead, random_sids, synthetic_dataset, tiny_model

# tolerances 2 processes vs 1 (fp32; only the order of float sums differs: per-rank means, then DDP's mean)
LOSS_RTOL = 1e-5  # per-step logged losses
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4  # first-step gradients
PARAM_ATOL = 1e-4  # weights after 2 epochs (Adam, 6 steps)
METRIC_ATOL = 1e-9  # valid HR/NDCG: the same top-k lists

SIZES = [3, 4, 2]
EPOCHS = 2


def _data():
    ds = synthetic_dataset(n_items=12, n_users=15)  # 15 users x 5 = 75 training samples
    sids = random_sids(SIZES, ds.n_items, seed=0)
    return ds, sids


def _params(**kw) -> TrainParams:
    base = {"epochs": EPOCHS, "batch_size": 32, "lr": 5e-3, "warmup_steps": 2, "valid_samples": 0, "patience": 10, "device": "cpu",
            "num_threads": 1, "bf16": False}  # fp32: the equivalence is DDP's, not bf16 rounding's (auto = on with AVX512-BF16)
    base.update(kw)
    return TrainParams(**base)


def _extra(m):
    return m.backbone.embed(torch.tensor([4, 5])).pow(2).mean()


def _dropout_model(sids, ds):
    from components.generator.backbones.tiger import TigerBackbone
    from components.generator.model import GenerativeRecommender
    from components.generator.vocab import SIDVocab

    torch.manual_seed(1)
    vocab = SIDVocab(sids, SIZES)
    bb = TigerBackbone(vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, dropout=0.2)
    return GenerativeRecommender(bb, [], max_items=ds.max_history)


def equivalence_run(record: dict) -> dict:
    """TIGER + probe head + RW + extra loss; records each step's samples, losses and the first
    step's gradients. Returns the best state."""
    ds, sids = _data()
    torch.manual_seed(0)  # the head's queries: the same in every process
    head = ProbeHead(32, n_query=1, progressive=True, extra_state=False)  # state_vec never used: DDP must cope
    model = tiny_model("tiger", sids, SIZES, heads=[head], max_items=ds.max_history, seed=0)
    seen, losses, grads = [], [], {}
    fwd = model.forward

    def recording_forward(hist, targets, weights=None, extras=None):
        if model.training:
            seen.append(sorted((int(u), tuple(t)) for u, t in zip(extras["user"].tolist(), targets.tolist())))
        return fwd(hist, targets, weights=weights, extras=extras)

    model.forward = recording_forward

    def hook(epoch, step, m, step_losses):
        losses.append(step_losses)
        if epoch == 0 and step == 0:
            grads.update({f"grad.{n}": p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None})

    tr = Trainer(model, ds, SIDTrie(sids, SIZES), _params(reweight_power=1.0), eval_beam=10, progress=False,
                 extra_losses={"align": (_extra, 0.1)})
    tr.step_hook = hook
    res = tr.fit()
    record.update(seen=seen, losses=losses, history=res.history, best_epoch=res.best_epoch,
                  samples=res.extra["steps_per_epoch"])
    return {**{f"best.{k}": v for k, v in res.best_state.items()}, **grads}


def resume_runs(out: Path) -> None:
    """Uninterrupted vs stopped-after-1-epoch-then-resumed, with dropout, into two run dirs."""
    ds, sids = _data()
    p = _params(epochs=3)
    Trainer(_dropout_model(sids, ds), ds, SIDTrie(sids, SIZES), p, eval_beam=10, run_dir=out / "full", progress=False).fit()
    Trainer(_dropout_model(sids, ds), ds, SIDTrie(sids, SIZES), p, eval_beam=10, run_dir=out / "part", progress=False).fit(stop_after=1)
    res = Trainer(_dropout_model(sids, ds), ds, SIDTrie(sids, SIZES), p, eval_beam=10, run_dir=out / "part", progress=False).fit()
    assert res.resumed_from == 1 and res.epochs_run == 3


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch.distributed as td
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out_dir = Path(out)
    record: dict = {}
    ds, sids = _data()
    try:  # refused before any rank waits on another
        Trainer(tiny_model("tiger", sids, SIZES, max_items=ds.max_history), ds, SIDTrie(sids, SIZES), _params(batch_size=31),
                progress=False).fit()
        record["bad_config"] = None
    except ValueError as e:
        record["bad_config"] = str(e)
    state = equivalence_run(record)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / f"rank{rank}.safetensors"))
    resume_runs(out_dir)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    td.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, out: Path, timeout: float = 240.0) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"{world} training processes did not finish within {timeout:.0f} s (ranks waiting on each other?)")


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(2, out)
    from safetensors.torch import load_file

    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]


@pytest.fixture(scope="module")
def one_proc():
    assert int(os.environ.get("WORLD_SIZE", "1")) == 1
    torch.set_num_threads(1)
    record: dict = {}
    state = equivalence_run(record)
    return record, state


def test_shard_and_config_checks():
    b = torch.arange(11)
    parts = [shard(b, r, 2) for r in range(2)]
    assert [x.tolist() for x, _ in parts] == [list(range(6)), list(range(6, 11))]
    assert [s for _, s in parts] == pytest.approx([12 / 11, 10 / 11])  # mean over ranks of scaled shard means = batch mean
    half, scale = shard(torch.arange(32), 1, 2)
    assert half.tolist() == list(range(16, 32)) and scale == 1.0
    one, scale = shard(torch.arange(1), 1, 2)  # fewer samples than ranks: a dummy sample with weight 0
    assert one.tolist() == [0] and scale == 0.0
    _, sids = _data()
    model = tiny_model("tiger", sids, SIZES)
    check_ddp_supported(model, 32, 2)
    with pytest.raises(ValueError, match="batch_size=33 is the global batch and must be divisible by the 2"):
        check_ddp_supported(model, 33, 2)

    class FakeGenPlugin(torch.nn.Module):
        name = "genplugin"

    model.heads.append(FakeGenPlugin())
    with pytest.raises(ValueError, match="'genplugin' is not supported with 2 training processes: its contrastive losses"):
        check_ddp_supported(model, 32, 2)


def test_bad_global_batch_fails_on_every_rank(two_procs):
    _, recs, _ = two_procs
    for r in recs:
        assert r["bad_config"] and "batch_size=31 is the global batch and must be divisible by the 2 training processes" in r["bad_config"]


def test_each_rank_takes_its_half_of_the_global_batch(two_procs, one_proc):
    _, recs, _ = two_procs
    ref = one_proc[0]["seen"]
    assert len(ref) == 3 * EPOCHS and [len(b) for b in ref[:3]] == [32, 32, 11]
    assert len(recs[0]["seen"]) == len(recs[1]["seen"]) == len(ref)
    for step, batch in enumerate(ref):
        a, b = (sorted((u, tuple(t)) for u, t in r["seen"][step]) for r in recs)
        want = sorted((u, tuple(t)) for u, t in batch)
        assert not set(a) & set(b), f"step {step}: ranks share samples"
        assert sorted(a + b) == want, f"step {step}: the ranks' shards are not the one-process global batch"
        assert abs(len(a) - len(b)) <= 1


def test_two_processes_match_one(two_procs, one_proc):
    _, recs, states = two_procs
    ref, ref_state = one_proc
    # the same logged loss at every step (all-reduced global-batch values, identical on both ranks)
    assert recs[0]["losses"] == recs[1]["losses"]
    assert len(recs[0]["losses"]) == len(ref["losses"])
    for step, (got, want) in enumerate(zip(recs[0]["losses"], ref["losses"])):
        assert set(got) == set(want) == {"rec", "probe.div", "align"}
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=LOSS_RTOL), f"step {step} loss {k}"
    # the first step's averaged gradient is the one-process gradient of the same global batch
    grads = {k: v for k, v in ref_state.items() if k.startswith("grad.")}
    assert grads and set(grads) == {k for k in states[0] if k.startswith("grad.")}
    for k, v in grads.items():
        torch.testing.assert_close(states[0][k], v, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=lambda m, k=k: f"{k}: {m}")
    # final weights: the same on both ranks, and close to one process
    for k, v in ref_state.items():
        if k.startswith("best."):
            assert torch.equal(states[0][k], states[1][k]), k
            torch.testing.assert_close(states[0][k], v, atol=PARAM_ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    # validation (rank 0) and its decisions reach every rank; ranking metrics equal within noise
    assert recs[0]["history"] == recs[1]["history"] and recs[0]["best_epoch"] == recs[1]["best_epoch"] == ref["best_epoch"]
    for got, want in zip(recs[0]["history"], ref["history"]):
        for k in want:
            if k.startswith("valid."):
                assert got[k] == pytest.approx(want[k], abs=METRIC_ATOL), k
            elif k.startswith("loss."):
                assert got[k] == pytest.approx(want[k], rel=LOSS_RTOL), k


def test_resume_under_two_processes_is_bit_exact(two_procs):
    out, _, _ = two_procs
    from safetensors.torch import load_file

    for f in ("last.safetensors", "best.safetensors", "optimizer.safetensors"):
        assert (out / "full" / f).read_bytes() == (out / "part" / f).read_bytes(), f
    opt = load_file(str(out / "full" / "optimizer.safetensors"))
    assert "rng.torch" in opt and "rng.torch.rank1" in opt and not torch.equal(opt["rng.torch"], opt["rng.torch.rank1"])
    timing = ("samples_per_s", "wall_used", "train_used")
    strip = lambda st: {k: ([{a: b for a, b in h.items() if a not in timing} for h in v] if k == "history" else v)
                        for k, v in st.items() if k not in timing}
    full, part = (json.loads((out / d / "state.json").read_text()) for d in ("full", "part"))
    assert strip(full) == strip(part) and full["epoch"] == 3


def _cli_sets(extra=()):
    from tests.test_generator_cli import TINY

    out = []
    for s in [*TINY, "generator.train.bf16=false", *extra]:  # fp32 (see _params)
        out += ["--set", s]
    return out


def test_torchrun_command_keeps_the_command_line():
    from components.cli import build_parser
    from components.generator.commands import torchrun_command

    args = build_parser().parse_args(["--registry", "reg", "--set", "generator.train.processes=2", "train", "--no-progress",
                                      "--run-dir", "r d", "--name", "x"])
    cmd = torchrun_command(args, TrainParams(processes=2), "x")
    i = cmd.index("-m", 3)
    assert cmd[1:i] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1", "--standalone"]
    assert cmd[i + 1 :] == ["components.cli", "--params", "params.yaml", "--set", "generator.train.processes=2", "--registry", "reg",
                            "train", "--name", "x", "--run-dir", "r d", "--no-progress"]
    cmd = torchrun_command(args, TrainParams(processes=4, nnodes=2, rdzv_endpoint="node0:29400"), "x")
    assert "--rdzv-endpoint" in cmd and "node0:29400" in cmd and "--standalone" not in cmd
    assert cmd[cmd.index("--rdzv-id") + 1] == "genrec-train-x"  # one rendezvous per run name
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(args, TrainParams(nnodes=2), "x")


@pytest.mark.slow
def test_cli_train_relaunches_under_torchrun(tmp_path, registry):
    """`genrec train` with processes=2 runs itself under torchrun; one checkpoint, losses as one process's."""
    from components.cli import main
    from components.tokenizer.codebook import Codebook

    ds = synthetic_dataset(n_items=12, n_users=16)
    ds_art = ds.save(registry)
    cb = Codebook(sids=random_sids([3, 2, 2], 12), sizes=[3, 2, 2], item_ids=ds.item_ids, method="random", dataset_ref=ds_art.ref)
    cb.save(registry, "synth-random", parents=[ds_art.ref], params={})
    reg = ["--registry", str(registry.root)]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*reg, *_cli_sets(), "train", "--no-progress", "--run-dir", str(tmp_path / "r1"), "--metrics-out", str(one)]) == 0
    assert main([*reg, *_cli_sets(["generator.train.processes=2"]), "train", "--no-progress", "--run-dir", str(tmp_path / "r2"),
                 "--name", "synth-ddp", "--metrics-out", str(two)]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["processes"] == 2 and b["epochs_run"] == a["epochs_run"] == 2 and b["checkpoint"].startswith("generator/synth-ddp@")
    assert len([p for p in (registry.root / "generator" / "synth-ddp").iterdir() if p.is_dir()]) == 1  # written once
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["loss.rec"] == pytest.approx(ha["loss.rec"], rel=LOSS_RTOL)
        assert hb["valid.ndcg@10"] == pytest.approx(ha["valid.ndcg@10"], abs=METRIC_ATOL)
    assert np.isfinite(b["train_samples_per_s"])
