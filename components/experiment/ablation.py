"""A paper's ablation as an experiment: a dict of variant blocks run through :class:`Experiment`
(same presets, seeds, resume and report as `genrec experiment run`). The bench scripts
(``bench/care_ablation.py``, ``bench/genplugin_ablation.py``, ``bench/tokenizer_flexcode.py``) are
thin callers of :func:`run_variants`.

Variant names share the registry with the main experiment: a block identical to one in
params.yaml (e.g. ``tiger: {}``) reuses its finished runs; give a scratch ``registry`` when the
overrides differ from the pipeline's, so the pipeline's ``@latest`` artifacts stay its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from components.experiment.runner import Experiment, seed_list


def ensure_inputs(registry_root: str, params_path: str, overrides: Sequence[str], params, need_retrieval: bool = False) -> None:
    """Build what the variants train on when it is missing: dataset, item embeddings, the
    tokenizer's codebook (and the retrieval index for GenPlugin)."""
    from components.cli import main as genrec
    from components.registry import ArtifactNotFound, Registry

    reg = Registry(registry_root)
    ds = params.data.dataset
    base = ["--registry", registry_root, "--params", params_path, *[x for o in overrides for x in ("--set", o)]]
    steps = [("dataset", ds, [["data", "fetch", ds], ["prepare"]]), ("item-embeddings", ds, [["embed"]]),
             ("codebook", f"{ds}-{params.tokenizer.method}", [["tokenize"]])]
    if need_retrieval:
        steps.append(("retrieval-index", ds, [["retrieval", "build"]]))
    for kind, name, cmds in steps:
        try:
            reg.load(f"{kind}/{name}@latest", verify=False)
        except ArtifactNotFound:
            for cmd in cmds:
                if genrec([*base, *cmd]) != 0:
                    raise SystemExit(f"genrec {' '.join(cmd)} failed")


def run_variants(variants: dict[str, dict[str, Any]], *, name: str, reference: str, seeds: int = 1, params_path: str = "params.yaml",
                 overrides: Sequence[str] = (), registry_root: str | None = None, need_retrieval: bool = False,
                 dry_run: bool = False) -> dict[str, Any]:
    """Run ``variants`` x ``seeds`` and write ``reports/<name>.md``, ``metrics/<name>.json`` and
    ``plots/<name>/``; returns the metrics payload (``methods``, ``std``, ``per_seed``, ``change_vs``)."""
    from components.experiment.report import write_experiment_report
    from components.params import load_params
    from components.registry import Registry

    sets = [*overrides, f"experiment.variants={json.dumps(variants)}", f"experiment.reference={reference}",
            "experiment.report=[]", "experiment.pipeline=[]"]
    params = load_params(params_path, sets)
    root = registry_root or params.registry.root
    ensure_inputs(root, params_path, overrides, params, need_retrieval=need_retrieval)
    exp = Experiment(params, Registry(root), overrides=list(overrides), progress=False)
    exp.params_path = params_path
    seed_values = seed_list(params.seed, seeds)
    exp.run(list(variants), seed_values, dry_run=dry_run)
    if dry_run:
        return {}
    metrics = Path("metrics") / f"{name}.json"
    write_experiment_report(exp.registry, exp, list(variants), seed_values, ev=params.evaluation, split=params.evaluation.split,
                            metrics_path=metrics, plots_dir=Path("plots") / name, report_path=Path("reports") / f"{name}.md",
                            reference=reference)
    print(f"wrote reports/{name}.md, {metrics}, plots/{name}/")
    return json.loads(metrics.read_text())


def add_common_args(ap) -> None:
    ap.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds seed .. seed+N-1)")
    ap.add_argument("--params", default="params.yaml", help="params file (its preset and dataset apply to every variant)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override for every variant")
    ap.add_argument("--registry", default=None, help="artifacts root (default: the params' registry.root)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its expected time only")
