"""`py:<module>:<callable>`: a backbone made by a Python factory (no arguments) importable in this process.

Used for tests and for plugging in backbones that live outside zscir. The spec is recorded in an index's
manifest, so worker processes (Ray actors, `zscir serve`) rebuild the same backbone from it."""

from __future__ import annotations

import importlib

from zscir.backbones import Backbone, register_backbone
from zscir.errors import InputError


@register_backbone("py")
def load_py_backbone(arg: str) -> Backbone:
    module_name, _, attr = arg.partition(":")
    if not module_name or not attr:
        raise InputError(f"backbone 'py:{arg}': expected py:<module>:<callable>")
    try:
        module = importlib.import_module(module_name)
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
