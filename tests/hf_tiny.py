"""Tiny random Hugging Face CLIP / SigLIP checkpoints of any image and patch size (saved with save_pretrained,
nothing downloaded), for the tests of methods on ViT towers. The tokenizers are those of backbones/test_hf.py."""

from __future__ import annotations

from pathlib import Path

import torch

from backbones.test_hf import CLIP_CONTEXT, SIGLIP_CONTEXT, WORDS, _write_clip_tokenizer


def tiny_clip(folder: Path, image_size: int = 64, patch: int = 32, seed: int = 0) -> Path:
    """A random CLIPModel (hidden 32, 2 layers) with `patch`-px patches: CLS + (image_size/patch)^2 tokens."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_clip_tokenizer(folder, specials_last=False)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CLIP_CONTEXT,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch),
        projection_dim=24,
    )
    CLIPModel(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_siglip(folder: Path, image_size: int = 64, patch: int = 16, seed: int = 0) -> Path:
    """A random SiglipModel: patches only, no CLS token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["</s>", "<unk>", "$", *WORDS, "that", "make", "it", "blue", "green"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=SIGLIP_CONTEXT, projection_size=32,
                         pad_token_id=0, eos_token_id=0, bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch),
    )
    SiglipModel(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def coloured_images(folder: Path, n: int = 16, size: int = 64) -> list[Path]:
    """n small images of coloured squares at different places (unlabelled training images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = [(220, 30, 30), (30, 60, 220), (30, 180, 40), (230, 210, 20)]
    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (235, 235, 235))
        x = 4 + (i % 4) * (size // 5)
        im.paste(colours[i % 4], (x, 8 + (i // 4) * 10, x + size // 4, 8 + (i // 4) * 10 + size // 4))
        p = folder / f"img{i:02d}.png"
        im.save(p)
        out.append(p)
    return out
