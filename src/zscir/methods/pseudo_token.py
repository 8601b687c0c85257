"""The pseudo-word-token family (Pic2Word, SEARLE, LinCIR, two-stage, RTD, ISA): an image becomes one or
more token embeddings in the text tower's word space, and the query is the text tower run on a template such
as `a photo of $ that {text}` with `$` replaced by those tokens.

`PseudoTokenMethod` holds what the family shares (template handling, the text side, the gallery side);
subclasses only say how pixels become tokens (`pseudo_tokens`). The gallery is always embedded by
`backbone`'s image tower; the text side may be a different (tuned) copy of the backbone (`text_encoder`),
as two-stage and RTD tune the text tower."""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence

import torch

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.methods.base import CompositionMethod, check_batch, require_pixels

DEFAULT_TEMPLATE = "a photo of $ that {text}"


def empty_prompt(template: str) -> str:
    """What a template says for an empty modification: its text before `{text}`, minus a trailing connective."""
    head = template.split("{text}")[0].rstrip()
    return re.sub(r"\s+(that|which|who|and|with|but)$", "", head) or head or "$"


def check_template(template: str, placeholder: str = "$") -> str:
    """A template must hold the placeholder and `{text}`; refused with a message saying what is missing."""
    if placeholder not in template:
        raise InputError(f"template {template!r} has no placeholder {placeholder!r} for the pseudo token(s)")
    if "{text}" not in template:
        raise InputError(f"template {template!r} has no '{{text}}' slot for the modification text")
    return template


class PseudoTokenMethod(CompositionMethod, abc.ABC):
    """Base class: compose = text_encoder(template with $ := pseudo_tokens(reference image))."""

    def __init__(self, backbone: Backbone, template: str = DEFAULT_TEMPLATE, text_encoder: Backbone | None = None) -> None:
        super().__init__(backbone)
        self.template = check_template(template, backbone.placeholder)
        self.text_encoder = text_encoder if text_encoder is not None else backbone

    @abc.abstractmethod
    def pseudo_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, M, W) token embeddings in the text tower's word space."""

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The template filled with each text. An empty modification (official benchmark files have a few) keeps
        only the part before `{text}` without its connective (`a photo of $ that {text}` -> `a photo of $`)."""
        out = []
        for t in texts:
            if not isinstance(t, str):
                raise InputError(f"modification text {t!r} is not a string")
            out.append(self.template.replace("{text}", t.strip()) if t.strip() else empty_prompt(self.template))
        return out

    def compose_tokens(self, tokens: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode_text_with_tokens(self.prompts(texts), tokens)

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        check_batch(pixels, texts)
        return self.compose_tokens(self.pseudo_tokens(require_pixels(pixels, self.name)), texts)

    def settings(self) -> dict[str, object]:
        return {"template": self.template}
