"""Hugging Face CLIP and SigLIP checkpoints behind the backbone interface.

    hf:<hub id>     e.g. hf:openai/clip-vit-base-patch32 (from the local HF cache, or the hub when reachable)
    hf:<folder>     a folder written by `save_pretrained` (config.json + weights + tokenizer files)

The split matches transformers' own computation exactly:

  CLIP    image_tokens = vision encoder output (CLS + patches, after pre-layernorm and the encoder)
          image_head   = post_layernorm(tokens[:, 0]) -> visual_projection        (== get_image_features)
          text trunk   = token + position embeddings -> causal (+ padding) encoder -> final layer norm,
                         pooled at the end-of-text token (first eos_token_id, or argmax of the ids for
                         checkpoints whose config carries the legacy eos_token_id == 2, as transformers does)
          text_head    = text_projection                                           (== get_text_features)
  SigLIP  image_tokens = vision encoder output (patches, before post-layernorm)
          image_head   = post_layernorm -> attention-pooling head                  (== get_image_features)
          text trunk   = embeddings -> bidirectional encoder -> final layer norm -> last position; texts are
                         padded to the full context (64) and run without a padding mask, as SigLIP was trained
          text_head    = text_model.head                                           (== get_text_features)

Images are preprocessed by zscir's own PIL code (no torchvision), with size/mean/std/crop read from the
checkpoint's preprocessor_config.json (or processor_config.json, all transformers 5.x writes) when there is one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from zscir.backbones import register_backbone
from zscir.backbones.base import (
    AdapterTargets,
    Backbone,
    ImageStage,
    TokenizedTexts,
    check_tower,
    pack_token_rows,
    warn_truncated,
)
from zscir.backbones.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig
from zscir.checkpoint import tensors_fingerprint
from zscir.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

SUPPORTED = ("clip", "siglip")
# config keys that say where/when a config was written, not what the model computes
_VOLATILE_KEYS = {"_name_or_path", "transformers_version", "_attn_implementation", "_attn_implementation_internal",
                  "_commit_hash", "dtype", "torch_dtype", "architectures", "output_attentions",
                  "output_hidden_states", "return_dict", "_attn_implementation_autoset"}
_RESAMPLE_NAMES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]
# the per-layer projections of CLIP's and SigLIP's transformer layers (attention and MLP)
_LAYER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class _Tower(nn.Module):
    """Groups the modules of one path (trunk + head) so adapters can target them together."""

    def __init__(self, **parts: nn.Module) -> None:
        super().__init__()
        for name, part in parts.items():
            self.add_module(name, part)


# --- locating and loading -----------------------------------------------------------------------------------
def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_checkpoint(arg: str) -> Path:
    """A local folder for `arg` (a folder, or a hub id found in the HF cache or downloaded)."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path
    if path.exists() or arg.startswith((".", "/", "~")) or arg.count("/") > 1 or "\\" in arg:
        raise CheckpointError(f"hf:{arg}: no such checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(arg, local_files_only=True, allow_patterns=_HUB_FILES))
    except Exception as local_err:
        if _offline():
            raise CheckpointError(
                f"hf:{arg}: not found locally (no such folder, not in the Hugging Face cache) and the hub is "
                "not reachable (offline mode is set); download it on a connected machine or pass a folder"
            ) from local_err
    try:
        return Path(snapshot_download(arg, allow_patterns=_HUB_FILES))
    except Exception as e:
        raise CheckpointError(
            f"hf:{arg}: not found locally (no such folder, not in the Hugging Face cache) and it could not be "
            f"fetched from the hub: no network reachable or no such model ({type(e).__name__}); "
            "download it on a connected machine or pass a folder"
        ) from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e.msg})") from e


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    class _Quiet:
        def __enter__(self) -> None:
            self.verbosity = hf_logging.get_verbosity()
            self.bars = hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()

        def __exit__(self, *exc: object) -> None:
            hf_logging.set_verbosity(self.verbosity)
            if self.bars:
                hf_logging.enable_progress_bar()

    return _Quiet()


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    files = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
    if not any((path / f).is_file() for f in files):
        # transformers would quietly build an empty default tokenizer for some model types
        raise CheckpointError(f"{path}: no tokenizer files there (expected one of {', '.join(files)})")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        if (path / "tokenizer.json").is_file():
            try:
                return PreTrainedTokenizerFast.from_pretrained(str(path))
            except Exception:  # noqa: BLE001
                pass
        hint = ""
        if (path / "spiece.model").is_file() or "sentencepiece" in str(e).lower():
            hint = "; SigLIP's SentencePiece tokenizer needs the `sentencepiece` package (or a tokenizer.json)"
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {str(e)[:200]}){hint}") from e


