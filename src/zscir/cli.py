"""The `zscir` command. Each subcommand lives next to the code it drives and registers itself:
a module listed in COMMANDS exposes `register(subparsers)`, which adds a parser whose default `func`
takes the parsed args and returns an exit code. Errors a user can act on (ZscirError) print one line and
exit 2; nothing else is caught, so a bug keeps its traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from zscir.errors import ZscirError

# Order = order in `zscir --help`.
COMMANDS: tuple[str, ...] = (
    "zscir.world.cli",
    "zscir.train.pretrain",
    "zscir.train.cli",
    "zscir.compose_cli",
    "zscir.export",
    "zscir.experiments.demo",
    "zscir.eval.cli",
    "zscir.eval.compare",
    "zscir.data.cli",
    "zscir.eval.score_cli",
    "zscir.index.cli",
    "zscir.index.search_cli",
    "zscir.serve.cli",
)


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zscir",
        description="Zero-shot composed image retrieval: a reference image + a text saying what should "
        "differ -> a ranking of a gallery.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[str] = COMMANDS) -> int:
    """`commands` narrows the parser to some subcommands (tests of one subcommand use it)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ZscirError as e:
        print(f"zscir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zscir {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
