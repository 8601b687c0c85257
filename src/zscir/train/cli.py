"""`zscir train <trainer>`: one command group for every trainer.

To add a trainer, write in your module:

    from zscir.train.cli import register_trainer

    def add_args(p: argparse.ArgumentParser) -> None: ...      # your options
    def run(args: argparse.Namespace) -> int: ...               # do it; return an exit code

    register_trainer("name", add_args, run, help="one line for `zscir train --help`")

in a new module of the zscir.train package: every module there is imported when the CLI is built.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Trainer:
    name: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""
    description: str = ""


_TRAINERS: dict[str, Trainer] = {}


def register_trainer(
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    help: str = "",
    description: str = "",
) -> None:
    """Make `zscir train NAME` available."""
    if name in _TRAINERS and _TRAINERS[name].run is not run:
        raise ValueError(f"trainer {name!r} registered twice")
    _TRAINERS[name] = Trainer(name, add_args, run, help, description or help)


def list_trainers() -> list[str]:
    """Every trainer, by name: every module of the zscir.train package is imported (a module registers its
    trainers when imported), so a new trainer is one new module and no list to edit."""
    import pkgutil

    import zscir.train

    for mod in pkgutil.iter_modules(zscir.train.__path__):
        importlib.import_module(f"zscir.train.{mod.name}")
    return sorted(_TRAINERS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method (adapters, mappers, ...): `zscir train TRAINER --help`",
                       description="Train one of the methods. Each trainer has its own options.")
    tsub = p.add_subparsers(dest="trainer", metavar="TRAINER")
    for name in list_trainers():
        t = _TRAINERS[name]
        tp = tsub.add_parser(name, help=t.help, description=t.description)
        t.add_args(tp)
        tp.set_defaults(func=t.run)

    def no_trainer(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_trainer)
