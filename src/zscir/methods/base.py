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
from typing import Callable, ClassVar, Sequence, TypeVar

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

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def gallery_id(self) -> str:
        """Identifies the gallery encoder; galleries embedded with the same id can be shared."""
        return f"{self.backbone.fingerprint()}/{self.backbone.preprocess_config.digest()}"

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


M = TypeVar("M", bound=type[CompositionMethod])
_METHODS: dict[str, type[CompositionMethod]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available by name."""

    def deco(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
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

    return list(_METHODS)


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
