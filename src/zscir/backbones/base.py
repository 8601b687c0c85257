"""The backbone interface every composition method and trainer talks to.

A backbone is a CLIP-style pair of towers mapping into one embedding space, split so that frozen parts can
be cached and trained parts swapped:

    pixels --image_tokens--> local features (B, L, C) --image_head--> embedding (B, D)
    texts  --text_trunk----> pooled features (B, Ct)   --text_head---> embedding (B, D)

`text_trunk` can also take pseudo-word tokens: every text must then contain the placeholder (`$` by
default), and the placeholder's word embedding is replaced by the given token embeddings (in the tower's
word-embedding space, `word_dim` wide). That is the hook every pseudo-token method (Pic2Word, two-stage,
RTD, ISA) uses.

Extension points for methods that tune or split a tower (TAT, ISA, RTD, two-stage), so that none of them needs
to know what is inside a backbone:

- `image_stages()` lists the image trunk's stages (in the manner of timm's `feature_info`: each with its
  output channels and reduction); `run_image_stages(x, start, stop)` runs a range of them and
  `image_tokens_from(x, start)` finishes the trunk from the input of stage `start`, so a trainer can cache a
  frozen prefix and run only the adapted suffix.
- `adapter_targets(tower, ...)` says which layers of the image or text tower take LoRA adapters.
- `TunedBackbone` (backbones/tuned.py) is the one way to make a tuned copy of a backbone.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from zscir.backbones.preprocess import PreprocessConfig, preprocess_batch
from zscir.errors import InputError

log = logging.getLogger(__name__)

PLACEHOLDER = "$"
#: a predicate over (module name inside a tower, module): whether that layer takes an adapter
AdapterTargets = Callable[[str, nn.Module], bool]
TOWERS = ("image", "text")
# Generic fallbacks for backbones that do not declare their adapter targets (e.g. `py:` plug-ins): the usual
# names of a transformer's per-layer projections.
_VIT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class ImageStage:
    """One stage of an image trunk (timm's `feature_info` entry): the unit `run_image_stages` runs."""

    #: a short name, e.g. "stem", "block3", "layer11"
    name: str
    #: the stage's modules, as names inside `image_tower`; a layer belongs to the stage when its name is one of
    #: them or lies below one
    modules: tuple[str, ...]
    #: channels of the stage's output
    channels: int
    #: input pixels per output cell along one side (the stride from the image to this stage)
    reduction: int
    #: the output's layout: "NCHW" (a CNN feature map) or "NLC" (a transformer's tokens, timm's output_fmt)
    layout: str = "NCHW"

    def owns(self, layer: str) -> bool:
        """Whether the layer named `layer` (inside `image_tower`) is part of this stage."""
        return any(layer == m or layer.startswith(m + ".") for m in self.modules)


@dataclass
class TokenizedTexts:
    """Token ids plus where the pseudo tokens go. `pseudo_positions[b]` lists the sequence positions of
    text b that receive pseudo tokens, in order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pseudo_positions: list[list[int]]


class Backbone(nn.Module, abc.ABC):
    """A vision-language backbone. Subclasses implement the five abstract pieces below."""

    #: the string that names this backbone (e.g. "default", "hf:openai/clip-vit-base-patch32")
    spec: str
    embed_dim: int
    word_dim: int
    placeholder: str = PLACEHOLDER
    #: tokens longer than this are truncated (with a warning that says so)
    max_text_tokens: int

    # --- abstract pieces -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def preprocess_config(self) -> PreprocessConfig: ...

    @abc.abstractmethod
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower's local features (B, L, C): feature-map cells or ViT patch tokens."""

    @abc.abstractmethod
    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool + project local features to the joint space (B, D), not normalised."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        """Tokenise texts; when n_pseudo > 0 each text's placeholder becomes n_pseudo token slots."""

    @abc.abstractmethod
    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        """Run the text transformer on word embeddings (B, T, W) and pool to (B, Ct)."""

    @abc.abstractmethod
    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Project pooled text features to the joint space (B, D), not normalised."""

    @abc.abstractmethod
    def word_embeddings(self) -> nn.Embedding:
        """The text tower's token-embedding table (vocab, word_dim)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short hash of architecture + weights (+ preprocessing): caches and checkpoints key on it."""

    def feature_fingerprint(self, feature: str) -> str:
        """What a frozen feature (`image_tokens`, `text_trunk`) depends on: the feature cache's key.

        By default the whole model's fingerprint. A backbone whose trunk is shared by models with different
        heads (the embedded default: pre-training trains only the heads) returns the trunk's own hash, so the
        pre-training pass and every later trainer share one cached trunk pass."""
        return self.fingerprint()

    # --- parts, for adapters and freezing ------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def image_tower(self) -> nn.Module:
        """Every module on the image path (trunk + head)."""

    @property
    @abc.abstractmethod
    def text_tower(self) -> nn.Module:
        """Every module on the text path (embeddings, transformer, head)."""

    # --- extension points (overridden by backbones that know their insides; see the module docstring) -------
    def image_stages(self) -> list[ImageStage]:
        """The image trunk's stages in order; [] when the backbone exposes none (then `image_tokens` is the only
        way through the trunk)."""
        return []

    def run_image_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The output of stage `stop - 1` (the last stage when None), given `x`, the input of stage `start`
        (pixels when 0, else the output of stage `start - 1`)."""
        raise NotImplementedError(f"backbone {self.spec!r} exposes no image stages")

    def image_tokens_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Local features (B, L, C), as `image_tokens` gives them, from `x`, the input of stage `start`."""
        if start == 0:
            return self.image_tokens(x)
        raise NotImplementedError(f"backbone {self.spec!r} exposes no image stages")

    def image_stage_outputs(self, pixels: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The outputs of the stages `indices` (every stage by default), the trunk run once."""
        n = len(self.image_stages())
        wanted = sorted(set(range(n) if indices is None else (i % n for i in indices)))
        outs, x, at = [], pixels, 0
        for i in wanted:
            x, at = self.run_image_stages(x, at, i + 1), i + 1
            outs.append(x)
        return outs

    def adapter_targets(self, tower: str, *, last_blocks: int | None = None, head: bool = False,
                        head_out: bool = False) -> AdapterTargets:
        """The layers of `tower` ("image" or "text") that take LoRA adapters, as a predicate over (name inside
        that tower, module). `last_blocks`: only the trunk's last N blocks (None: all); `head` / `head_out`:
        also the image head's input / output projection. A backbone may document that it ignores these (its
        trunk has no cacheable prefix or its head no such projection).

        This fallback: the Linear layers of the transformer blocks (`layer.N` / `layers.N`); in the image tower
        only the attention and MLP projections."""
        check_tower(tower)
        if tower == "text":
            return transformer_block_linear

        def vit_projections(name: str, m: nn.Module) -> bool:
            return isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in _VIT_PROJECTIONS and ".layers." in name

        return vit_projections

    def local_feature_shape(self) -> tuple[int, int]:
        """(cells, channels) of `image_tokens` at the backbone's preprocessing size."""
        size = self.preprocess_config.size
        with torch.no_grad():
            t = self.image_tokens(torch.zeros(1, 3, size, size, device=self.device))
        return int(t.shape[1]), int(t.shape[2])

    # --- convenience, shared by every backbone --------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL image(s) -> a (B, 3, H, W) tensor on the backbone's device."""
        if isinstance(images, Image.Image):
            images = [images]
        return preprocess_batch(images, self.preprocess_config).to(self.device)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D)."""
        return F.normalize(self.image_head(self.image_tokens(pixels)), dim=-1)

    def text_trunk(self, texts: Sequence[str], pseudo_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled text features (B, Ct); with pseudo_tokens (B, M, W) injected at each text's placeholder."""
        texts = [_check_text(t) for t in texts]
        m = 0 if pseudo_tokens is None else int(pseudo_tokens.shape[1])
        if pseudo_tokens is not None:
            if pseudo_tokens.ndim != 3 or pseudo_tokens.shape[0] != len(texts):
                raise InputError(
                    f"pseudo tokens must be (batch={len(texts)}, M, {self.word_dim}), got {tuple(pseudo_tokens.shape)}"
                )
            if pseudo_tokens.shape[2] != self.word_dim:
                raise InputError(f"pseudo tokens are {pseudo_tokens.shape[2]}-d, the text tower's words are {self.word_dim}-d")
        tok = self.tokenize(texts, n_pseudo=m)
        embeds = self.word_embeddings()(tok.input_ids)
        if pseudo_tokens is not None:
            embeds = inject_tokens(embeds, pseudo_tokens.to(embeds.dtype), tok.pseudo_positions)
        return self.text_trunk_from_embeddings(embeds, tok)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, D)."""
        return F.normalize(self.text_head(self.text_trunk(texts)), dim=-1)

    def encode_text_with_tokens(self, texts: Sequence[str], pseudo_tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of texts whose placeholder is replaced by pseudo_tokens (B, M, W)."""
        return F.normalize(self.text_head(self.text_trunk(texts, pseudo_tokens)), dim=-1)

    def expand_placeholders(self, text: str, n_pseudo: int) -> str:
        """The text with its placeholder(s) ready for n_pseudo token slots.

        One placeholder expands to n_pseudo slots; k placeholders need exactly k tokens (one each)."""
        count = text.count(self.placeholder)
        if count == 0:
            raise InputError(f"text {text!r} has no placeholder {self.placeholder!r} for the pseudo token(s)")
        if count == 1:
            return text.replace(self.placeholder, " ".join([self.placeholder] * n_pseudo))
        if count != n_pseudo:
            raise InputError(
                f"text {text!r} has {count} placeholders but {n_pseudo} pseudo token(s) were supplied"
            )
        return text


