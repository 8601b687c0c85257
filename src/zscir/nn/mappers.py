"""Image-to-pseudo-word mappers: an embedding (B, D), optionally with local features (B, L, C), becomes
M token embeddings (B, M, W) in the text tower's word space.

    mapper(embedding, local=None) -> tokens (B, M, W)

One module covers the family:
- Pic2Word-style: `injection=False`, an MLP on the pooled embedding only. It accepts *any* (B, D) vector in
  the joint space (RTD feeds it a caption's text embedding), with `local=None`.
- Two-stage, stage 1 (visual semantic injection): `injection=True`; the MLP's token is refined by a
  cross-attention from the token (as query) to the image's local feature map (keys/values, with position
  embeddings). The injection branch's output projection starts at zero, so an untrained injection mapper is
  exactly its MLP; with `local=None` only the MLP path runs.

Checkpoints (`save_mapper` / `load_mapper`) are safetensors folders of kind `zscir.token-mapper` carrying the
backbone fingerprint: a mapper is refused on a backbone it was not trained for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from zscir.checkpoint import check_fingerprint, load_checkpoint, save_checkpoint
from zscir.config import from_dict
from zscir.errors import CheckpointError, InputError

MAPPER_KIND = "zscir.token-mapper"


@dataclass
class MapperConfig:
    """Shapes and options of a token mapper."""

    embed_dim: int = 384
    word_dim: int = 384
    n_tokens: int = 1
    hidden: int = 512
    dropout: float = 0.1
    injection: bool = False
    local_dim: int = 0  # C of the local features (needed when injection=True)
    n_local: int = 0  # L, the number of feature-map cells / patches (position embeddings)
    attn_dim: int = 256
    heads: int = 4


class TokenMapper(nn.Module):
    """Embedding (+ local features) -> pseudo-word tokens; see the module docstring."""

    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        if cfg.n_tokens < 1:
            raise InputError(f"a mapper needs at least one token, got n_tokens={cfg.n_tokens}")
        if cfg.injection and (cfg.local_dim <= 0 or cfg.n_local <= 0):
            raise InputError("an injection mapper needs local_dim and n_local (the local feature map's shape)")
        self.cfg = cfg
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.n_tokens * cfg.word_dim),
        )
        if cfg.injection:
            d = cfg.attn_dim
            self.local_norm = nn.LayerNorm(cfg.local_dim)
            self.local_proj = nn.Linear(cfg.local_dim, d)
            self.pos = nn.Parameter(torch.randn(cfg.n_local, d) * 0.02)
            self.query_proj = nn.Linear(cfg.word_dim, d)
            self.query_bias = nn.Parameter(torch.randn(cfg.n_tokens, d) * 0.02)
            self.attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
            self.inject_norm = nn.LayerNorm(d)
            self.inject_out = nn.Linear(d, cfg.word_dim)
            nn.init.zeros_(self.inject_out.weight)
            nn.init.zeros_(self.inject_out.bias)

    @property
    def uses_local(self) -> bool:
        return self.cfg.injection

    def init_output(self, mean_word: torch.Tensor) -> None:
        """Start the tokens around a typical word embedding (the vocabulary mean), not around zero."""
        with torch.no_grad():
            bias = cast(nn.Linear, self.mlp[-1]).bias
            bias.copy_(mean_word.to(bias).repeat(self.cfg.n_tokens))

    def forward(self, embedding: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfg
        if embedding.ndim != 2 or embedding.shape[1] != c.embed_dim:
            raise InputError(f"mapper input must be (B, {c.embed_dim}), got {tuple(embedding.shape)}")
        base = self.mlp(embedding).view(embedding.shape[0], c.n_tokens, c.word_dim)
        if not c.injection or local is None:
            return base
        if local.ndim != 3 or local.shape[0] != embedding.shape[0] or local.shape[2] != c.local_dim:
            raise InputError(f"local features must be (B, L, {c.local_dim}), got {tuple(local.shape)}")
        kv = self.local_proj(self.local_norm(local.to(embedding.dtype))) + self.pos[: local.shape[1]]
        q = self.query_proj(base) + self.query_bias
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return base + self.inject_out(self.inject_norm(out))


def mapper_config_for(backbone: Any, injection: bool, n_tokens: int = 1, **kw: Any) -> MapperConfig:
    """A MapperConfig sized for `backbone` (local shape read from one dummy forward when injecting)."""
    local_dim = n_local = 0
    if injection:
        size = backbone.preprocess_config.size
        with torch.inference_mode():
            toks = backbone.image_tokens(torch.zeros(1, 3, size, size, device=backbone.device))
        n_local, local_dim = int(toks.shape[1]), int(toks.shape[2])
    return MapperConfig(embed_dim=backbone.embed_dim, word_dim=backbone.word_dim, n_tokens=n_tokens,
                        injection=injection, local_dim=local_dim, n_local=n_local, **kw)


def save_mapper(path: str | Path, mapper: TokenMapper, backbone_fingerprint: str, kind: str = MAPPER_KIND,
                extra_tensors: dict[str, torch.Tensor] | None = None, **meta: Any) -> Path:
    """Save a mapper (tensors prefixed `mapper.`, plus any extra tensors) with the backbone's fingerprint."""
    tensors = {f"mapper.{k}": v for k, v in mapper.state_dict().items()}
    tensors.update(extra_tensors or {})
    cfg = {"mapper": asdict(mapper.cfg), **meta.pop("config", {})}
    return save_checkpoint(path, kind, cfg, tensors, backbone_fingerprint=backbone_fingerprint, **meta)


def load_mapper(path: str | Path, backbone_fingerprint: str | None, kind: str | tuple[str, ...] = MAPPER_KIND):
    """(mapper, checkpoint) from a folder; refuses another kind or a mapper trained for another backbone."""
    ckpt = load_checkpoint(path, kind)
    if backbone_fingerprint is not None:
        check_fingerprint(ckpt, backbone_fingerprint, what="pseudo-token mapper")
    if "mapper" not in ckpt.config:
        raise CheckpointError(f"{path}: no mapper config in the checkpoint")
    mapper = TokenMapper(from_dict(MapperConfig, ckpt.config["mapper"]))
    state = {k[len("mapper."):]: v for k, v in ckpt.tensors.items() if k.startswith("mapper.")}
    try:
        mapper.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: mapper weights do not fit its config ({e})") from e
    return mapper.eval(), ckpt