def _image_processor_doc(path: Path) -> dict[str, Any] | None:
    """The image processor's settings: preprocessor_config.json, or (transformers 5.x writes only this)
    processor_config.json, whose image settings sit under "image_processor" (or at top level)."""
    file = path / "preprocessor_config.json"
    if file.is_file():
        return _read_json(file)
    file = path / "processor_config.json"
    if file.is_file():
        doc = _read_json(file)
        sub = doc.get("image_processor") if isinstance(doc, dict) else None
        return sub if isinstance(sub, dict) else doc
    return None


def _preprocess_from(path: Path, model_type: str, image_size: int) -> PreprocessConfig:
    """size/mean/std/crop from preprocessor_config.json (or processor_config.json); CLIP's defaults (SigLIP's
    for SigLIP) when there is neither."""
    if model_type == "siglip":
        default = PreprocessConfig(size=image_size, mode="resize", mean=(0.5,) * 3, std=(0.5,) * 3)
    else:
        default = PreprocessConfig(size=image_size, mode="center_crop", mean=CLIP_MEAN, std=CLIP_STD)
    doc = _image_processor_doc(path)
    if doc is None:
        return default

    def side(v: Any) -> int | None:
        if isinstance(v, int):
            return v
        if isinstance(v, dict):
            return v.get("shortest_edge") or v.get("height") or v.get("width")
        return None

    crop = bool(doc.get("do_center_crop", default.mode == "center_crop"))
    size = side(doc.get("crop_size")) if crop else side(doc.get("size"))
    size = int(size or image_size)
    if size != image_size:
        log.warning("%s: preprocessor size %d differs from the vision tower's %d; using %d",
                    path, size, image_size, image_size)
        size = image_size
    mean = tuple(float(x) for x in doc.get("image_mean", default.mean))
    std = tuple(float(x) for x in doc.get("image_std", default.std))
    resample = doc.get("resample", 3)
    interp = _RESAMPLE_NAMES.get(resample, "bicubic") if isinstance(resample, int) else "bicubic"
    return PreprocessConfig(size=size, mode="center_crop" if crop else "resize", mean=mean, std=std,  # type: ignore[arg-type]
                            interpolation=interp)


def _clean_config(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _clean_config(v) for k, v in sorted(d.items()) if k not in _VOLATILE_KEYS}
    if isinstance(d, (list, tuple)):
        return [_clean_config(v) for v in d]
    return d


