"""`TunedBackbone`: the one way to make a tuned copy of a backbone.

    tuned = TunedBackbone.copy_of(base, tune="image", tag="tat")     # own image tower, the base's text tower
    ... put adapters on tuned.image_tower, train or load them ...
    tuned.set_tuning({"path": ..., "fingerprint": ckpt.fingerprint})  # fingerprint from the weights' checkpoint

    view = TunedBackbone.copy_of(base, tune=(), preprocess=cfg)      # same weights, another preprocessing

The towers not in `tune` are the *same objects* as the base's (frozen parts stay bit-identical and cost no
memory); the tuned ones are deep copies. Used by TAT (the image tower), RTD (the text tower), two-stage's stage
2 (text-tower adapters) and `zscir eval --preprocess`.

Fingerprint: the base's when nothing is tuned (a preprocessing view: checkpoints trained on the base still
fit; caches key on the preprocessing digest themselves); otherwise a hash of the base fingerprint, the tag and
the tuned weights' fingerprint (the checkpoint's, or a hash of the tuned towers' tensors), so caches never mix
base and tuned embeddings. Tuned copies stack: stage 2 tuned on an RTD tower has the RTD copy as its base.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zscir.backbones.base import AdapterTargets, Backbone, ImageStage, TokenizedTexts, check_tower
from zscir.backbones.preprocess import PreprocessConfig
from zscir.checkpoint import tensors_fingerprint

# attributes that are not modules but are heavy and never tuned: a copy shares them with the base
_SHARED_ATTRS = ("tokenizer", "processor")


def tuned_fingerprint(base_fingerprint: str, tag: str, weights_fingerprint: str) -> str:
    """The fingerprint of `base` tuned (`tag`) with the weights whose fingerprint is given."""
    return hashlib.sha256(f"{base_fingerprint}+{tag}:{weights_fingerprint}".encode()).hexdigest()[:16]


class TunedBackbone(Backbone):
    """A backbone derived from `base`: the towers in `tuned` are its own copies, the others the base's;
    optionally another preprocessing. Every call goes to `inner`, the copy (see the module docstring)."""

    def __init__(self, base: Backbone, inner: Backbone, tuned: Sequence[str], tag: str,
                 preprocess: PreprocessConfig | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.tuned_towers = tuple(tuned)
        self.tag = tag
        self.spec = f"{base.spec}+{tag}" if self.tuned_towers else base.spec
        self.embed_dim = base.embed_dim
        self.word_dim = base.word_dim
        self.placeholder = base.placeholder
        self.max_text_tokens = base.max_text_tokens
        self.base_fingerprint = base.fingerprint()
        self._preprocess = preprocess or base.preprocess_config
        self._base_lineage: list[dict[str, Any]] = list(getattr(base, "lineage", []))
        self._source: dict[str, Any] | None = None
        self._fp: str | None = None

    @classmethod
    def copy_of(cls, base: Backbone, tune: str | Sequence[str] = "image", tag: str = "tuned",
                preprocess: PreprocessConfig | None = None) -> TunedBackbone:
        """A copy of `base` whose towers in `tune` ("image", "text", both or none) are its own; the others, the
        tokenizer and the base itself are untouched (their requires_grad flags included)."""
        towers = (tune,) if isinstance(tune, str) else tuple(tune)
        for t in towers:
            check_tower(t)
        if not towers:
            return cls(base, base, (), tag, preprocess).eval()
        memo: dict[int, object] = {}
        for t in ("image", "text"):
            if t not in towers:
                part = base.image_tower if t == "image" else base.text_tower
                memo[id(part)] = part
        for owner in _chain(base):
            for name in _SHARED_ATTRS:
                if hasattr(owner, name):
                    memo[id(getattr(owner, name))] = getattr(owner, name)
        inner = copy.deepcopy(base, memo)
        out = cls(base, inner, towers, tag, preprocess)
        out.freeze()
        return out.eval()

    # --- identity -------------------------------------------------------------------------------------------
    def set_tuning(self, source: dict[str, Any]) -> str:
        """Record what tuned this copy (`source["fingerprint"]`: the tuned weights' checkpoint) and return the
        new fingerprint."""
        self._source = {"tag": self.tag, **source}
        self._fp = None
        return self.fingerprint()

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """What tuned this copy and the copies below it, the oldest first: [{"tag", "path", "fingerprint", ...}]."""
        return self._base_lineage + ([dict(self._source)] if self._source else [])

    def tuning(self, tag: str) -> dict[str, Any]:
        """The last recorded source with this tag ({} when none), e.g. tuning("rtd")["path"]."""
        return next((dict(s) for s in reversed(self.lineage) if s.get("tag") == tag), {})

    def weights_fingerprint(self) -> str:
        """The tuned weights' fingerprint: the checkpoint's (set_tuning), else a hash of the tuned towers."""
        if self._source is not None:
            return str(self._source["fingerprint"])
        state: dict[str, torch.Tensor] = {}
        for t in self.tuned_towers:
            part = self.image_tower if t == "image" else self.text_tower
            state.update({f"{t}.{k}": v for k, v in part.state_dict().items()})
        return tensors_fingerprint(state)

    def fingerprint(self) -> str:
        if not self.tuned_towers:
            return self.base_fingerprint
        if self._fp is None:
            self._fp = tuned_fingerprint(self.base_fingerprint, self.tag, self.weights_fingerprint())
        return self._fp

    def refresh_fingerprint(self) -> str:
        """Recompute after changing the tuned weights in place (without a checkpoint: from the tensors)."""
        self._fp = None
        return self.fingerprint()

    def freeze(self) -> None:
        """requires_grad=False on this copy's own parameters; the shared towers' flags belong to the base."""
        if not self.tuned_towers:
            return  # a view: every parameter is the base's
        shared = {id(p) for t in self._shared_towers() for p in t.parameters()}
        for p in self.inner.parameters():
            if id(p) not in shared:
                p.requires_grad_(False)

    # --- everything else is the copy's --------------------------------------------------------------------------
    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner.image_tokens(pixels)

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.image_head(tokens)

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        return self.inner.tokenize(texts, n_pseudo)

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        return self.inner.text_trunk_from_embeddings(inputs_embeds, tok)

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.inner.text_head(pooled)

    def word_embeddings(self) -> nn.Embedding:
        return self.inner.word_embeddings()

    def image_stages(self) -> list[ImageStage]:
        return self.inner.image_stages()

    def run_image_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.inner.run_image_stages(x, start, stop)

    def image_tokens_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.inner.image_tokens_from(x, start)

    def adapter_targets(self, tower: str, **scope: Any) -> AdapterTargets:
        return self.inner.adapter_targets(tower, **scope)

    def local_feature_shape(self) -> tuple[int, int]:
        return self.inner.local_feature_shape()

    @property
    def image_tower(self) -> nn.Module:
        return self.inner.image_tower

    @property
    def text_tower(self) -> nn.Module:
        return self.inner.text_tower

    def train(self, mode: bool = True) -> TunedBackbone:
        # the copy's own train() decides what changes (e.g. the default keeps its BatchNorm statistics frozen);
        # the shared towers keep the base's modes
        shared = [(m, m.training) for t in self._shared_towers() for m in t.modules()]
        self.training = mode
        self.inner.train(mode)
        for m, was in shared:
            m.training = was
        return self

    def _shared_towers(self) -> list[nn.Module]:
        if not self.tuned_towers:
            return []
        return [self.inner.image_tower if t == "image" else self.inner.text_tower
                for t in ("image", "text") if t not in self.tuned_towers]


def _chain(backbone: Backbone) -> list[Backbone]:
    """The backbone and the copies it wraps, outermost first."""
    out = [backbone]
    while isinstance(out[-1], TunedBackbone) and out[-1].inner is not out[-1]:
        out.append(out[-1].inner)
    return out
