"""Composition methods by name (see base.py for the interface).

Each module of this package registers its methods with `@register_method(name, order=...)` and is imported when
the package is (no central list): image, text, sum (baselines.py), slerp, slerp+tat (tat.py), pic2word and
two-stage (mapped.py), lincir, the +rtd variants (rtd.py), isa. Every command builds a method with
`build_method(name, backbone, checkpoints, **settings)` (build.py).
"""

from zscir.methods.base import (
    CompositionMethod,
    check_alpha,
    check_settings,
    get_method_class,
    list_methods,
    register_method,
)
from zscir.methods.build import build_method, method_info, methods_for_checkpoint


def _import_all() -> None:
    # Importing a module registers its methods: every module of this package is imported, so a new method is one
    # new file here and no list to edit (listing order comes from each registration's `order`).
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_import_all()

__all__ = ["CompositionMethod", "build_method", "check_alpha", "check_settings", "get_method_class", "list_methods",
           "method_info", "methods_for_checkpoint", "register_method"]
