import json

import pytest
import torch

from zscir.backbones import load_backbone
from zscir.backbones.default import DefaultBackbone
from zscir.errors import CheckpointError, InputError


@pytest.mark.slow
def test_shapes_and_normalisation(default_backbone):
    b = default_backbone
    with torch.no_grad():
        tokens = b.image_tokens(torch.randn(2, 3, 96, 96))
        v = b.encode_image(torch.randn(2, 3, 96, 96))
        w = b.encode_text(["a red circle", "two blue squares on a sand background"])
    assert tokens.shape == (2, 9, 1280)  # the 3x3 feature map is kept
    assert v.shape == w.shape == (2, b.embed_dim)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(InputError, match="expected pixels"):
        b.image_tokens(torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_pseudo_token_equal_to_a_word_gives_that_sentence(default_backbone):
    b = default_backbone
    emb = b.word_embeddings().weight
    cat, mat = (int(b.tokenizer.convert_tokens_to_ids(t)) for t in ("cat", "mat"))
    with torch.no_grad():
        one = b.encode_text_with_tokens(["a photo of $ on a rug"], emb[cat].view(1, 1, -1))
        ref = b.encode_text(["a photo of cat on a rug"])
        two = b.encode_text_with_tokens(["a photo of $ that is red"], torch.stack([emb[cat], emb[mat]]).unsqueeze(0))
        ref2 = b.encode_text(["a photo of cat mat that is red"])
    assert torch.allclose(one, ref, atol=1e-5)
    assert torch.allclose(two, ref2, atol=1e-5)


def test_placeholder_errors_and_truncation_warning(default_backbone, caplog):
    b = default_backbone
    tok = torch.zeros(1, 1, b.word_dim)
    with pytest.raises(InputError, match="no placeholder"):
        b.encode_text_with_tokens(["a photo of a cat"], tok)
    with pytest.raises(InputError, match="2 placeholders but 1"):
        b.encode_text_with_tokens(["$ and $"], tok)
    with pytest.raises(InputError, match="empty"):
        b.encode_text(["  "])
    long = "red " * 200
    with caplog.at_level("WARNING"):
        with torch.no_grad():
            b.encode_text([long])
    assert "truncated" in caplog.text
    with pytest.raises(InputError, match="placeholder slot"):
        b.encode_text_with_tokens([long + " $"], tok)


@pytest.mark.slow
def test_save_load_roundtrip_and_fingerprint(tmp_path, default_backbone):
    path = default_backbone.save(tmp_path / "ckpt")
    doc = json.loads((path / "config.json").read_text())
    assert doc["kind"] == "zscir.default-backbone" and doc["fingerprint"] == default_backbone.fingerprint()
    loaded = load_backbone(f"default:{path}")
    assert loaded.fingerprint() == default_backbone.fingerprint()
    assert load_backbone(str(path)).fingerprint() == default_backbone.fingerprint()
    px = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(px), default_backbone.encode_image(px), atol=1e-6)
    # a changed weight changes the fingerprint
    with torch.no_grad():
        loaded.text_tower.head.out.bias.add_(1.0)
    assert loaded.refresh_fingerprint() != default_backbone.fingerprint()


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    from zscir.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m", "zscir.pic2word-mapper", {}, {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="kind 'zscir.pic2word-mapper'"):
        DefaultBackbone.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a backbone"):
        load_backbone(str(tmp_path / "m"))
    with pytest.raises(CheckpointError, match="no pre-trained default"):
        load_backbone("default")
    with pytest.raises(InputError, match="not a known scheme"):
        load_backbone(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_backbone(str(tmp_path / "bad"))


def test_modality_cones_round_trip_and_open_a_gap(tmp_path):
    """A default with modality cones (world v2's pre-training) saves its cone vectors and loads them back; its
    image and text embeddings lie in separate cones (CLIP's gap) even with untrained heads."""
    from zscir.backbones.default import DefaultBackbone, DefaultBackboneConfig

    torch.manual_seed(0)
    model = DefaultBackbone(DefaultBackboneConfig(modality_cone=1.4)).eval()
    with torch.no_grad():  # a moved cone must survive the round trip
        model.image_tower.head.cone_vec.weight.mul_(0.5)
    path = model.save(tmp_path / "cone")
    loaded = load_backbone(f"default:{path}")
    assert loaded.config.modality_cone == 1.4 and loaded.fingerprint() == model.fingerprint()
    px = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        v, w = loaded.encode_image(px), loaded.encode_text(["a red circle", "a blue star", "two squares", "a cross"])
        assert torch.allclose(v, model.encode_image(px), atol=1e-6)
        v, w = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(w, dim=-1)
        assert float((v.mean(0) - w.mean(0)).norm()) > 0.5  # the cones are apart
