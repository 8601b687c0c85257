"""Backbones by name. One string names a backbone, with a scheme prefix:

    default                 the embedded default, pre-trained by `zscir pretrain` ($ZSCIR_HOME/models/default)
    default:<dir>           an embedded-default checkpoint folder
    py:<module>:<callable>  a Backbone made by a Python factory (zscir.backbones.pyref; see Trust below)
    hf:<hub id or folder>   a Hugging Face CLIP or SigLIP checkpoint
    <folder>                a zscir checkpoint folder (config.json with "kind") or a Hugging Face folder

Loaders register next to their class with `@register_backbone(scheme)`. `load_backbone` is the one resolver:
every command (compose, eval, index, search, serve, export, train, data) resolves `--backbone` through it, so
every scheme works everywhere.

Trust: a spec naming code (`py:<module>:<callable>`, zscir.backbones.pyref) is honoured only when the user
gives it (a command-line flag, a Python call). A spec read from an index manifest or a checkpoint folder
(`recorded_in=`) that names code is refused: such a folder is data and never chooses code to run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zscir.backbones.base import PLACEHOLDER, AdapterTargets, Backbone, ImageStage, TokenizedTexts
from zscir.backbones.preprocess import PreprocessConfig
from zscir.errors import CheckpointError, InputError
from zscir.paths import models_dir

Loader = Callable[[str], Backbone]
_LOADERS: dict[str, Loader] = {}


def register_backbone(scheme: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _LOADERS[scheme] = fn
        return fn

    return deco


def list_backbone_schemes() -> list[str]:
    _import_all()
    return sorted(_LOADERS)


def _import_all() -> None:
    # Importing registers the loaders, so every command that resolves a spec through load_backbone knows every
    # scheme (default, hf:, py:); hf is optional at import time (transformers is always installed).
    from zscir.backbones import default as _default  # noqa: F401
    from zscir.backbones import pyref as _pyref  # noqa: F401

    try:
        from zscir.backbones import hf as _hf  # noqa: F401
    except ImportError:  # pragma: no cover - hf backbone module not present in a stripped install
        pass


# the pre-trained defaults `zscir demo` leaves under $ZSCIR_HOME/models, in the order `default` falls back on them
DEMO_MODELS = ("default-default-s0", "default-large-s0", "default-quick-s0")


def own_default_path() -> Path:
    """$ZSCIR_HOME/models/default: where `zscir pretrain` writes by default (the user's own default)."""
    return models_dir() / "default"


def default_model_path() -> Path:
    """The checkpoint `--backbone default` loads: the user's own ($ZSCIR_HOME/models/default) when there is
    one, else the one `zscir demo` pre-trained (the default world's first, then the large, then the quick).
    The demo never writes over the user's own."""
    own = own_default_path()
    if own.exists():
        return own
    for name in DEMO_MODELS:
        if (models_dir() / name / "config.json").is_file():
            return models_dir() / name
    return own


@register_backbone("default")
def _load_default(arg: str) -> Backbone:
    from zscir.backbones.default import DefaultBackbone

    path = Path(arg) if arg else default_model_path()
    if not path.exists():
        raise CheckpointError(
            f"{path}: no pre-trained default backbone there; run `zscir pretrain` or `zscir demo` first"
        )
    return DefaultBackbone.load(path)


CODE_SCHEMES = ("py",)  # schemes whose spec imports and calls code


def refuse_code_spec(spec: str, where: str) -> None:
    """Raise if `spec`, read from the file `where`, names code to run."""
    if spec.partition(":")[0] in CODE_SCHEMES:
        raise CheckpointError(
            f"{where}: records backbone {spec!r}, which names Python code; a folder never chooses code to run. "
            f"If you trust that code, pass it yourself: --backbone {spec}"
        )


def load_backbone(spec: str = "default", device: str | None = None, *, recorded_in: str | None = None) -> Backbone:
    """Load a backbone from its spec string (see module docstring), in eval mode, on `device`.

    `recorded_in`: the file the spec was read from (a manifest, a config), when it was not given by the
    user; a spec naming code is then refused (refuse_code_spec)."""
    if not isinstance(spec, str) or not spec:
        raise InputError(f"backbone spec {spec!r}: expected a non-empty string")
    if recorded_in is not None:
        refuse_code_spec(spec, recorded_in)
    _import_all()
    scheme, _, arg = spec.partition(":")
    if scheme in _LOADERS and (arg or scheme == "default"):
        model = _LOADERS[scheme](arg)
    elif scheme == "default":
        model = _LOADERS["default"]("")
    else:
        model = _load_folder(Path(spec))
    if device:
        model = model.to(device)
    return model.eval()


def _load_folder(path: Path) -> Backbone:
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        raise InputError(
            f"backbone {str(path)!r}: not a known scheme ({', '.join(s + ':' for s in sorted(_LOADERS))}) "
            "nor a checkpoint folder with a config.json"
        )
    from zscir.checkpoint import read_checkpoint_doc

    doc = read_checkpoint_doc(cfg)
    kind = doc.get("kind")
    if kind == "zscir.default-backbone":
        return _LOADERS["default"](str(path))
    if "model_type" in doc and "hf" in _LOADERS:
        return _LOADERS["hf"](str(path))
    raise CheckpointError(f"{path}: checkpoint of kind {kind or doc.get('model_type')!r} is not a backbone")


__all__ = [
    "AdapterTargets",
    "Backbone",
    "ImageStage",
    "PLACEHOLDER",
    "PreprocessConfig",
    "TokenizedTexts",
    "default_model_path",
    "own_default_path",
    "list_backbone_schemes",
    "load_backbone",
    "refuse_code_spec",
    "register_backbone",
]
