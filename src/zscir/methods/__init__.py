"""Composition methods by name (see base.py for the interface).

Built in: image, text, sum (baselines.py) and slerp (slerp.py). Later modules add slerp+tat, pic2word,
two-stage, the +rtd variants and isa, each registering itself with `@register_method`. Every command builds
a method with `build_method(name, backbone, checkpoints, **settings)` (build.py).
"""

from zscir.methods.base import (
    CompositionMethod,
    check_alpha,
    check_settings,
    get_method_class,
    list_methods,
    register_method,
)

# isort: off
# Importing a module registers its methods; the order here is the order of tables and reports (isort: off keeps it).
from zscir.methods import baselines as _baselines  # noqa: F401
from zscir.methods import slerp as _slerp_module  # noqa: F401
from zscir.methods import tat as _tat_module  # noqa: F401
from zscir.methods import mapped as _mapped  # noqa: F401
from zscir.methods import rtd as _rtd_module  # noqa: F401
from zscir.methods import isa as _isa_module  # noqa: F401

from zscir.methods.build import build_method, method_info, methods_for_checkpoint

__all__ = ["CompositionMethod", "build_method", "check_alpha", "check_settings", "get_method_class", "list_methods",
           "method_info", "methods_for_checkpoint", "register_method"]