def check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise InputError(f"tower {tower!r}: expected one of {', '.join(TOWERS)}")


def transformer_block_linear(name: str, module: nn.Module) -> bool:
    """The Linear layers inside a transformer's blocks (`layer.N` / `layers.N`), neither the embeddings nor a
    projection head: where LoRA goes on a text tower."""
    return isinstance(module, nn.Linear) and (".layer." in f".{name}" or ".layers." in f".{name}")


def pack_token_rows(
    rows: Sequence[Sequence[int]],
    texts: Sequence[str],
    pad_id: int,
    placeholder_id: int,
    n_pseudo: int,
    device: torch.device,
    width: int | None = None,
) -> TokenizedTexts:
    """Pad token-id rows into a batch and locate the placeholder slots (shared by every tokenizer).

    Raises InputError when a text does not end up with exactly n_pseudo placeholder slots (e.g. because
    truncation cut them off, or the placeholder character is also used as ordinary text)."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    positions: list[list[int]] = [[] for _ in rows]
    if n_pseudo:
        for i, r in enumerate(rows):
            positions[i] = [j for j, t in enumerate(r) if t == placeholder_id]
            if len(positions[i]) != n_pseudo:
                raise InputError(
                    f"text {texts[i]!r}: {len(positions[i])} placeholder slot(s) survive tokenisation "
                    f"(and truncation), {n_pseudo} needed (is the placeholder also used as ordinary text?)"
                )
    return TokenizedTexts(ids.to(device), mask.to(device), positions)


def inject_tokens(embeds: torch.Tensor, tokens: torch.Tensor, positions: list[list[int]]) -> torch.Tensor:
    """Return embeds with embeds[b, positions[b][j]] = tokens[b, j] (differentiable in tokens)."""
    b_idx = [b for b, pos in enumerate(positions) for _ in pos]
    p_idx = [p for pos in positions for p in pos]
    t_idx = [j for pos in positions for j in range(len(pos))]
    if not b_idx:
        return embeds
    out = embeds.clone()
    out[b_idx, p_idx] = tokens[b_idx, t_idx]
    return out


def _check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"empty or whitespace-only text {text!r}")
    return text


def warn_truncated(n_truncated: int, limit: int) -> None:
    if n_truncated:
        log.warning("%d text(s) longer than the tower's %d-token context were truncated", n_truncated, limit)
