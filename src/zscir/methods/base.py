"""The composition-method interface.

A method turns reference images + modification texts into query embeddings, and says how the gallery is
embedded (most methods use the backbone's image tower; TAT tunes it; ISA keeps the large tower for the
gallery and a light one for queries). Evaluation, search and the service only ever call this interface:

    method.gallery_id            which encoder embeds the gallery (a cache key)
    method.encode_gallery(px)    (N, D) L2-normalised gallery embeddings
    method.compose(px, texts)    (B, D) L2-normalised query embeddings; px is None for text-only methods

Optional fast paths (default: not available): `compose_embedded` composes from a gallery item's stored
embedding; `embed_reference` / `embed_texts` / `compose_parts` split a query into one image-tower vector and
one text-tower vector, so a service can batch each tower on its own and cache text embeddings.

Methods register by name next to their class with `@register_method("name")`.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from zscir.backbones.base import Backbone
from zscir.errors import InputError


class CompositionMethod(nn.Module, abc.ABC):
    """Base class for every composition method (baselines, Slerp, pseudo-token methods, ISA)."""

    name: ClassVar[str] = ""
    #: False for methods that ignore the reference image (text-only)
    uses_image: ClassVar[bool] = True
    #: False for methods that ignore the text (image-only)
    uses_text: ClassVar[bool] = True
    #: checkpoint kinds (config.json "kind") this method is built from; empty: training-free
    checkpoint_kinds: ClassVar[tuple[str, ...]] = ()
    #: what to run to get a checkpoint (shown when one is missing)
    train_hint: ClassVar[str] = ""
    #: settings a user may pass (name -> default); anything else is refused by `check_settings`
    setting_defaults: ClassVar[dict[str, Any]] = {}
    #: the checkpoint a built method was made from (path, fingerprint, kind); set by `build_method`, absent before
    checkpoint_ref: dict[str, str]

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def gallery_id(self) -> str:
        """Identifies the gallery encoder; galleries embedded with the same id can be shared."""
        return backbone_gallery_id(self.backbone)

    def encode_gallery(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(pixels)

    @abc.abstractmethod
    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        """Query embeddings (B, D), L2-normalised, for reference pixels (B,3,H,W) and texts (B)."""

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor | None:
        """Fast path: compose from the references' *gallery* embeddings (B, D) when the method only needs
        those (a reference that is a gallery item, or a gallery id sent to the service). Returns None
        when the method needs more than the embedding (pseudo-token methods need local features)."""
        return None

    def embed_reference(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The reference images' query-side embeddings (B, D) such that `compose_parts(them, embed_texts(t))`
        equals `compose(pixels, t)`; None (the default) when the method composes from more than one vector
        per image."""
        return None

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor | None:
        """The modification texts' embeddings (B, D) when the query depends on the text only through them
        (they can then be batched and cached); None (the default) otherwise."""
        return None

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        """The query (B, D) from reference embeddings (`embed_reference`, or gallery embeddings) and
        `embed_texts` output; only for methods whose embed_texts is not None."""
        raise NotImplementedError(f"method {self.name!r} does not compose from separate tower outputs")

    def settings(self) -> dict[str, object]:
        """The method's settings, recorded in results files."""
        return {}

    # --- building (see zscir.methods.build) ------------------------------------------------------------------
    @classmethod
    def needs_checkpoint(cls) -> bool:
        return bool(cls.checkpoint_kinds)

    @classmethod
    def serves(cls, doc: dict[str, Any]) -> tuple[int, str]:
        """How well a checkpoint (its config.json as a dict) serves this method: (2, "") made for it,
        (1, "") loadable by it, (0, reason) not usable. The default: its kind is one of `checkpoint_kinds`."""
        if doc.get("kind") in cls.checkpoint_kinds:
            return 2, ""
        return 0, f"it is a {doc.get('kind')!r} checkpoint"

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint: Any, **settings: Any) -> CompositionMethod:
        """The ready method. `checkpoint` is a `zscir.methods.build.CheckpointRef` (None for training-free
        methods); `settings` are already validated against `setting_defaults`."""
        return cls(backbone, **settings)

    def with_settings(self, **settings: Any) -> CompositionMethod:
        """A shallow copy sharing every weight, with other settings (validated); `self` is unchanged."""
        settings = check_settings(type(self), settings)
        if not settings:
            return self
        out = copy.copy(self)
        for k, v in settings.items():
            object.__setattr__(out, k, v)
        return out


def backbone_gallery_id(backbone: Backbone) -> str:
    """The gallery id of a backbone's own image tower (every method that does not tune the gallery side)."""
    return f"{backbone.fingerprint()}/{backbone.preprocess_config.digest()}"


M = TypeVar("M", bound=type[CompositionMethod])
_METHODS: dict[str, type[CompositionMethod]] = {}


_ORDER: dict[str, float] = {}


def register_method(name: str, order: float = 1000.0) -> Callable[[M], M]:
    """Class decorator: make a method available by name. `order` is its place in listings (the service's
    method list, `--help`); lower first, then by name."""

    def deco(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        _ORDER[name] = order
        return cls

    return deco


def get_method_class(name: str) -> type[CompositionMethod]:
    import zscir.methods  # noqa: F401  (registers the built-in methods)

    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; available: {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    import zscir.methods  # noqa: F401

    return sorted(_METHODS, key=lambda n: (_ORDER.get(n, 1000.0), n))


def check_settings(cls: type[CompositionMethod], settings: dict[str, Any]) -> dict[str, Any]:
    """The one rule for user settings, used by every command and the service: None means "the method's
    default"; a setting the method does not declare is refused (never dropped); alpha must be in [0, 1]."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if key not in cls.setting_defaults:
            takes = ", ".join(cls.setting_defaults) or "none"
            raise InputError(f"method {cls.name!r} has no {key} setting (its settings: {takes})")
        out[key] = check_alpha(value) if key == "alpha" else value
    return out


def check_alpha(alpha: float) -> float:
    """Interpolation weights live in [0, 1]; anything else is a user error, not a silent clamp."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha {alpha!r} is not a number") from None
    if not 0.0 <= a <= 1.0 or a != a:
        raise InputError(f"alpha {alpha} is outside [0, 1]")
    return a


def require_pixels(pixels: torch.Tensor | None, method: str) -> torch.Tensor:
    if pixels is None:
        raise InputError(f"method {method!r} needs a reference image")
    return pixels


def check_batch(pixels: torch.Tensor | None, texts: Sequence[str]) -> None:
    if pixels is not None and len(texts) and pixels.shape[0] != len(texts):
        raise InputError(f"{pixels.shape[0]} reference images but {len(texts)} texts")
