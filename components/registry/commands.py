"""``genrec artifacts list|show|verify``."""

from __future__ import annotations


def register(sub) -> None:
    a = sub.add_parser("artifacts", help="inspect the artifacts registry")
    asub = a.add_subparsers(dest="artifacts_command", metavar="ACTION")
    asub.required = True
    ls = asub.add_parser("list", help="latest version of every artifact (optionally of one kind)")
    ls.add_argument("kind", nargs="?", default=None)
    ls.set_defaults(func=cmd_list)
    show = asub.add_parser("show", help="an artifact and its lineage back to the dataset")
    show.add_argument("ref", help="kind/name[@version|@latest]")
    show.set_defaults(func=cmd_show)
    ver = asub.add_parser("verify", help="check every file's size and sha256")
    ver.add_argument("ref")
    ver.set_defaults(func=cmd_verify)


def cmd_list(args, ctx) -> int:
    for art in ctx.registry.list(args.kind):
        print(f"{art.ref}  {art.manifest.created}")
    return 0


def cmd_show(args, ctx) -> int:
    chain = ctx.registry.lineage(args.ref)
    for depth, art in enumerate(chain):
        m = art.manifest
        pad = "  " * min(depth, 1)
        arrow = "└─ " if depth else ""
        meta = ", ".join(f"{k}={v}" for k, v in m.meta.items() if not isinstance(v, (dict, list)))
        print(f"{pad}{arrow}{m.ref}  ({len(m.files)} files, {sum(f.size for f in m.files):,} bytes, created {m.created})")
        if meta:
            print(f"{pad}   {meta}")
    return 0


def cmd_verify(args, ctx) -> int:
    art = ctx.registry.load(args.ref, verify=True)
    print(f"{art.ref}: {len(art.manifest.files)} files verified")
    return 0
