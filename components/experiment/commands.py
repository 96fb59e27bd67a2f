"""``genrec experiment``: run the variants of ``experiment:`` (params.yaml) over seeds, and report.

    genrec experiment list                         # variants, their codebooks and state
    genrec experiment run [--variants A B] [--seeds 3] [--dry-run]   # resumable; then the report
    genrec experiment variant A [B ...]            # one seed (params seed): what a DVC stage runs
    genrec experiment report [--seeds 3]           # report over what has finished
"""

from __future__ import annotations

from components.experiment.runner import Experiment, ExperimentError, seed_list


def register(sub) -> None:
    e = sub.add_parser("experiment", help="every method (experiment.variants) x seeds on one split, and the report")
    esub = e.add_subparsers(dest="experiment_command", metavar="ACTION")
    esub.required = True

    ls = esub.add_parser("list", help="the variants, the codebook each trains on, and which runs have finished")
    ls.add_argument("--seeds", type=int, default=None, help="seeds to show (default: experiment.seeds)")
    ls.set_defaults(func=cmd_list)

    r = esub.add_parser("run", help="train + rank every variant x seed not finished yet (resumable), then write the report")
    r.add_argument("--variants", nargs="+", default=None, help="variants to run (default: every variant in experiment.variants)")
    r.add_argument("--seeds", type=int, default=None, help="runs per variant: seeds seed .. seed+N-1 (default: experiment.seeds)")
    r.add_argument("--only-seeds", type=int, nargs="+", default=None,
                   help="run only these of the seeds (e.g. one per machine or core: --only-seeds 2025); names and "
                        "parents stay those of the full seed list, the report still covers every seed")
    r.add_argument("--dry-run", action="store_true", help="print the plan and the expected time, run nothing")
    _report_args(r)
    r.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    v = esub.add_parser("variant", help="run variants with the params seed only (a `dvc repro` stage)")
    v.add_argument("names", nargs="+", help="variant names")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_variant)

    rep = esub.add_parser("report", help="evaluate every finished variant x seed on the same split and write the report")
    rep.add_argument("--variants", nargs="+", default=None, help="report columns (default: experiment.report, else every variant)")
    rep.add_argument("--seeds", type=int, default=None, help="seeds to aggregate (default: experiment.seeds)")
    rep.add_argument("--strict", action="store_true", help="fail when a variant x seed has not finished (default: leave it out, listed)")
    _report_args(rep)
    rep.set_defaults(func=cmd_report)


def _report_args(p) -> None:
    p.add_argument("--split", default=None, choices=["valid", "test"], help="split (default: evaluation.split)")
    p.add_argument("--metrics-out", default="metrics/evaluation.json", help="metrics JSON (default: metrics/evaluation.json)")
    p.add_argument("--plots-dir", default="plots/evaluation", help="plots directory (default: plots/evaluation)")
    p.add_argument("--report", default="reports/evaluation.md", help="markdown report (default: reports/evaluation.md)")


def _experiment(args, ctx) -> Experiment:
    ep = ctx.params.experiment
    if not ep.variants:
        raise ExperimentError("experiment.variants is empty: add a params block per method (see params.yaml)")
    exp = Experiment(ctx.params, ctx.registry, overrides=getattr(args, "set", []), progress=not getattr(args, "no_progress", False))
    exp.params_path = args.params
    return exp


def _seeds(args, ctx) -> list[int]:
    n = args.seeds if getattr(args, "seeds", None) is not None else ctx.params.experiment.seeds
    return seed_list(ctx.params.seed, n)


def cmd_list(args, ctx) -> int:
    exp = _experiment(args, ctx)
    seeds = _seeds(args, ctx)
    for name, v in ctx.params.experiment.variants.items():
        what = f"baseline {v.method}" if v.kind == "baseline" else f"codebook {v.codebook}" + (f", warm start from {v.init_from}" if v.init_from else "")
        states = []
        for s in seeds:
            rs = exp.spec(name, s)
            states.append(f"{s}:{'done' if exp.finished(rs) is not None else '-'}")
        print(f"{name:<22} {what:<50} {' '.join(states)}")
    return 0


def _report(args, ctx, exp: Experiment, variants: list[str], seeds: list[int]) -> None:
    from components.experiment.report import write_experiment_report

    ep = ctx.params.experiment
    labels = {n: v.label for n, v in ep.variants.items() if v.label}
    written = write_experiment_report(ctx.registry, exp, variants, seeds, ev=ctx.params.evaluation, split=args.split or ctx.params.evaluation.split,
                                      metrics_path=args.metrics_out, plots_dir=args.plots_dir, report_path=args.report,
                                      reference=ep.reference, labels=labels)
    print("wrote " + ", ".join(str(p) for p in written.values()))


def cmd_run(args, ctx) -> int:
    exp = _experiment(args, ctx)
    ep = ctx.params.experiment
    variants = args.variants or list(ep.variants)
    seeds = _seeds(args, ctx)
    run_seeds = seeds
    if args.only_seeds:
        bad = sorted(set(args.only_seeds) - set(seeds))
        if bad:
            raise ExperimentError(f"--only-seeds {bad}: not among the experiment's seeds {seeds} (seed {ctx.params.seed}, --seeds {len(seeds)})")
        run_seeds = [s for s in seeds if s in set(args.only_seeds)]
    exp.run(variants, run_seeds, dry_run=args.dry_run)
    if not args.dry_run and not args.no_report:
        _report(args, ctx, exp, [v for v in (ep.report or list(ep.variants)) if v in variants or not args.variants], seeds)
    return 0


def cmd_variant(args, ctx) -> int:
    exp = _experiment(args, ctx)
    exp.run(args.names, [ctx.params.seed])
    return 0


def cmd_report(args, ctx) -> int:
    exp = _experiment(args, ctx)
    ep = ctx.params.experiment
    variants = args.variants or ep.report or list(ep.variants)
    for v in variants:
        exp.variant(v)
    per = _seeds(args, ctx)
    if args.strict:
        from components.experiment.report import collect

        collect(ctx.registry, exp, variants, per, args.split or ctx.params.evaluation.split, ctx.params.evaluation, allow_missing=False)
    _report(args, ctx, exp, variants, per)
    return 0
