"""The Hugging Face CLIP / SigLIP backbone against transformers itself, on tiny random checkpoints.

Nothing is downloaded: each checkpoint is a randomly initialised CLIPModel / SiglipModel (hidden 32, 2 layers,
32 px images, 8 px patches) saved with `save_pretrained`, with a tiny tokenizer written by the test.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zscir.backbones import load_backbone
from zscir.errors import CheckpointError, InputError

WORDS = ["a", "photo", "of", "cat", "dog", "on", "mat", "the", "red", "big"]
CLIP_CONTEXT = 77
SIGLIP_CONTEXT = 16


# --- tiny checkpoints -------------------------------------------------------------------------------------------
def _write_clip_tokenizer(folder: Path, specials_last: bool) -> dict[str, int]:
    """A byte-level BPE vocabulary in CLIP's format: every letter (+ `$` and punctuation) alone and
    word-final, the WORDS merged into single tokens, start/end-of-text last (end-of-text is then the highest
    id, as in openai's vocabulary, which the legacy argmax pooling relies on) or first (so that only pooling
    at the first eos_token_id is right)."""
    chars = list(string.ascii_lowercase) + list("$.,!?'")
    tokens = [t for c in chars for t in (c, c + "</w>")]
    merges = []
    for w in WORDS:
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            nxt = ch + ("</w>" if i == len(w) - 1 else "")
            merges.append(f"{cur} {nxt}")
            cur += nxt
            tokens.append(cur)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = tokens + specials if specials_last else specials + tokens
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    return vocab


def _tiny_clip(folder: Path, legacy_eos: bool = False):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_clip_tokenizer(folder, specials_last=legacy_eos)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    eos = 2 if legacy_eos else vocab["<|endoftext|>"]
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=CLIP_CONTEXT, bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos,
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model, tokenizer


def _tiny_siglip(folder: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["</s>", "<unk>", "$", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=SIGLIP_CONTEXT, projection_size=24, pad_token_id=0, eos_token_id=0,
            bos_token_id=None,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8,
        ),
    )
    model = SiglipModel(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model, tokenizer


@pytest.fixture(scope="module", params=["clip", "clip-legacy-eos", "siglip"])
def tiny(request, tmp_path_factory):
    """(kind, folder, transformers model, tokenizer) for one tiny checkpoint."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "siglip":
        model, tokenizer = _tiny_siglip(folder)
    else:
        model, tokenizer = _tiny_clip(folder, legacy_eos=request.param == "clip-legacy-eos")
    return request.param, folder, model, tokenizer


@pytest.fixture(scope="module")
def loaded(tiny):
    """The checkpoint loaded once through each spec form: "hf:<folder>" and the bare folder."""
    return {prefix: load_backbone(prefix + str(tiny[1])) for prefix in ("hf:", "")}


@pytest.fixture(scope="module")
def backbone(loaded):
    return loaded["hf:"]


