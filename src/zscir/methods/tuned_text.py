"""The tuned text sides pseudo-token methods run their queries through, each a `TunedBackbone` whose text tower
is its own and whose image tower is the backbone's:

    load_rtd_text_encoder(path, backbone)   an RTD-tuned text tower (`zscir train rtd`; methods/rtd.py)
    lora_text_encoder(backbone, cfg)        fresh LoRA adapters on the text tower (two-stage's stage 2 trains them)
    load_text_adapters(backbone, ckpt)      stage 2's trained adapters from a two-stage checkpoint (methods/mapped.py)

Stage 2 may start from an RTD tower (the checkpoint records it as `text_init`); the tuned copies then stack.
Both methods/mapped.py and methods/rtd.py build on this module, which imports neither.

RTD checkpoint (kind `zscir.rtd-text-tower`): full fine-tuning stores every text-tower tensor except the word
embedding table (kept frozen: it is the space the mapper's pseudo tokens live in); LoRA stores only the
adapters, which are merged into the copy on load. A checkpoint tuned on another backbone is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir.backbones.base import AdapterTargets, Backbone
from zscir.backbones.tuned import TunedBackbone
from zscir.checkpoint import check_fingerprint, load_checkpoint, tensors_fingerprint
from zscir.config import from_dict
from zscir.errors import CheckpointError, InputError
from zscir.nn.lora import LoRAConfig, apply_lora, merge_lora

RTD_KIND = "zscir.rtd-text-tower"


def frozen_word_table_names(backbone: Backbone) -> set[str]:
    """State-dict names (relative to text_tower) of the word-embedding table, which RTD never tunes."""
    table = backbone.word_embeddings()
    return {f"{n}.weight" for n, m in backbone.text_tower.named_modules() if m is table}


def text_fingerprint(encoder: Backbone) -> str:
    """A content hash of a text tower (to check LoRA adapters land on the tower they were tuned on)."""
    return tensors_fingerprint({k: v for k, v in encoder.text_tower.state_dict().items() if "word_embeddings" not in k})


def load_rtd_text_encoder(path: str | Path, backbone: Backbone, base: Backbone | None = None) -> TunedBackbone:
    """A copy of the text encoder RTD started from (`base`: the method's text side; default `backbone`) whose
    text tower carries the RTD-tuned weights from `path`. A LoRA checkpoint tuned on top of another method's
    tuned text side (e.g. two-stage's) needs that text side as `base`; `with_rtd` passes it."""
    ckpt = load_checkpoint(path, RTD_KIND)
    check_fingerprint(ckpt, backbone.fingerprint(), "RTD text tower")
    init = ckpt.meta.get("init", {}) or {}
    base_fp = text_fingerprint(base) if base is not None and base is not backbone else "backbone"
    if ckpt.config.get("tune") == "lora" and init.get("text_fingerprint", "backbone") != base_fp:
        raise CheckpointError(
            f"{path}: these LoRA adapters were tuned on top of the text encoder of {init.get('source', '?')}; "
            "load them onto that method's text side (with_rtd(method, path))"
        )
    tuned = TunedBackbone.copy_of(base if base is not None else backbone, tune="text", tag="rtd")
    tower = tuned.text_tower
    tune = ckpt.config.get("tune", "full")
    try:
        if tune == "lora":
            lcfg = LoRAConfig(**ckpt.config["lora"])
            apply_lora(tower, tuned.adapter_targets("text"), lcfg, freeze=True)
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
    tuned.freeze()
    tuned.spec = f"{backbone.spec}+rtd:{Path(path).name}"
    # the tuned copy never shares caches with the text side it started from: its fingerprint covers the weights
    tuned.set_tuning({"path": str(path), "fingerprint": ckpt.fingerprint, "tune": tune})
    return tuned.eval()


def lora_text_encoder(backbone: Backbone, cfg: LoRAConfig, targets: AdapterTargets | None = None
                      ) -> tuple[TunedBackbone, list[str]]:
    """A copy of `backbone` whose text tower carries fresh LoRA adapters on the backbone's text adapter targets
    (only they are trainable); the original backbone is untouched, so the gallery side stays exactly the
    pre-trained one."""
    enc = TunedBackbone.copy_of(backbone, tune="text", tag="two-stage")
    wrapped = apply_lora(enc.text_tower, targets or enc.adapter_targets("text"), cfg, freeze=True)
    if not wrapped:
        raise InputError(f"no LoRA targets found in the text tower of backbone {backbone.spec!r}")
    return enc, wrapped


def load_text_adapters(backbone: Backbone, ckpt: Any, merge: bool = True, text_init: str | Path | None = None
                       ) -> TunedBackbone:
    """The tuned text encoder stored in a two-stage checkpoint (LoRA tensors prefixed `text.`). When stage 2
    started from an RTD-tuned tower (`text_init`), that checkpoint is loaded first and must be the very one
    the adapters were trained on."""
    lcfg = from_dict(LoRAConfig, ckpt.config["lora"])
    enc, _ = lora_text_encoder(_text_init(backbone, ckpt, text_init), lcfg)
    state = {k[len("text."):]: v for k, v in ckpt.tensors.items() if k.startswith("text.")}
    missing = [k for k in enc.text_tower.state_dict() if (".lora_A" in k or ".lora_B" in k) and k not in state]
    if missing or not state:
        raise CheckpointError(f"{ckpt.path}: text adapters missing from the checkpoint ({len(missing)} tensors)")
    enc.text_tower.load_state_dict(state, strict=False)
    if merge:
        merge_lora(enc.text_tower)
    enc.set_tuning({"path": str(ckpt.path), "fingerprint": ckpt.fingerprint})
    return enc.eval()


def _text_init(backbone: Backbone, ckpt: Any, where: str | Path | None = None) -> Backbone:
    init = ckpt.config.get("text_init") or None
    if not init:
        return backbone
    path = Path(where or init["path"])
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{ckpt.path}: its stage 2 was trained on the RTD text tower {path}, which is missing")
    start = load_rtd_text_encoder(path, backbone)
    got = start.tuning("rtd")["fingerprint"]
    if got != init["fingerprint"]:
        raise CheckpointError(f"{ckpt.path}: the RTD text tower at {path} is not the one its stage 2 was trained on "
                              f"(fingerprint {got[:12]}, expected {init['fingerprint'][:12]})")
    return start
