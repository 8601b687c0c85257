"""TAT: the trainer, its data checks, its checkpoints, resume, DDP, and the text tower left bit-identical."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from zscir.checkpoint import load_checkpoint
from zscir.errors import CheckpointError, InputError
from zscir.methods import get_method_class
from zscir.methods.tat import ADAPTERS_KIND, TunedBackbone, load_tat_backbone
from zscir.train.tat import TATConfig, gap_stats, read_caption_file, train_tat

SRC = Path(__file__).resolve().parents[2] / "src"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")


def _draw(shape: str, rgb: tuple[int, int, int], cell: int) -> Image.Image:
    im = Image.new("RGB", (64, 64), (235, 235, 235))
    d = ImageDraw.Draw(im)
    x, y = 6 + (cell % 2) * 28, 6 + (cell // 2) * 28
    box = (x, y, x + 24, y + 24)
    if shape == "square":
        d.rectangle(box, fill=rgb)
    elif shape == "circle":
        d.ellipse(box, fill=rgb)
    else:
        d.polygon([(x + 12, y), (x, y + 24), (x + 24, y + 24)], fill=rgb)
    return im


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> tuple[Path, Path]:
    """24 generated images (4 colours x 3 shapes x 2 positions) + a JSONL of captions."""
    root = tmp_path_factory.mktemp("tiny_pairs")
    (root / "img").mkdir()
    rows = []
    for c, rgb in COLOURS.items():
        for s in SHAPES:
            for cell in (0, 3):
                name = f"{c}_{s}_{cell}.png"
                _draw(s, rgb, cell).save(root / "img" / name)
                where = "top left" if cell == 0 else "bottom right"
                rows.append({"image": name, "caption": f"a {c} {s} in the {where}"})
    (root / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "img", root / "caps.jsonl"


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    from zscir.backbones.default import DefaultBackbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "default"
    DefaultBackbone().save(path)
    return path


@pytest.fixture(scope="module")
def base(base_ckpt):
    from zscir.backbones.default import DefaultBackbone

    return DefaultBackbone.load(base_ckpt).eval()


def _hashes(module: torch.nn.Module) -> dict[str, str]:
    out = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        out[k] = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() + str(t.dtype) + str(tuple(t.shape))
    return out


def _cfg(tmp: Path, pairs, **kw) -> TATConfig:
    img, caps = pairs
    base = dict(images=str(img), captions=str(caps), out=str(tmp / "tat"), batch_size=8, epochs=2.0, lr=2e-3,
                trunk_blocks=1, dropout=0.0, warmup=0.0, save_every=0, progress=False, val_fraction=0.0)
    base.update(kw)
    return TATConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pairs, base):
    tmp = tmp_path_factory.mktemp("trained")
    text_before = _hashes(base.text_tower)
    image_before = _hashes(base.image_tower)
    res = train_tat(_cfg(tmp, tiny_pairs, dropout=0.1, merge=True), backbone=base)
    return res, text_before, image_before


@pytest.mark.slow
def test_text_tower_bit_identical_and_base_untouched(trained, base):
    res, text_before, image_before = trained
    assert _hashes(base.text_tower) == text_before  # every text-tower tensor, bit for bit
    assert _hashes(base.image_tower) == image_before  # the base backbone is never modified (a copy is tuned)
    assert res.steps == 2 * (24 // 8)


@pytest.mark.slow
def test_adapter_checkpoint_is_small_and_loads(trained, base, tiny_pairs):
    res, _, _ = trained
    ck = load_checkpoint(res.path, ADAPTERS_KIND)
    assert ck.backbone_fingerprint == base.fingerprint()
    assert ck.tensors and all(".lora_A" in k or ".lora_B" in k for k in ck.tensors)
    assert 0 < res.trainable < 0.02 * res.total  # adapters only
    assert (res.path / "model.safetensors").stat().st_size < 2_000_000
    tuned = load_tat_backbone(base, res.path)
    assert isinstance(tuned, TunedBackbone) and tuned.fingerprint() != base.fingerprint()
    assert tuned.text_tower is base.text_tower  # shared, not copied
    px = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert not torch.allclose(tuned.encode_image(px), base.encode_image(px), atol=1e-4)  # it learned something
        merged = load_tat_backbone(base, res.path / "merged")
        assert torch.allclose(merged.encode_image(px), tuned.encode_image(px), atol=1e-4)
    m = get_method_class("slerp+tat")(base, tat=res.path, alpha=0.8)
    with torch.no_grad():
        q = m.compose(px, ["make it blue", "a circle instead"])
    assert q.shape == (2, base.embed_dim)
    assert m.gallery_id != get_method_class("slerp")(base).gallery_id


@pytest.mark.slow
def test_checkpoint_for_another_backbone_is_refused(trained):
    from zscir.backbones.default import DefaultBackbone

    torch.manual_seed(123)
    other = DefaultBackbone().eval()
    with pytest.raises(CheckpointError, match="trained for backbone"):
        load_tat_backbone(other, trained[0].path)


def test_missing_images_listed_skipped_or_refused(tmp_path, tiny_pairs, caplog):
    img, caps = tiny_pairs
    rows = caps.read_text().splitlines()
    bad = tmp_path / "caps.csv"
    lines = ["image,caption"] + [f"{json.loads(r)['image']},{json.loads(r)['caption']}" for r in rows]
    lines += ["gone.png,a red square", "also_gone.png,a blue circle"]
    bad.write_text("\n".join(lines) + "\n")
    ps = read_caption_file(bad, img, max_missing=0.1)
    assert len(ps.paths) == 24 and ps.missing == ["gone.png", "also_gone.png"]
    assert "gone.png" in caplog.text and "2 of 26" in caplog.text
    with pytest.raises(InputError, match="missing images"):
        read_caption_file(bad, img, max_missing=0.05)


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path, tiny_pairs, base, monkeypatch):
    import zscir.train.tat as tat

    full = train_tat(_cfg(tmp_path / "a", tiny_pairs, epochs=1.0), backbone=base)
    calls = {"n": 0}
    real = tat.info_nce

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tat, "info_nce", flaky)
    cfg = _cfg(tmp_path / "b", tiny_pairs, epochs=1.0, save_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_tat(cfg, backbone=base)
    assert (tmp_path / "b" / "tat.partial" / "state.pt").is_file()
    monkeypatch.setattr(tat, "info_nce", real)
    resumed = train_tat(cfg, backbone=base)
    assert resumed.steps == full.steps
    a = load_checkpoint(full.path).tensors
    b = load_checkpoint(resumed.path).tensors
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not (tmp_path / "b" / "tat.partial").exists()


def test_gap_stats():
    v = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    same = gap_stats(v, v)
    assert same["matched_cosine"] == pytest.approx(1.0, abs=1e-4) and same["centroid_distance"] == pytest.approx(0.0, abs=1e-4)
    shifted = gap_stats(v, torch.nn.functional.normalize(v + 2.0, dim=-1))
    assert shifted["centroid_distance"] > 0.3 and shifted["matched_cosine"] < 0.9


@pytest.mark.slow
def test_ddp_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_pairs, base_ckpt):
    img, caps = tiny_pairs
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    common = ["train", "tat", "--backbone", f"default:{base_ckpt}", "--images", str(img), "--captions", str(caps),
              "--batch-size", "8", "--epochs", "1", "--lr", "2e-3", "--dropout", "0", "--trunk-blocks", "1",
              "--save-every", "0", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "zscir", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "zscir", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one").tensors
    b = load_checkpoint(tmp_path / "two").tensors
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if ".lora_B" in k)
    assert moved > 1e-4  # training happened
    # Adam normalises each gradient element, so summation-order noise on near-zero gradients shows up at
    # ~1e-4 of a 2e-3 step: compare elementwise against a fraction of the step, and on average much tighter.
    for k in a:
        diff = (a[k] - b[k]).abs()
        assert float(diff.max()) < 5e-4, (k, float(diff.max()))
        assert float(diff.mean()) <= 0.02 * float(a[k].abs().mean()) + 1e-7, (k, float(diff.mean()))


def test_default_adapters_train_under_half_a_percent(default_backbone):
    from zscir.methods.tat import TATAdapterConfig, add_tat_adapters, tat_copy, trainable_parameters

    tuned = tat_copy(default_backbone)
    wrapped = add_tat_adapters(tuned, TATAdapterConfig())
    assert "trunk._conv_head" in wrapped and "head.proj" in wrapped
    assert any(w.startswith("trunk._blocks.15.") for w in wrapped) and not any(w.startswith("trunk._blocks.13.") for w in wrapped)
    flags = [p.requires_grad for p in default_backbone.text_tower.parameters()]
    trainable, total = trainable_parameters(tuned)
    assert 0 < trainable < 0.005 * total  # the published "under 0.5% trainable"
    assert [p.requires_grad for p in default_backbone.text_tower.parameters()] == flags  # base flags untouched
    assert tuned.text_tower is default_backbone.text_tower
    assert not any(p.requires_grad for p in default_backbone.image_tower.trunk.parameters())
    assert "head.out" not in wrapped
    # head_out: the output projection too (the layer that can shift the whole image cone), one more adapter
    more = tat_copy(default_backbone)
    assert set(add_tat_adapters(more, TATAdapterConfig(head_out=True))) == set(wrapped) | {"head.out"}
    assert trainable_parameters(more)[0] == trainable + 16 * (384 + 384)


def test_train_command_group_lists_tat(capsys):
    from zscir.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "tat" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "tat", "--help"])
    out = capsys.readouterr().out
    assert "--merge" in out and "--temperature" in out and "--max-missing" in out


def test_tat_can_move_the_default_image_cone():
    """With a modality cone (the pre-trained default's CLIP-like gap), the image cone's vector is frozen outside
    adapters and is always one of TAT's adapter targets: tuning the image tower against the text tower can
    move it (a fixed cone could not be moved by any adapter, so TAT could not narrow the gap)."""
    from zscir.backbones.default import DefaultBackbone, DefaultBackboneConfig
    from zscir.methods.tat import TATAdapterConfig, add_tat_adapters, tat_copy

    torch.manual_seed(0)
    base = DefaultBackbone(DefaultBackboneConfig(modality_cone=1.4)).eval()
    head = base.image_tower.head
    assert not head.cone_vec.weight.requires_grad  # pre-training trains the heads, not the cone
    tuned = tat_copy(base)
    wrapped = add_tat_adapters(tuned, TATAdapterConfig())
    assert "head.cone_vec" in wrapped and "head.out" not in wrapped
    tokens = torch.randn(4, base.n_cells, 1280)
    before = tuned.image_head(tokens)
    lora = dict(tuned.image_tower.named_modules())["head.cone_vec"]
    with torch.no_grad():
        lora.lora_B.copy_(-head.cone_vec.weight[:, :1].expand_as(lora.lora_B) / (lora.scale * lora.lora_A.sum()))
    after = tuned.image_head(tokens)
    # the adapter cancelled the cone: the shift along the image direction is gone
    direction = torch.nn.functional.normalize(head.cone_vec.weight[:, 0], dim=0)
    assert float((before @ direction).mean()) > 1.0 and abs(float((after @ direction).mean())) < 0.5
    assert torch.equal(base.image_head(tokens), before)  # the base is untouched
