"""The backbone's extension points: image stages and adapter targets (default and Hugging Face CLIP), the one
tuned-backbone type and its fingerprint, and one resolver for every backbone scheme in every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from zscir.backbones import load_backbone
from zscir.backbones.tuned import TunedBackbone, tuned_fingerprint
from zscir.errors import CheckpointError
from zscir.nn.lora import LoRAConfig, apply_lora


def _split_equals_whole(bb, pixels) -> None:
    """Running the stages in two pieces (a cached prefix, then the rest) gives image_tokens exactly."""
    with torch.no_grad():
        whole = bb.image_tokens(pixels)
        n = len(bb.image_stages())
        for k in (1, n // 2, n):
            assert torch.equal(bb.image_tokens_from(bb.run_image_stages(pixels, 0, k), k), whole)
        outs = bb.image_stage_outputs(pixels, [0, -1])
    first = bb.image_stages()[0]
    assert len(outs) == 2 and outs[0].shape[1 if first.layout == "NCHW" else -1] == first.channels


def test_default_backbone_stages_and_adapter_targets(default_backbone):
    bb = default_backbone
    stages = bb.image_stages()
    assert [s.name for s in stages] == ["stem", *(f"block{i}" for i in range(16)), "head_conv"]
    assert (stages[0].channels, stages[0].reduction) == (32, 2)
    assert (stages[-1].channels, stages[-1].reduction) == (1280, 32)
    assert [s.reduction for s in stages] == sorted(s.reduction for s in stages)
    _split_equals_whole(bb, torch.randn(2, 3, 96, 96))

    tower = dict(bb.image_tower.named_modules())
    pick = bb.adapter_targets("image", last_blocks=2, head=True)
    chosen = sorted(n for n, m in tower.items() if pick(n, m))
    assert chosen == ["head.proj", "trunk._blocks.14._expand_conv", "trunk._blocks.14._project_conv",
                      "trunk._blocks.15._expand_conv", "trunk._blocks.15._project_conv", "trunk._conv_head"]
    assert all(stages[15].owns(n) or stages[16].owns(n) or stages[17].owns(n) for n in chosen if n.startswith("trunk"))
    none = bb.adapter_targets("image", last_blocks=0)
    assert not any(none(n, m) for n, m in tower.items())
    text = bb.adapter_targets("text")
    assert sum(text(n, m) for n, m in bb.text_tower.named_modules()) == 6 * 6
    with pytest.raises(Exception, match="tower"):
        bb.adapter_targets("audio")


def test_hf_clip_stages_and_adapter_targets(tmp_path):
    from hf_tiny import tiny_clip

    bb = load_backbone(f"hf:{tiny_clip(tmp_path / 'clip', image_size=64, patch=16)}")
    stages = bb.image_stages()
    assert [s.name for s in stages] == ["embeddings", "layer0", "layer1"]
    assert all((s.channels, s.reduction, s.layout) == (32, 16, "NLC") for s in stages)
    _split_equals_whole(bb, torch.randn(2, 3, 64, 64))
    assert bb.local_feature_shape() == (1 + 4 * 4, 32)

    tower = dict(bb.image_tower.named_modules())
    pick = bb.adapter_targets("image", last_blocks=1)
    chosen = [n for n, m in tower.items() if pick(n, m)]
    assert len(chosen) == 2 * 6 and all(".layers." in n for n in chosen)  # every layer, whatever last_blocks
    assert all(stages[1].owns(n) or stages[2].owns(n) for n in chosen)
    text = bb.adapter_targets("text")
    assert sum(text(n, m) for n, m in bb.text_tower.named_modules()) == 2 * 6


def test_tuned_backbone_shares_what_it_does_not_tune_and_fingerprints_its_weights(default_backbone):
    base = default_backbone
    base_fp = base.fingerprint()
    flags = [p.requires_grad for p in base.parameters()]
    tuned = TunedBackbone.copy_of(base, tune="image", tag="tat")
    assert tuned.text_tower is base.text_tower and tuned.image_tower is not base.image_tower
    assert [p.requires_grad for p in base.parameters()] == flags
    first = tuned.fingerprint()
    assert first != base_fp and tuned.base_fingerprint == base_fp and tuned.spec == "default+tat"
    apply_lora(tuned.image_tower, tuned.adapter_targets("image", last_blocks=1), LoRAConfig(rank=2))
    with torch.no_grad():
        next(p for n, p in tuned.image_tower.named_parameters() if "lora_B" in n).add_(1.0)
    assert tuned.refresh_fingerprint() not in (first, base_fp)  # the weights changed, so did the fingerprint
    assert tuned.set_tuning({"path": "x", "fingerprint": "abc"}) == tuned_fingerprint(base_fp, "tat", "abc")
    assert tuned.tuning("tat") == {"tag": "tat", "path": "x", "fingerprint": "abc"}
    assert base.fingerprint() == base_fp

    # stacked: a text copy of the tuned copy keeps its image tower and records both
    text = TunedBackbone.copy_of(tuned, tune="text", tag="rtd")
    assert text.image_tower is tuned.image_tower and text.text_tower is not base.text_tower
    text.set_tuning({"fingerprint": "def"})
    assert text.fingerprint() == tuned_fingerprint(tuned.fingerprint(), "rtd", "def")
    assert [s["tag"] for s in text.lineage] == ["tat", "rtd"]

    # a preprocessing view: the same weights and fingerprint (checkpoints still fit), another preprocessing
    view = TunedBackbone.copy_of(base, tune=(), preprocess=base.preprocess_config.with_mode("target_pad"))
    assert view.fingerprint() == base_fp and view.image_tower is base.image_tower
    assert view.preprocess_config.mode == "target_pad" and base.preprocess_config.mode != "target_pad"


def _run(code: str) -> subprocess.CompletedProcess:
    # a fresh process: nothing has imported zscir.backbones.pyref beforehand
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=os.environ.copy())


def test_py_backbones_resolve_in_compose_and_eval(tmp_path):
    from zscir_fakes import make_image

    png = tmp_path / "ref.png"
    make_image(3).save(png)
    res = subprocess.run([sys.executable, "-m", "zscir", "compose", "--backbone", "py:zscir_fakes:make",
                          "--image", str(png), "--text", "make it red", "--json"],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["vector"]) == 32
    res = _run("from zscir.eval.cli import build_method\n"
               "m = build_method('slerp', 'py:zscir_fakes:make', None, 'target_pad', 'cpu')\n"
               "print(m.backbone.spec, m.backbone.preprocess_config.mode)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["py:zscir_fakes:make", "target_pad"]


def test_a_recorded_spec_never_names_code():
    with pytest.raises(CheckpointError, match="names Python code"):
        load_backbone("py:zscir_fakes:make", recorded_in="index/manifest.json")
