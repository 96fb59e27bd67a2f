"""The ``genrec`` entry point: one command with a subcommand per pipeline stage and tool.

Each component registers its own subcommands (``components/<component>/commands.py`` exposes
``register(subparsers)``); the handlers call the component's core classes and nothing else.
Errors a user can fix (bad params, bad data, missing or corrupted artifacts) print one line and
exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from functools import cached_property

from components.params import Params, ParamsError, load_params
from components.registry import ArtifactError, Registry

# Components that contribute subcommands; each module exposes register(subparsers).
COMMAND_MODULES = [
    "components.data.commands",
    "components.registry.commands",
    "components.retrieval.commands",
    "components.serving.commands",
    "components.tokenizer.commands",
    "components.evaluation.commands",
    "components.rebalancer.commands",
    "components.generator.commands",
    "components.experiment.commands",
]


@dataclass
class Context:
    """What every command handler gets: parsed params (lazily) and the registry."""

    args: argparse.Namespace

    @cached_property
    def params(self) -> Params:
        return load_params(self.args.params, self.args.set)

    @cached_property
    def registry(self) -> Registry:
        root = self.args.registry or os.environ.get("GENREC_ARTIFACTS") or self.params.registry.root
        return Registry(root)


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative recommendation with popularity-bias mitigation.")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, e.g. --set data.dataset=ml-100k")
    p.add_argument("--registry", default=None, help="artifacts root (default: registry.root param, env GENREC_ARTIFACTS)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ctx = Context(args)
    from components.data.dataset import DataError
    from components.experiment.runner import ExperimentError  # noqa: F401  (a ValueError)

    try:
        rc = args.func(args, ctx)
    except (ParamsError, ArtifactError, DataError, UserError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        msg = str(e).strip() or type(e).__name__
        print(f"genrec: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
