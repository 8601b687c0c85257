"""`zscir train <method>`: one command group for the method trainers.

A trainer module exposes `register(subparsers)` (adding its own parser, whose `func` runs it) and is listed in
TRAINER_MODULES, or registers itself at import with `register_trainer(module_name)`."""

from __future__ import annotations

import argparse
import importlib

TRAINER_MODULES: list[str] = ["zscir.train.rtd"]


def register_trainer(module: str) -> None:
    if module not in TRAINER_MODULES:
        TRAINER_MODULES.append(module)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method (zscir train <method> --help)",
                       description="Train a composition method's learned parts.")
    tsub = p.add_subparsers(dest="trainer", metavar="METHOD")
    for name in TRAINER_MODULES:
        importlib.import_module(name).register(tsub)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)
