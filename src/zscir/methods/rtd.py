"""RTD (reducing task discrepancy of the text encoder): the inference side of the plug-in.

`zscir train rtd` tunes a copy of the text tower on text triplets so that it *composes* a pseudo token with
a modification text (see zscir/train/rtd.py). Any pseudo-token method (Pic2Word, two-stage, ...) can then
run its queries through that tuned tower while its gallery stays on the original backbone's image tower:

    tuned = load_rtd_text_encoder(CKPT, backbone)        # a copy of backbone with the tuned text tower
    method = with_rtd(Pic2Word(backbone, mapper), CKPT)  # "pic2word+rtd"

Checkpoint (kind `zscir.rtd-text-tower`): full fine-tuning stores every text-tower tensor except the word
embedding table (kept frozen: it is the space the mapper's pseudo tokens live in); LoRA stores only the
adapters, which are merged into the copy on load. A checkpoint tuned on another backbone is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from zscir.backbones.base import Backbone
from zscir.checkpoint import check_fingerprint, load_checkpoint
from zscir.errors import CheckpointError
from zscir.methods.base import CompositionMethod
from zscir.nn.lora import LoRAConfig, apply_lora, merge_lora

RTD_KIND = "zscir.rtd-text-tower"


def lora_targets(name: str, module: nn.Module) -> bool:
    """LoRA goes where two-stage puts it: every Linear inside the text transformer's blocks, not the head."""
    from zscir.methods.mapped import text_block_linear

    return text_block_linear(name, module)


def frozen_word_table_names(backbone: Backbone) -> set[str]:
    """State-dict names (relative to text_tower) of the word-embedding table, which RTD never tunes."""
    table = backbone.word_embeddings()
    return {f"{n}.weight" for n, m in backbone.text_tower.named_modules() if m is table}


def load_rtd_text_encoder(path: str | Path, backbone: Backbone, base: Backbone | None = None) -> Backbone:
    """A copy of the text encoder RTD started from (`base`: the method's text side; default `backbone`) whose
    text tower carries the RTD-tuned weights from `path`. A LoRA checkpoint tuned on top of another method's
    tuned text side (e.g. two-stage's) needs that text side as `base`; `with_rtd` passes it."""
    ckpt = load_checkpoint(path, RTD_KIND)
    check_fingerprint(ckpt, backbone.fingerprint(), "RTD text tower")
    init = ckpt.meta.get("init", {}) or {}
    base_fp = _text_fingerprint(base) if base is not None and base is not backbone else "backbone"
    if ckpt.config.get("tune") == "lora" and init.get("text_fingerprint", "backbone") != base_fp:
        raise CheckpointError(
            f"{path}: these LoRA adapters were tuned on top of the text encoder of {init.get('source', '?')}; "
            "load them onto that method's text side (with_rtd(method, path))"
        )
    tuned = copy.deepcopy(base if base is not None else backbone)
    tower = tuned.text_tower
    tune = ckpt.config.get("tune", "full")
    try:
        if tune == "lora":
            lcfg = LoRAConfig(**ckpt.config["lora"])
            apply_lora(tower, lora_targets, lcfg, freeze=True)
            missing = set(ckpt.tensors) - set(tower.state_dict())
            if missing:
                raise CheckpointError(f"{path}: adapters {sorted(missing)[:3]} do not fit this text tower")
            tower.load_state_dict(ckpt.tensors, strict=False)
            merge_lora(tower)
        elif tune == "full":
            result = tower.load_state_dict(ckpt.tensors, strict=False)
            allowed = frozen_word_table_names(backbone)
            if result.unexpected_keys or set(result.missing_keys) - allowed:
                raise CheckpointError(
                    f"{path}: weights do not fit this text tower (missing {sorted(set(result.missing_keys) - allowed)[:3]},"
                    f" unexpected {result.unexpected_keys[:3]})"
                )
        else:
            raise CheckpointError(f"{path}: unknown tuning mode {tune!r}")
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit this text tower ({e})") from e
    for p in tuned.parameters():
        p.requires_grad_(False)
    tuned.eval()
    tuned.spec = f"{backbone.spec}+rtd:{Path(path).name}"
    # The tuned copy must never share caches with the original text side.
    tuned._fingerprint = f"{backbone.fingerprint()}+rtd{ckpt.fingerprint[:8]}"  # type: ignore[attr-defined]
    tuned.refresh_fingerprint = lambda: tuned._fingerprint  # type: ignore[method-assign]
    tuned.rtd_checkpoint = {"path": str(path), "fingerprint": ckpt.fingerprint, "tune": tune}  # type: ignore[attr-defined]
    return tuned


class RTDMethod(CompositionMethod):
    """A pseudo-token method whose queries run through an RTD-tuned text tower; named `<base>+rtd`.

    The gallery, the mapper and the template are the base method's; only `text_encoder` is swapped."""

    def __init__(self, base: CompositionMethod, text_encoder: Backbone) -> None:
        if not hasattr(base, "text_encoder"):
            raise CheckpointError(f"RTD plugs into pseudo-token methods; {base.name!r} has no text encoder to tune")
        super().__init__(base.backbone)
        base.text_encoder = text_encoder
        self.base = base
        self.name = f"{base.name}+rtd"  # type: ignore[misc]

    @property
    def gallery_id(self) -> str:
        return self.base.gallery_id

    def encode_gallery(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.encode_gallery(pixels)

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.base.compose(pixels, texts)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor | None:
        return self.base.compose_embedded(ref_embeddings, texts)

    def settings(self) -> dict[str, object]:
        enc = self.base.text_encoder
        return {**self.base.settings(), "rtd": dict(getattr(enc, "rtd_checkpoint", {}))}


def with_rtd(method: CompositionMethod, path: str | Path) -> RTDMethod:
    """`method` (a pseudo-token method) with its text side replaced by the RTD-tuned tower at `path`."""
    if not hasattr(method, "text_encoder"):
        raise CheckpointError(f"RTD plugs into pseudo-token methods; {method.name!r} has no text encoder to tune")
    return RTDMethod(method, load_rtd_text_encoder(path, method.backbone, base=method.text_encoder))


def _text_fingerprint(encoder: Backbone) -> str:
    """A content hash of a text tower (to check LoRA adapters land on the tower they were tuned on)."""
    from zscir.checkpoint import tensors_fingerprint

    return tensors_fingerprint({k: v for k, v in encoder.text_tower.state_dict().items() if "word_embeddings" not in k})