def _reference_ids(kind: str, tokenizer, texts: list[str]) -> torch.Tensor:
    """Tokenise as transformers users do: CLIP padded to 77, SigLIP padded to its full context."""
    length = SIGLIP_CONTEXT if kind == "siglip" else CLIP_CONTEXT
    enc = tokenizer(texts, padding="max_length", max_length=length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# --- equality with transformers -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec_prefix", ["hf:", ""])
@pytest.mark.slow
def test_loads_through_both_specs(tiny, loaded, spec_prefix):
    kind, folder, _, _ = tiny
    b = loaded[spec_prefix]
    assert b.model_type == ("siglip" if kind == "siglip" else "clip")
    assert not b.training
    assert b.word_dim == 32 and b.embed_dim == 24


@torch.no_grad()
@pytest.mark.parametrize("spec_prefix", ["hf:", ""])
@pytest.mark.slow
def test_encode_image_matches_transformers(tiny, loaded, spec_prefix):
    _, folder, model, _ = tiny
    b = loaded[spec_prefix]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(b.encode_image(pixels), ref, atol=1e-5, rtol=0)
    tokens = b.image_tokens(pixels)
    assert tokens.shape == (3, 16 if tiny[0] == "siglip" else 17, 32)  # SigLIP: patches; CLIP: CLS + patches


@torch.no_grad()
@pytest.mark.parametrize("spec_prefix", ["hf:", ""])
@pytest.mark.slow
def test_encode_text_matches_transformers(tiny, loaded, spec_prefix):
    kind, folder, model, tokenizer = tiny
    b = loaded[spec_prefix]
    texts = ["a photo of cat on a mat", "the big red dog", "a cat"]
    ids, mask = _reference_ids(kind, tokenizer, texts)
    if kind == "siglip":  # SigLIP runs without a padding mask, as it was trained
        ref = model.get_text_features(input_ids=ids).pooler_output
    else:
        ref = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(b.encode_text(texts), F.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    tok = b.tokenize(texts)
    if kind == "siglip":
        assert tok.input_ids.shape[1] == SIGLIP_CONTEXT
        torch.testing.assert_close(tok.input_ids, ids)


# --- pseudo tokens ------------------------------------------------------------------------------------------
def _word_embedding(b, tokenizer, word: str) -> torch.Tensor:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, ids
    return b.word_embeddings().weight[ids[0]].detach()


@torch.no_grad()
def test_placeholder_is_one_token(backbone, tiny):
    tokenizer = tiny[3]
    assert tokenizer("$", add_special_tokens=False)["input_ids"] == [backbone.placeholder_id]


@torch.no_grad()
@pytest.mark.slow
def test_pseudo_token_equal_to_a_word_embeds_like_the_word(backbone, tiny):
    tokenizer = tiny[3]
    cat = _word_embedding(backbone, tokenizer, "cat")[None, None]
    got = backbone.encode_text_with_tokens(["a photo of $ on a mat"], cat)
    torch.testing.assert_close(got, backbone.encode_text(["a photo of cat on a mat"]), atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.slow
def test_several_tokens_for_one_placeholder(backbone, tiny):
    tokenizer = tiny[3]
    words = torch.stack([_word_embedding(backbone, tokenizer, w) for w in ("big", "red", "cat")])
    texts = ["a photo of $ on a mat", "a $"]
    got = backbone.encode_text_with_tokens(texts, words[None].expand(2, -1, -1))
    want = backbone.encode_text(["a photo of big red cat on a mat", "a big red cat"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    tok = backbone.tokenize(texts, n_pseudo=3)
    assert [len(p) for p in tok.pseudo_positions] == [3, 3]


@torch.no_grad()
@pytest.mark.slow
def test_placeholder_next_to_punctuation_clip(backbone, tiny):
    if tiny[0] == "siglip":
        pytest.skip("the tiny SigLIP tokenizer splits on whitespace only")
    cat = _word_embedding(backbone, tiny[3], "cat")[None, None]
    got = backbone.encode_text_with_tokens(["a photo of $, on a mat!"], cat)
    torch.testing.assert_close(got, backbone.encode_text(["a photo of cat, on a mat!"]), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_pseudo_tokens_get_gradients(backbone, tiny):
    tokens = torch.randn(1, 2, backbone.word_dim, requires_grad=True)
    backbone.encode_text_with_tokens(["a photo of $"], tokens).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


# --- errors and edge cases ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_long_text_is_truncated_with_a_warning(backbone, tiny, caplog):
    long_text = " ".join(["a big red dog"] * 40)  # > 77 and > 16 tokens
    with caplog.at_level(logging.WARNING):
        emb = backbone.encode_text([long_text, "a cat"])
    assert emb.shape == (2, 24) and torch.isfinite(emb).all()
    assert any("truncated" in r.getMessage() for r in caplog.records)
    tok = backbone.tokenize([long_text])
    assert tok.input_ids.shape[1] == backbone.max_text_tokens
    # the end-of-text token survives truncation
    assert int(tok.input_ids[0, -1]) == tiny[3].eos_token_id


def test_truncation_that_would_cut_the_placeholder_raises(backbone):
    long_text = " ".join(["a big red dog"] * 40) + " $"
    with pytest.raises(InputError, match="placeholder"):
        backbone.encode_text_with_tokens([long_text], torch.zeros(1, 1, backbone.word_dim))


def test_template_without_placeholder_raises(backbone):
    with pytest.raises(InputError, match="placeholder"):
        backbone.encode_text_with_tokens(["a photo of a cat"], torch.zeros(1, 1, backbone.word_dim))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 32, 32), (3, 32, 32)])
def test_wrong_pixel_shape_raises(backbone, shape):
    with pytest.raises(InputError, match=r"\(B, 3, 32, 32\)"):
        backbone.encode_image(torch.zeros(shape))


def test_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_backbone("hf:" + str(tmp_path / "missing"))


def test_bert_folder_is_not_a_backbone(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(str(tmp_path))
    for spec in ("hf:" + str(tmp_path), str(tmp_path)):
        with pytest.raises(CheckpointError, match="bert"):
            load_backbone(spec)


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="not found locally.*not reachable"):
        load_backbone("hf:zscir-tests/no-such-model")


def test_fingerprint_stable_across_loads_and_changes_with_weights(tiny, loaded):
    folder = tiny[1]
    a = loaded["hf:"]
    b = load_backbone(str(folder))
    assert loaded[""].fingerprint() == a.fingerprint()
    assert a.fingerprint() == b.fingerprint() == a.fingerprint()
    with torch.no_grad():
        b.model.text_model.final_layer_norm.bias.add_(1e-3)
    assert b.fingerprint() == a.fingerprint()  # cached until refreshed
    assert b.refresh_fingerprint() != a.fingerprint()


def test_preprocess_config_from_preprocessor_json(tiny, loaded, tmp_path):
    import shutil

    kind, folder, _, _ = tiny
    b = loaded[""]
    assert b.preprocess_config.size == 32
    assert b.preprocess_config.mode == ("resize" if kind == "siglip" else "center_crop")
    copy = tmp_path / "with_pre"
    shutil.copytree(folder, copy)
    (copy / "preprocessor_config.json").write_text(json.dumps({
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32},
        "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5], "resample": 2,
    }))
    c = load_backbone(str(copy))
    pc = c.preprocess_config
    assert (pc.mode, pc.size, pc.mean, pc.interpolation) == ("center_crop", 32, (0.1, 0.2, 0.3), "bilinear")
    assert c.fingerprint() != b.fingerprint()  # preprocessing is part of the identity
    from PIL import Image

    assert c.preprocess(Image.new("RGB", (50, 40), (200, 10, 10))).shape == (1, 3, 32, 32)


def test_towers_hold_the_paths(backbone):
    img = {id(p) for p in backbone.image_tower.parameters()}
    txt = {id(p) for p in backbone.text_tower.parameters()}
    assert img and txt and not img & txt
    assert id(backbone.word_embeddings().weight) in txt


def test_folder_without_a_usable_tokenizer_is_a_checkpoint_error(tiny, tmp_path):
    import shutil

    copy = tmp_path / "no_tok"
    shutil.copytree(tiny[1], copy)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_backbone(str(copy))
