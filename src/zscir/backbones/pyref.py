"""`py:<module>:<callable>`: a backbone made by a Python factory (no arguments) importable in this process.

Used for tests and for plugging in backbones that live outside zscir. The spec is recorded in an index's
manifest for information, but it is code: opening the index never runs it (zscir.backbones.refuse_code_spec);
the user passes `--backbone py:...` again. Worker processes (Ray actors) get the spec from the user's command.

The module is imported from the installed packages and PYTHONPATH only, never from the current folder (which
`python -m` puts first on sys.path): being in a folder must not make its files code that runs."""

from __future__ import annotations

import importlib
import os
import sys

from zscir.backbones import Backbone, register_backbone
from zscir.errors import InputError


@register_backbone("py")
def load_py_backbone(arg: str) -> Backbone:
    module_name, _, attr = arg.partition(":")
    if not module_name or not attr:
        raise InputError(f"backbone 'py:{arg}': expected py:<module>:<callable>")
    try:
        module = _import_outside_cwd(module_name)
    except ImportError as e:
        raise InputError(f"backbone 'py:{arg}': cannot import {module_name!r} ({e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"backbone 'py:{arg}': {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, Backbone):
        raise InputError(f"backbone 'py:{arg}': the factory returned {type(model).__name__}, not a Backbone")
    model.spec = f"py:{arg}"
    return model


def _import_outside_cwd(name: str):
    """import `name` with the current folder removed from sys.path (unless PYTHONPATH names it)."""
    explicit = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    cwd = os.path.realpath(os.getcwd())
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.realpath(p or ".") != cwd or os.path.realpath(p or ".") in explicit]
    try:
        if name in sys.modules:
            module = sys.modules[name]
            origin = os.path.realpath(getattr(module, "__file__", "") or "")
            if os.path.dirname(origin) == cwd and cwd not in explicit:
                raise ImportError(f"{name} was imported from the current folder; refusing it")
            return module
        return importlib.import_module(name)
    finally:
        added = [p for p in sys.path if p not in saved]
        sys.path[:] = saved + added
