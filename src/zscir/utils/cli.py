"""The options every command shares, declared once: --backbone, --device and --seed (the trainers' --out and
the rest of their shared options come from zscir.train.engine.add_engine_args), and the generator that turns
a settings dataclass into flags (`add_config_args`) and the parsed flags back into settings
(`config_from_args`).

A settings field carries its flag in its metadata, most simply through `option`:

    @dataclass
    class MyConfig:
        hidden: int = option(512, "mapper width (default: %(default)s)")
        n_tokens: int = option(1, "pseudo tokens per image", flag="--tokens")
        loss: str = option("cosine", choices=("cosine", "infonce"))
        anchor: bool = option(True, "ablation: keys from the tuned tower")      # --no-anchor
        lora_dropout: float = option(0.1, cli=False)                            # the Python API only

    def add_args(p):
        add_engine_args(p, ...)                 # --out, --device, --seed, --steps, --lr, ...: declared once
        add_config_args(p, MyConfig)            # every other field
    def run(args):
        cfg = config_from_args(MyConfig, args, **engine_args(args))
        cfg.check()                             # the one validation, the Python API calls it too
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection, Iterable
from typing import Any

BACKBONE_SCHEMES = "default, default:<folder>, hf:<hub id or folder>, py:<module>:<factory>"


def add_backbone_arg(p: Any, default: str | None = "default", help: str = "") -> None:
    """--backbone SPEC. `default=None` or "": the command decides (e.g. the index's own backbone)."""
    what = help or "backbone"
    shown = f" (default: {default})" if default else ""
    p.add_argument("--backbone", default=default, metavar="SPEC", help=f"{what}: {BACKBONE_SCHEMES}{shown}")


def add_device_arg(p: Any) -> None:
    """--device: "" means CUDA when present, else the CPU (zscir.utils.runtime.pick_device)."""
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")


def add_seed_arg(p: Any, help: str = "random seed: same seed, same result") -> None:
    p.add_argument("--seed", type=int, default=0, help=f"{help} (default: 0)")


def parser_group(p: argparse.ArgumentParser, title: str) -> Any:
    """An argument group (a place to put the shared options under their own heading in --help)."""
    return p.add_argument_group(title)


# --- flags from settings dataclasses ---------------------------------------------------------------------
def option(default: Any, help: str = "", *, flag: str = "", choices: Iterable[Any] = (), metavar: str = "",
           required: bool = False, cli: bool = True) -> Any:
    """A settings field with its command-line flag (see the module doc). `flag`: the flag when it is not
    `--field-name` (`--no-field-name` for a bool whose default is True); `required`: the flag must be given
    (the field's default then serves the Python API only); `cli=False`: no flag at all."""
    meta: dict[str, Any] = {"help": help, "flag": flag, "choices": tuple(choices), "metavar": metavar,
                            "required": required}
    return dataclasses.field(default=default, metadata={**{k: v for k, v in meta.items() if v}, "cli": cli})


def _config_class(config: Any) -> type:
    cls = config if isinstance(config, type) else type(config)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return cls


def _default(config: Any, f: dataclasses.Field) -> Any:
    if not isinstance(config, type):  # an instance: its values are the defaults (e.g. pic2word_config())
        return getattr(config, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_flag(f: dataclasses.Field, default: Any) -> str:
    """The flag of field `f`: its metadata's `flag`, else --field-name (--no-field-name: a bool defaulting to True)."""
    if f.metadata.get("flag"):
        return str(f.metadata["flag"])
    return ("--no-" if default is True else "--") + f.name.replace("_", "-")


def add_config_args(p: Any, config: Any, *, skip: Collection[str] = (), only: Collection[str] | None = None) -> None:
    """Declare one flag per field of the dataclass `config` (a class, or an instance whose values are the
    defaults) on the parser or argument group `p`: the type from the annotation (int, float, str; a bool is
    `--flag` when its default is False, `--no-flag` when True), the default from the dataclass, help, flag
    name, choices, metavar and `required` from the field's metadata (`option`). The flag's dest is the field
    name, so `config_from_args` reads it back.

    Not declared: the fields in `skip`, those outside `only` (when given), those whose metadata says
    `cli=False`, and those whose flag the parser already has: the shared options (--out, --device, --seed,
    --steps, --lr, ... of add_engine_args; --backbone; --images/--pairs and their columns of add_source_args)
    are declared once, by their own helpers, before this is called."""
    cls = _config_class(config)
    hints = typing.get_type_hints(cls)
    taken = p._option_string_actions  # shared by a parser and its argument groups
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in skip or (only is not None and f.name not in only) or not meta.get("cli", True):
            continue
        default, typ = _default(config, f), hints[f.name]
        flag = config_flag(f, default)
        if flag in taken:
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": meta.get("help") or None}
        if typ is bool:
            kw.update(action="store_false" if default else "store_true", default=bool(default))
        else:
            if typ in (int, float):
                kw["type"] = typ
            elif typ is not str:
                raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {typ!r} (int, float, str or bool)")
            if meta.get("required"):
                kw["required"] = True
            else:
                kw["default"] = default
            for k in ("choices", "metavar"):
                if meta.get(k):
                    kw[k] = meta[k]
            if meta.get("flag") and not meta.get("metavar") and not meta.get("choices"):
                kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()  # as argparse names it from the flag
        p.add_argument(flag, **kw)


def config_from_args(config: Any, args: argparse.Namespace, **extra: Any) -> Any:
    """The settings `config` (a dataclass, or an instance whose values are the defaults) from parsed flags:
    every field with a value in `args` (one named like the field; None there means "not given", the default
    stands), then `extra`, which wins: the shared options as engine_args(args) / source_args(args) return
    them, already checked, and anything the trainer derives itself."""
    cls = _config_class(config)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    values.update(extra)
    if isinstance(config, type):
        return cls(**values)
    return dataclasses.replace(config, **values)
