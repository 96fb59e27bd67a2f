"""``genrec data fetch|stats|validate`` and ``genrec prepare``."""

from __future__ import annotations

import sys

from components.data import CATALOG, Dataset, fetch, load_dataset
from components.data.dataset import DataError
from components.data.fetch import fetch_local
from components.data.stats import dataset_stats, format_stats
from components.data.validate import validate
from components.registry.store import write_json_atomic as _write_json


def register(sub) -> None:
    data = sub.add_parser("data", help="fetch raw data, print dataset statistics")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    f = dsub.add_parser("fetch", help="place a catalog dataset's raw files under data/raw/NAME")
    f.add_argument("name", nargs="?", default=None, help="catalog name (default: data.dataset param)")
    f.add_argument("--dest", default="data/raw", help="raw data root (default: data/raw)")
    f.add_argument("--mirror", default=None, help="local mirror directory (default: env GENREC_DATA_MIRROR)")
    f.add_argument("--url", default=None, help="download base URL instead of the catalog's")
    f.add_argument("--force", action="store_true", help="fetch again even if verified files are present")
    f.set_defaults(func=cmd_fetch)

    s = dsub.add_parser("stats", help="users, items, interactions, sparsity, head/tail shares, history lengths")
    s.add_argument("ref", nargs="?", default=None, help="dataset artifact (default: dataset/<data.dataset>@latest)")
    s.add_argument("--out", default=None, help="also write the statistics as JSON (a DVC metric)")
    s.set_defaults(func=cmd_stats)

    v = dsub.add_parser("validate", help="detect a raw data directory's format, count it and list every problem (file:line)")
    v.add_argument("path", nargs="?", default=None, help="raw data directory (default: data.path, else data/raw/<data.dataset>)")
    v.add_argument("--format", default=None, help="format instead of data.format (auto-detected when auto)")
    v.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare", help="load the raw dataset (data: params) and write a dataset artifact")
    p.add_argument("--raw", default="data/raw", help="raw data root (default: data/raw)")
    p.add_argument("--stats-out", default=None, help="write dataset statistics JSON here (a DVC metric)")
    p.set_defaults(func=cmd_prepare)


def cmd_fetch(args, ctx) -> int:
    name = args.name or ctx.params.data.dataset
    if name not in CATALOG and ctx.params.data.path:
        dest = fetch_local(name, ctx.params.data.path, args.dest)
    else:
        dest = fetch(name, args.dest, mirror=args.mirror, url=args.url, force=args.force)
    print(f"{name}: raw files verified in {dest}")
    return 0


def cmd_stats(args, ctx) -> int:
    ref = args.ref or f"dataset/{ctx.params.data.dataset}@latest"
    ds = Dataset.from_artifact(ctx.registry.load(ref))
    stats = dataset_stats(ds)
    print(format_stats(stats))
    if args.out:
        _write_json(args.out, stats)
    return 0


def cmd_validate(args, ctx) -> int:
    dp = ctx.params.data
    if args.format:
        dp = dp.model_copy(update={"format": args.format})
    path = args.path or dp.path or f"data/raw/{dp.dataset}"
    report = validate(path, dp)
    print(report.text())
    return 1 if report.errors else 0


def check_raw(data_params, raw_root) -> None:
    """``prepare``'s check: errors stop it (DataError), warnings are printed."""
    from pathlib import Path

    from components.data import CATALOG

    path = Path(raw_root) / data_params.dataset
    if not path.is_dir():
        return  # load_dataset names what is missing
    dp = data_params
    if dp.format == "auto" and dp.dataset in CATALOG:
        dp = dp.model_copy(update={"format": CATALOG[dp.dataset].format})
    report = validate(path, dp)
    if report.errors:
        print(report.text(limit=20), file=sys.stderr)
        first = report.errors[0]
        raise DataError(f"{len(report.errors)} data errors in {path}, first {first} (all: `genrec data validate {path}`)")
    if report.warnings:
        print(report.text(limit=10))


def cmd_prepare(args, ctx) -> int:
    params = ctx.params
    check_raw(params.data, args.raw)
    ds = load_dataset(params.data, raw_root=args.raw)
    art = ds.save(ctx.registry, params={"data": params.data.model_dump(mode="json")})
    print(f"wrote {art.ref}: {ds.n_items:,} items, {ds.n_users:,} users, "
          + " / ".join(f"{k} {len(v):,}" for k, v in ds.splits.items()) + " samples")
    if args.stats_out:
        _write_json(args.stats_out, dataset_stats(ds))
    return 0
