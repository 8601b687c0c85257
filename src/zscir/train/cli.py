"""`zscir train <trainer>`: one command group for every trainer.

A trainer registers itself with `register_trainer(name, add_args, run, help)`: `add_args(parser)` adds its
options, `run(args)` trains and returns an exit code. Modules in TRAINER_MODULES are imported (and so
register) when the command line is built; each trainer is also a plain Python function taking a config
dataclass (the demo recipes call those directly)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable

TRAINER_MODULES: tuple[str, ...] = ("zscir.train.pseudo_token", "zscir.train.rtd")


@dataclass
class Trainer:
    name: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


_TRAINERS: dict[str, Trainer] = {}


def register_trainer(name: str, add_args: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int], help: str = "") -> None:
    _TRAINERS[name] = Trainer(name, add_args, run, help)


def list_trainers() -> dict[str, Trainer]:
    for mod in TRAINER_MODULES:
        importlib.import_module(mod)
    return dict(_TRAINERS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method's parts (mappers, adapters) on a world",
                       description="Train one method component; each trainer writes a checkpoint folder.")
    tsub = p.add_subparsers(dest="trainer", metavar="TRAINER")
    for t in list_trainers().values():
        tp = tsub.add_parser(t.name, help=t.help, description=t.help)
        t.add_args(tp)
        tp.set_defaults(func=t.run)

    def no_trainer(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_trainer)