# --- the backbone ---------------------------------------------------------------------------------------------
class HFBackbone(Backbone):
    """A Hugging Face CLIP or SigLIP checkpoint (see module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, preprocess: PreprocessConfig, spec: str) -> None:
        # model: a transformers CLIPModel / SiglipModel, reached through its own attribute names
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        cfg = model.config
        self.model_type: str = cfg.model_type
        self.is_clip = self.model_type == "clip"
        text_cfg, vis_cfg = cfg.text_config, cfg.vision_config
        self.image_size = int(vis_cfg.image_size)
        self.word_dim = int(text_cfg.hidden_size)
        if self.is_clip:
            self.embed_dim = int(cfg.projection_dim)
            self._image = _Tower(vision_model=model.vision_model, visual_projection=model.visual_projection)
            self._text = _Tower(text_model=model.text_model, text_projection=model.text_projection)
        else:
            if not getattr(vis_cfg, "vision_use_head", True):
                raise CheckpointError(f"{spec}: SigLIP vision tower without a pooling head is not supported")
            self.embed_dim = int(getattr(text_cfg, "projection_size", None) or text_cfg.hidden_size)
            self._image = _Tower(vision_model=model.vision_model)
            self._text = _Tower(text_model=model.text_model)
        self.max_text_tokens = int(text_cfg.max_position_embeddings)
        self._preprocess = preprocess
        self.placeholder_id = self._find_placeholder_id()
        # CLIP: pad to the longest text (the causal mask makes the pooled token blind to what follows it, so
        # this equals padding to 77); SigLIP: always pad to the full context, it pools the last position.
        self.pad_to_context = not self.is_clip
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(text_cfg, "pad_token_id", None)
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        # transformers' CLIPTextModel pools at the first eos_token_id, or at argmax(input_ids) when the
        # config carries the legacy eos_token_id == 2 (openai checkpoints).
        self.eos_token_id = getattr(text_cfg, "eos_token_id", None) if self.is_clip else None
        self._fingerprint: str | None = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_folder(cls, path: Path, spec: str) -> HFBackbone:
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path}: no config.json, not a Hugging Face checkpoint")
        model_type = _read_json(cfg_file).get("model_type")
        if model_type not in SUPPORTED:
            raise CheckpointError(
                f"{path}: model_type {model_type!r} is not a supported vision-language backbone "
                f"(supported: {', '.join(SUPPORTED)})"
            )
        from transformers import CLIPModel, SiglipModel

        model_cls = CLIPModel if model_type == "clip" else SiglipModel
        try:
            with _quiet_transformers():
                model = model_cls.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot load the {model_type} weights ({e})") from e
        tokenizer = _load_tokenizer(path)
        pre = _preprocess_from(path, model_type, int(cast(Any, model.config).vision_config.image_size))
        return cls(model, tokenizer, pre, spec)

    # --- parts ------------------------------------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self._image

    @property
    def text_tower(self) -> nn.Module:
        return self._text

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    # --- image path -------------------------------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise InputError(f"expected pixels of shape (B, {', '.join(map(str, expected))}), got {got}")
        return self.image_tokens_from(pixels, 0)

    def image_tokens_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.run_image_stages(x, start)  # a ViT's stages already speak in tokens

    # --- image stages: the patch embedding (+ CLIP's pre-layernorm), then each encoder layer ------------------
    def image_stages(self) -> list[ImageStage]:
        vm = self.model.vision_model
        width = int(self.model.config.vision_config.hidden_size)
        patch = int(self.model.config.vision_config.patch_size)
        first = ("vision_model.embeddings", "vision_model.pre_layrnorm") if self.is_clip else ("vision_model.embeddings",)
        stages = [ImageStage("embeddings", first, width, patch, "NLC")]
        stages += [ImageStage(f"layer{i}", (f"vision_model.encoder.layers.{i}",), width, patch, "NLC")
                   for i in range(len(vm.encoder.layers))]
        return stages

    def run_image_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        vm = self.model.vision_model
        layers = vm.encoder.layers
        stop = len(layers) + 1 if stop is None else stop
        for i in range(start, stop):
            if i == 0:
                x = vm.embeddings(x)
                if self.is_clip:
                    x = vm.pre_layrnorm(x)
            else:
                x = layers[i - 1](x, None)  # the encoder's own loop: no attention mask on the image side
        return x

    def adapter_targets(self, tower: str, *, last_blocks: int | None = None, head: bool = False,
                        head_out: bool = False) -> AdapterTargets:
        """Image: the attention and MLP projections of *every* vision encoder layer, whatever `last_blocks`,
        `head` and `head_out` say (the recipe zscir has always used on ViTs; existing adapter checkpoints
        hold all layers). Text: every Linear of the text encoder's layers."""
        check_tower(tower)
        if tower == "text":
            return lambda name, m: isinstance(m, nn.Linear) and name.startswith("text_model.encoder.layers.")

        def targets(name: str, m: nn.Module) -> bool:
            return (isinstance(m, nn.Linear) and name.startswith("vision_model.encoder.layers.")
                    and name.rsplit(".", 1)[-1] in _LAYER_PROJECTIONS)

        return targets

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        if self.is_clip:
            return self.model.visual_projection(vm.post_layernorm(tokens[:, 0, :]))
        return vm.head(vm.post_layernorm(tokens))

    # --- text path --------------------------------------------------------------------------------------------
    def word_embeddings(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def _find_placeholder_id(self) -> int:
        ids = self.tokenizer(self.placeholder, add_special_tokens=False)["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        # drop a bare word-start piece (sentencepiece "▁") that some tokenizers emit before the symbol
        ids = [i for i in ids if i not in special and self.tokenizer.convert_ids_to_tokens(i) not in ("▁", "Ġ", " ")]
        if len(ids) != 1:
            raise CheckpointError(
                f"{self.spec}: the placeholder {self.placeholder!r} is {len(ids)} tokens for this tokenizer, "
                "it must be exactly one"
            )
        return int(ids[0])

    def _spaced(self, text: str) -> str:
        # "$," or "($)" would otherwise fuse the placeholder with punctuation into another token
        return " ".join(text.replace(self.placeholder, f" {self.placeholder} ").split())

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        texts = list(texts)
        if not texts:
            raise InputError("no texts to tokenise")
        if n_pseudo:
            texts = [self._spaced(self.expand_placeholders(t, n_pseudo)) for t in texts]
        raw = self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        limit = self.max_text_tokens
        special = set(self.tokenizer.all_special_ids) - {self.placeholder_id}
        rows: list[list[int]] = []
        n_cut = 0
        for i, r in enumerate(raw):
            r = list(r)
            if len(r) > limit:
                n_cut += 1
                tail = 0  # keep trailing special tokens (CLIP's end-of-text, SigLIP's </s>)
                while tail < len(r) and r[len(r) - 1 - tail] in special:
                    tail += 1
                kept = r[: limit - tail] + (r[len(r) - tail:] if tail else [])
                if n_pseudo and kept.count(self.placeholder_id) != r.count(self.placeholder_id):
                    raise InputError(
                        f"text {texts[i][:80]!r}... is longer than the {limit}-token context and truncating it "
                        f"would cut its placeholder {self.placeholder!r}; shorten the text"
                    )
                r = kept
            rows.append(r)
        warn_truncated(n_cut, limit)
        width = limit if self.pad_to_context else None
        return pack_token_rows(rows, texts, self.pad_id, self.placeholder_id, n_pseudo, self.device, width)

    def _eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(torch.int)
        if self.eos_token_id == 2 or self.eos_token_id is None:
            return ids.argmax(dim=-1)
        return (ids == int(self.eos_token_id)).int().argmax(dim=-1)

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        tm = self.model.text_model
        if inputs_embeds.shape[1] > self.max_text_tokens:
            raise InputError(f"{inputs_embeds.shape[1]} text positions, the context holds {self.max_text_tokens}")
        hidden = tm.embeddings(inputs_embeds=inputs_embeds)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.is_clip:
            from transformers.masking_utils import create_causal_mask

            mask = create_causal_mask(
                config=tm.config, inputs_embeds=hidden, attention_mask=tok.attention_mask.to(hidden.device),
                past_key_values=None,
            )
            out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
            out = tm.final_layer_norm(out)
            return out[rows, self._eos_positions(tok.input_ids).to(hidden.device)]
        # SigLIP: no padding mask (trained that way), pooled at the last position
        out = tm.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
        return tm.final_layer_norm(out)[:, -1, :]

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.is_clip:
            return self.model.text_projection(pooled)
        return self.model.text_model.head(pooled)

    # --- identity ---------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            extra = {
                "backbone": "hf",
                "config": _clean_config(self.model.config.to_dict()),
                "pre": self._preprocess.digest(),
                "tokenizer": [type(self.tokenizer).__name__, len(self.tokenizer), self.placeholder_id, self.pad_id],
            }
            self._fingerprint = tensors_fingerprint(self.model.state_dict(), extra)
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        """Recompute after changing weights in place (the fingerprint is cached: hashing a big model is slow)."""
        self._fingerprint = None
        return self.fingerprint()


@register_backbone("hf")
def load_hf(arg: str) -> HFBackbone:
    if not arg:
        raise InputError("hf: needs a hub id or a folder, e.g. hf:openai/clip-vit-base-patch32")
    path = resolve_checkpoint(arg)
    return HFBackbone.from_folder(path, spec=f"hf:{arg}")
