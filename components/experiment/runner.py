"""Run the variants of an experiment: each (variant, seed) trains and ranks once, writes its own
checkpoint and rankings artifact, and is skipped when an identical run already finished.

Names: the run with the params' ``seed`` is ``<dataset>-<variant>`` (what `dvc repro` writes and
`genrec evaluate` reads); other seeds are ``<dataset>-<variant>-s<seed>``. Baseline variants write
``rankings/<dataset>-<method>[-s<seed>]``.

Resume: a finished run's rankings artifact carries ``meta.run_key``, a hash of everything that
determines it (variant block, effective generator params, seed, dataset version, codebook version,
the warm-start parent's key). A later call with the same key skips it; a run stopped mid-training
continues from its run directory (``.genrec/runs/<name>``, bit-exact) at the next call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import components.params  # noqa: F401  (loads every params section first: experiment.params imports it back)
from components.experiment.params import ExperimentParams, VariantParams
from components.registry import ArtifactNotFound, Registry

log = logging.getLogger(__name__)

TOKENIZER_METHODS = ("rqkmeans", "balanced", "rqvae", "flexcode")
# first-run guesses (a finished run's own times replace them): the cpu preset on a 2-core box
TRAIN_SAMPLES_PER_S_GUESS = 600.0
RANK_SAMPLES_PER_S_GUESS = 100.0
# the guesses above hold for histories of this many items (Industrial); a sample's cost grows with
# the items read (ML-100k's 20-item histories trained at 254 samples/s on one core, 2.4x slower)
GUESS_HISTORY_ITEMS = 10


class ExperimentError(ValueError):
    """A variant cannot run as configured (unknown name, missing parent, bad seeds)."""


def run_name(dataset: str, label: str, seed: int, base_seed: int) -> str:
    return f"{dataset}-{label}" if seed == base_seed else f"{dataset}-{label}-s{seed}"


def seed_list(base_seed: int, n: int) -> list[int]:
    if n < 1:
        raise ExperimentError(f"experiment.seeds / --seeds must be >= 1, got {n}")
    return [base_seed + i for i in range(n)]


def _deep_merge(base: dict[str, Any], over: dict[str, Any], path: str = "generator") -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if k not in out:
            raise ExperimentError(f"{path}.{k}: unknown key (a variant may only override existing generator keys)")
        out[k] = _deep_merge(out[k], v, f"{path}.{k}") if isinstance(v, dict) and isinstance(out[k], dict) else v
    return out


def _slug(overrides: dict[str, Any]) -> str:
    """``{levels: [1], lam: 0.5}`` -> ``lam0.5-levels1``: a codebook name suffix for rebalance overrides."""
    import re

    def val(v):
        return "_".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return re.sub(r"[^a-z0-9._-]", "", "-".join(f"{k.replace('_', '')}{val(v)}" for k, v in sorted(overrides.items())).lower())


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunSpec:
    variant: str
    seed: int
    spec: VariantParams
    name: str
    key: str = ""
    gp: Any = None  # GeneratorParams for generator variants
    codebook_ref: str | None = None
    init_ref: str | None = None
    deps: list["RunSpec"] = field(default_factory=list)


class Experiment:
    """The variants of ``params.experiment`` on ``params.data.dataset``, for a registry."""

    def __init__(self, params, registry: Registry, overrides: list[str] | None = None, progress: bool = True):
        self.params, self.registry, self.progress = params, registry, progress
        self.overrides = list(overrides or [])
        self.ep: ExperimentParams = params.experiment
        self.dataset = params.data.dataset
        self.base_seed = params.seed
        self._dataset_ref: str | None = None

    # ---- resolution --------------------------------------------------------------------------
    @property
    def dataset_ref(self) -> str:
        if self._dataset_ref is None:
            self._dataset_ref = self.registry.load(f"dataset/{self.dataset}@latest").ref
        return self._dataset_ref

    def variant(self, name: str) -> VariantParams:
        if name not in self.ep.variants:
            raise ExperimentError(f"experiment.variants: unknown variant {name!r}; known: {sorted(self.ep.variants)}")
        return self.ep.variants[name]

    def generator_params(self, name: str):
        """Effective ``generator:`` params of a variant: params.yaml → preset → the variant's block →
        ``--set generator.*`` flags."""
        from components.generator.params import GeneratorParams, cli_generator_overrides, set_keys

        tree = _deep_merge(self.params.generator.effective().model_dump(), self.variant(name).generator)
        set_keys(tree, cli_generator_overrides(self.overrides))
        tree["name"] = None
        try:
            return GeneratorParams.model_validate(tree)
        except Exception as e:  # pydantic ValidationError: name the variant
            raise ExperimentError(f"experiment.variants.{name}.generator: {e}") from None

    def codebook_name(self, spec: VariantParams) -> str:
        c = spec.codebook
        if c == "base":
            return f"{self.dataset}-{self.params.tokenizer.method}"
        if c == "crab":
            base = self.params.rebalance.name or f"{self.dataset}-crab"
            return f"{base}-{_slug(spec.rebalance)}" if spec.rebalance else base
        if c in TOKENIZER_METHODS:
            return f"{self.dataset}-{c}"
        if "/" in c:
            return c.split("/", 1)[1].split("@")[0]
        raise ExperimentError(f"codebook {c!r}: expected base | crab | {' | '.join(TOKENIZER_METHODS)} | kind/name@version")

    def codebook_ref(self, spec: VariantParams, build: bool = False) -> str:
        """Resolve (and, with ``build``, make when missing) the codebook a variant trains on."""
        c = spec.codebook
        ref = c if "/" in c else f"codebook/{self.codebook_name(spec)}@latest"
        try:
            return self.registry.load(ref).ref
        except ArtifactNotFound:
            if not build or "/" in c:
                raise ExperimentError(f"codebook {ref} does not exist (variant codebook {c!r}): run `dvc repro` "
                                      f"(tokenize, rebalance) or `genrec tokenize` / `genrec rebalance` first") from None
        from components.cli import main as genrec

        base = ["--params", self.params_path, "--registry", str(self.registry.root), *sum((["--set", o] for o in self.overrides), [])]
        if c == "crab":
            print(f"experiment: building {ref} (genrec rebalance)")
            self.codebook_ref(VariantParams(codebook="base"), build=True)
            sets = sum((["--set", f"rebalance.{k}={json.dumps(v)}"] for k, v in sorted(spec.rebalance.items())), [])
            rc = genrec([*base, *sets, "rebalance", "--codebook", f"{self.dataset}-{self.params.tokenizer.method}",
                         "--name", self.codebook_name(spec)])
        else:
            method = self.params.tokenizer.method if c == "base" else c
            print(f"experiment: building {ref} (genrec tokenize, method {method})")
            rc = genrec([*base, "--set", f"tokenizer.method={method}", "tokenize"])
        if rc != 0:
            raise ExperimentError(f"building codebook {ref} failed (exit {rc})")
        return self.registry.load(ref).ref

    params_path = "params.yaml"

    def spec(self, variant: str, seed: int, build: bool = False, _cache: dict | None = None) -> RunSpec:
        cache = {} if _cache is None else _cache
        if (variant, seed) in cache:
            return cache[(variant, seed)]
        v = self.variant(variant)
        if v.kind == "baseline":
            from components.evaluation.commands import baseline_run_key

            key = baseline_run_key(v.method, seed, self.dataset_ref, self.params)
            rs = RunSpec(variant, seed, v, run_name(self.dataset, v.method, seed, self.base_seed), key)
        else:
            gp = self.generator_params(variant)
            deps = [self.spec(v.init_from, seed, build, cache)] if v.init_from else []
            cb = self.codebook_ref(v, build=build) if build else self._codebook_ref_or_name(v)
            init_ref = f"generator/{deps[0].name}@latest" if deps else None
            gdump = gp.model_dump(mode="json")
            if not deps:  # generator.finetune applies only to a warm-started run: no effect on the others' results
                gdump.pop("finetune", None)
            vdump = v.model_dump(mode="json")
            if not vdump.get("rebalance"):  # added later; empty = what runs made before it did
                vdump.pop("rebalance", None)
            keyed = {"variant": vdump, "generator": gdump, "seed": seed,
                     "dataset": self.dataset_ref, "codebook": cb, "init": deps[0].key if deps else None}
            if any(h.get("type") == "genplugin" for h in gp.heads):  # its language view and RAR read these artifacts
                keyed["genplugin_inputs"] = [self._latest(f"item-embeddings/{self.dataset}"), self._latest(f"retrieval-index/{self.dataset}")]
            key = _key(keyed)
            rs = RunSpec(variant, seed, v, run_name(self.dataset, variant, seed, self.base_seed), key, gp, cb, init_ref, deps)
        cache[(variant, seed)] = rs
        return rs

    def _latest(self, name: str) -> str | None:
        try:
            return self.registry.load(f"{name}@latest", verify=False).ref
        except ArtifactNotFound:
            return None

    def _codebook_ref_or_name(self, v: VariantParams) -> str:
        try:
            return self.codebook_ref(v)
        except ExperimentError:
            return f"codebook/{self.codebook_name(v)}@(to build)"

    # ---- state -------------------------------------------------------------------------------
    def finished(self, rs: RunSpec):
        """The rankings artifact of a finished identical run, or None."""
        try:
            art = self.registry.load(f"rankings/{rs.name}@latest", verify=False)
        except ArtifactNotFound:
            return None
        return art if art.meta.get("run_key") == rs.key else None

    def expected_seconds(self, rs: RunSpec) -> float:
        """Wall time this run is expected to take: the last finished run of the variant if any, else
        the budget of its params."""
        for name in (rs.name, run_name(self.dataset, rs.spec.method or rs.variant, self.base_seed, self.base_seed)):
            try:
                art = self.registry.load(f"rankings/{name}@latest", verify=False)
            except ArtifactNotFound:
                continue
            if art.meta.get("run_seconds"):  # a run resumed from an earlier call trained partly before it
                m = art.meta
                return max(float(m["run_seconds"]), float(m.get("wall_seconds") or 0) + float(m.get("rank_seconds") or 0))
        if rs.spec.kind == "baseline":
            return 5.0 if rs.spec.method == "popular" else 60.0 * self.params.evaluation.baselines.sasrec.max_minutes + 30.0

        tp, sizes = rs.gp.train, self._split_sizes()
        train_s = tp.epochs * self._guess_epoch_seconds(rs)
        if tp.max_minutes:
            train_s = min(train_s, 60.0 * tp.max_minutes)
        ms = rs.gp.decode.max_samples
        n_rank = sum(min(sizes[s], ms) if ms else sizes[s] for s in ("valid", "test"))
        return train_s + n_rank * self._history_cost(rs) / RANK_SAMPLES_PER_S_GUESS

    def _history_cost(self, rs: RunSpec) -> float:
        sizes = self._split_sizes()
        items = min(rs.gp.max_items or sizes["max_history"], sizes["max_history"])  # history items each sample reads
        return max(items, 1) / GUESS_HISTORY_ITEMS

    def _guess_epoch_seconds(self, rs: RunSpec) -> float:
        """First-run guess of one training epoch's wall time (the cpu preset on one core of a 2-core box)."""
        import math

        tp = rs.gp.train
        steps = math.ceil(self._split_sizes()["train"] / tp.batch_size)
        steps = min(steps, tp.max_steps_per_epoch) if tp.max_steps_per_epoch else steps
        return steps * tp.batch_size * self._history_cost(rs) / TRAIN_SAMPLES_PER_S_GUESS

    def budget_warning(self, rs: RunSpec) -> str | None:
        """Say before training when the wall-clock budget (``train.max_minutes``) is expected to stop a
        generator run before its schedule ends (the cosine schedule then never anneals: an unconverged
        model, e.g. ML-100k under the cpu preset's 9.5 minutes); None when it fits or has no budget."""
        if rs.spec.kind == "baseline" or not rs.gp.train.max_minutes:
            return None
        tp, epoch_s = rs.gp.train, self._guess_epoch_seconds(rs)
        fit = int(60.0 * tp.max_minutes // epoch_s)
        if fit >= tp.epochs:
            return None
        return (f"{rs.variant}: train.max_minutes={tp.max_minutes:g} is expected to stop it after ~{fit} of {tp.epochs} epochs "
                f"(first-run guess: one core, {epoch_s / 60:.1f} min per epoch), before its learning-rate "
                f"schedule ends; for a converged model set generator.train.max_minutes=0")

    def _split_sizes(self) -> dict[str, int]:
        if not hasattr(self, "_sizes"):
            from components.data.dataset import Dataset

            ds = Dataset.from_artifact(self.registry.load(self.dataset_ref))
            self._sizes = {**{s: len(ds.splits[s]) for s in ("train", "valid", "test")}, "max_history": int(ds.max_history)}
        return self._sizes

    def plan(self, variants: list[str], seeds: list[int]) -> list[RunSpec]:
        """Every (variant, seed) to run, parents (``init_from``) first; unknown names and presets
        the machine cannot run fail before anything trains."""
        import torch

        for n in variants:
            if self.variant(n).kind == "generator":
                gp = self.generator_params(n)
                gp.check_fits(torch.cuda.is_available())
                if gp.decode.max_samples:
                    raise ExperimentError(f"generator.decode.max_samples={gp.decode.max_samples} (variant {n}): an experiment ranks "
                                          f"every valid/test sample; set it to 0")
        cache: dict = {}
        order: list[RunSpec] = []

        def visit(rs: RunSpec) -> None:
            for d in rs.deps:
                visit(d)
            if rs not in order:
                order.append(rs)

        for seed in seeds:
            for n in variants:
                visit(self.spec(n, seed, _cache=cache))
        return order

    # ---- running -----------------------------------------------------------------------------
    def run(self, variants: list[str], seeds: list[int], dry_run: bool = False) -> list[dict[str, Any]]:
        plan = self.plan(variants, seeds)
        todo = [rs for rs in plan if self.finished(rs) is None]
        eta = sum(self.expected_seconds(rs) for rs in todo)
        print(f"experiment {self.dataset}: {len(plan)} runs ({len(plan) - len(todo)} finished, {len(todo)} to run); "
              f"expected time {eta / 60:.0f} min")
        for rs in plan:
            state = "done" if rs not in todo else f"~{self.expected_seconds(rs) / 60:.1f} min"
            print(f"  {rs.variant:<22} seed {rs.seed:<6} -> {rs.name:<40} {state}")
        for w in dict.fromkeys(w for w in map(self.budget_warning, todo) if w):  # once per variant
            print(f"  warning: {w}")
        if dry_run:
            return []
        out, t_all = [], time.perf_counter()
        for i, rs in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {rs.variant} seed {rs.seed} (elapsed {(time.perf_counter() - t_all) / 60:.1f} min, "
                  f"left ≈ {sum(self.expected_seconds(r) for r in todo[i - 1:]) / 60:.0f} min)", flush=True)
            out.append(self.run_one(rs))
        return out

    def run_one(self, rs: RunSpec) -> dict[str, Any]:
        """Train (generator) or fit (baseline) and rank one (variant, seed); returns its summary."""
        t0 = time.perf_counter()
        if rs.spec.kind == "baseline":
            summary = self._run_baseline(rs, t0)
        else:
            summary = self._run_generator(rs, t0)
        return summary

    def _run_generator(self, rs: RunSpec, t0: float) -> dict[str, Any]:
        from components.generator.commands import rank_generator, train_generator

        rs = self.spec(rs.variant, rs.seed, build=True)  # codebooks exist now (built on demand)
        if rs.deps:
            parent = rs.deps[0]
            done = self.finished(parent)
            if done is None:
                raise ExperimentError(f"{rs.variant} warm-starts from {parent.variant} (seed {rs.seed}), whose run "
                                      f"{parent.name} has not finished: run it first")
            # the checkpoint that finished run ranked, not whatever generator/<name>@latest is now
            rs.init_ref = done.meta.get("checkpoint") or rs.init_ref
        art, summary, _ = train_generator(self.registry, rs.gp, self.dataset_ref, rs.codebook_ref, rs.name, seed=rs.seed,
                                          dataset_name=self.dataset, init_from=rs.init_ref, run_dir=f".genrec/runs/{rs.name}-{rs.key[:8]}",
                                          progress=self.progress)
        meta = {"variant": rs.variant, "seed": rs.seed, "run_key": rs.key, "train_seconds": summary["train_seconds"],
                "wall_seconds": summary["wall_seconds"]}
        rank_art, metrics = rank_generator(self.registry, rs.gp, art.ref, dataset_ref=self.dataset_ref, name=rs.name,
                                           progress=self.progress, meta={**meta, "run_seconds": round(time.perf_counter() - t0, 1)})
        return {"variant": rs.variant, "seed": rs.seed, "checkpoint": art.ref, "rankings": rank_art.ref, **summary,
                "rank_seconds": metrics["rank_seconds"], "test": metrics.get("test"), "valid": metrics.get("valid")}

    def _run_baseline(self, rs: RunSpec, t0: float) -> dict[str, Any]:
        from components.evaluation.commands import run_baselines

        suffix = "" if rs.seed == self.base_seed else f"-s{rs.seed}"
        method = rs.spec.method
        summary = run_baselines(self.registry, self.params, [method], seed=rs.seed, suffix=suffix, t0=t0)
        return {"variant": rs.variant, "seed": rs.seed, **summary["methods"][method]}
