"""Pseudo-token methods (pic2word, two-stage): mappers, template checks, checkpoints, tuned text side."""

import pytest
import torch

from zscir.errors import CheckpointError, InputError
from zscir.methods import get_method_class
from zscir.methods.mapped import Pic2Word, TwoStage, TwoStageMappingOnly, load_mapped_method
from zscir.methods.tuned_text import lora_text_encoder
from zscir.nn.lora import LoRAConfig, lora_state_dict
from zscir.nn.mappers import MapperConfig, TokenMapper, load_mapper, mapper_config_for, save_mapper


def _mapper(b, injection=False, n_tokens=1):
    torch.manual_seed(0)
    m = TokenMapper(mapper_config_for(b, injection, n_tokens=n_tokens, hidden=64, attn_dim=32, heads=2))
    m.init_output(b.word_embeddings().weight.detach().mean(0))
    return m.eval()


def test_mapper_shapes_and_injection_starts_as_its_mlp(default_backbone):
    b = default_backbone
    m = _mapper(b, injection=True, n_tokens=2)
    assert m.cfg.n_local == 9 and m.cfg.local_dim == 1280
    v, local = torch.randn(3, b.embed_dim), torch.randn(3, 9, 1280)
    with torch.no_grad():
        with_local, without = m(v, local), m(v, None)
    assert with_local.shape == (3, 2, b.word_dim)
    assert torch.allclose(with_local, without)  # zero-initialised injection output
    with pytest.raises(InputError, match="mapper input"):
        m(torch.randn(3, 7))
    with pytest.raises(InputError, match="local features"):
        m(v, torch.randn(3, 9, 5))
    with pytest.raises(InputError, match="local_dim"):
        TokenMapper(MapperConfig(injection=True))
    # the pic2word mapper takes any (B, D) vector in the joint space, e.g. a caption's text embedding (RTD)
    p = _mapper(b)
    with torch.no_grad():
        assert p(b.encode_text(["a red cube"])).shape == (1, 1, b.word_dim)


@pytest.mark.slow
def test_pic2word_composes_and_fast_path_matches(default_backbone):
    b = default_backbone
    method = get_method_class("pic2word")(b, mapper=_mapper(b))
    px = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        q = method.compose(px, ["make it red", "add a cube"])
        fast = method.compose_embedded(b.encode_image(px), ["make it red", "add a cube"])
    assert q.shape == (2, b.embed_dim)
    assert torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(q, fast, atol=1e-5)
    inj = TwoStageMappingOnly(b, mapper=_mapper(b, injection=True))
    with torch.no_grad():
        assert inj.compose_embedded(b.encode_image(px), ["a", "b"]) is None  # needs the local features
        assert inj.compose(px, ["make it red", "add a cube"]).shape == (2, b.embed_dim)


def test_template_and_placeholder_errors_and_truncation(default_backbone, caplog):
    b = default_backbone
    with pytest.raises(InputError, match="no placeholder"):
        Pic2Word(b, mapper=_mapper(b), template="a photo that {text}")
    with pytest.raises(InputError, match="no '\\{text\\}' slot"):
        Pic2Word(b, mapper=_mapper(b), template="a photo of $")
    with pytest.raises(InputError, match="needs trained weights.*zscir train pic2word"):
        Pic2Word(b)
    # more placeholders than tokens supplied
    two = Pic2Word(b, mapper=_mapper(b), template="$ next to $ that {text}")
    with pytest.raises(InputError, match="2 placeholders but 1 pseudo token"):
        with torch.no_grad():
            two.compose(torch.randn(1, 3, 96, 96), ["make it red"])
    method = Pic2Word(b, mapper=_mapper(b))
    # an empty modification keeps the template's head without its connective: "a photo of $"
    assert method.prompts(["   ", "x"]) == ["a photo of $", "a photo of $ that x"]
    with caplog.at_level("WARNING"), torch.no_grad():
        q = method.compose(torch.randn(1, 3, 96, 96), ["make it red " * 100])
    assert "truncated" in caplog.text and q.shape == (1, b.embed_dim)


def test_mapper_checkpoint_roundtrip_and_refusals(tmp_path, default_backbone):
    b = default_backbone
    m = _mapper(b, injection=True)
    path = save_mapper(tmp_path / "m", m, b.fingerprint(), config={"method": "two-stage/mapping-only",
                                                                   "template": "a photo of $ that {text}"})
    loaded, _ = load_mapper(path, b.fingerprint())
    v, local = torch.randn(2, b.embed_dim), torch.randn(2, 9, 1280)
    with torch.no_grad():
        assert torch.equal(loaded(v, local), m(v, local))
    assert isinstance(load_mapped_method(b, path), TwoStageMappingOnly)
    with pytest.raises(CheckpointError, match="trained for backbone"):
        load_mapper(path, "0123456789abcdef")
    with pytest.raises(CheckpointError, match="expected"):
        TwoStage(b, checkpoint=path)  # a stage-1 mapper is not a stage-2 checkpoint


def test_lora_text_encoder_starts_identical_and_leaves_the_backbone_alone(default_backbone):
    b = default_backbone
    before = {k: v.clone() for k, v in b.text_tower.state_dict().items()}
    flags = [p.requires_grad for p in b.parameters()]
    enc, wrapped = lora_text_encoder(b, LoRAConfig(rank=4, alpha=8, dropout=0.0))
    assert enc.image_tower is b.image_tower and enc.text_tower is not b.text_tower  # only the text side is copied
    assert len(wrapped) == 6 * 6  # q, k, v, attention output, intermediate, output in 6 layers
    tok = b.word_embeddings().weight[:1].detach().view(1, 1, -1)
    with torch.no_grad():
        assert torch.allclose(enc.encode_text_with_tokens(["a photo of $ that is red"], tok),
                              b.encode_text_with_tokens(["a photo of $ that is red"], tok), atol=1e-6)
    enc.train()
    out = enc.encode_text_with_tokens(["a photo of $ that is red"], tok)
    out.sum().backward()
    trainable = [n for n, p in enc.text_tower.named_parameters() if p.requires_grad]  # what a trainer hands on
    assert trainable and all("lora_" in n for n in trainable)
    assert not b.training and [p.requires_grad for p in b.parameters()] == flags  # the base's modes untouched
    assert all(torch.equal(before[k], v) for k, v in b.text_tower.state_dict().items())
    assert len(lora_state_dict(enc.text_tower)) == 2 * len(wrapped)
