"""ISA: token learner shapes, light-encoder cost, training on unlabelled images, save/load, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.checkpoint import load_checkpoint
from zscir.errors import CheckpointError, InputError
from zscir.methods import get_method_class
from zscir.methods.isa import (
    ISA,
    AdaptiveTokenLearner,
    ISAConfig,
    ISASymmetric,
    isa_config_for,
    load_isa,
    load_isa_modules,
)
from zscir.utils.profiling import count_flops


def _images(folder, n=12, size=96):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        x, y = rng.integers(0, size - 30, 2)
        arr[y : y + 30, x : x + 30] = rng.integers(0, 255, 3, dtype=np.uint8)
        p = folder / f"u{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_token_learner_shapes_and_word_norm():
    tl = AdaptiveTokenLearner(feat_dim=32, n_cells=9, n_tokens=5, word_dim=24, dim=16, heads=4, word_norm=2.0)
    tokens, attn = tl(torch.randn(3, 9, 32))
    assert tokens.shape == (3, 5, 24) and attn.shape == (3, 5, 9)
    assert torch.allclose(tokens.norm(dim=-1), torch.full((3, 5), 2.0), atol=1e-4)
    assert torch.allclose(attn.sum(-1), torch.ones(3, 5), atol=1e-5)
    with pytest.raises(InputError, match="at least one"):
        ISAConfig(n_tokens=0)
    with pytest.raises(InputError, match="mode"):
        ISAConfig(mode="both")


def test_registered_and_light_side_is_at_most_a_fifth(default_backbone):
    assert get_method_class("isa") is ISA and get_method_class("isa/symmetric") is ISASymmetric
    isa = ISA(default_backbone, isa_config_for(default_backbone, n_tokens=8))
    x = torch.randn(1, 3, 96, 96)
    gallery = count_flops(default_backbone.encode_image, x)
    query = count_flops(isa.query_encoder(), x)
    assert query <= gallery / 5, (query, gallery)
    px = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        q = isa.compose(px, ["make it red", "add a blue cube"])
        sym = ISASymmetric(default_backbone, isa_config_for(default_backbone, "symmetric", 2)).compose(px, ["a", "b"])
    assert q.shape == sym.shape == (2, default_backbone.embed_dim)
    assert torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(InputError, match=r"expected pixels of shape \(B, 3, 96, 96\)"):
        isa.pseudo_tokens(torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="module")
def trained(default_backbone, tmp_path_factory):
    from zscir.train.isa import ISATrainConfig, train_isa_on_paths

    tmp = tmp_path_factory.mktemp("isa")
    paths = _images(tmp)
    cfg = ISATrainConfig(out=str(tmp / "ckpt"), n_tokens=3, steps=4, batch_size=6, distill_epochs=2)
    method, result = train_isa_on_paths(default_backbone, paths, cfg)
    return tmp, method, result


def test_training_on_unlabelled_images_and_reload(trained, default_backbone):
    tmp, method, result = trained
    assert np.isfinite(result.final_global) and np.isfinite(result.final_local) and result.images == 12
    back = load_isa(tmp / "ckpt", default_backbone)
    assert type(back) is ISA and back.config.n_tokens == 3
    px = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(back.pseudo_tokens(px), method.eval().pseudo_tokens(px), atol=1e-5)
    ck = load_checkpoint(tmp / "ckpt")
    assert ck.backbone_fingerprint == default_backbone.fingerprint()
    assert ck.meta["train"]["w_global"] == 1.0 and "w_local" in ck.meta["train"]


def test_symmetric_training_step(default_backbone, tmp_path):
    from zscir.train.isa import ISATrainConfig, train_isa_on_paths

    paths = _images(tmp_path, n=6)
    cfg = ISATrainConfig(out=str(tmp_path / "sym"), mode="symmetric", n_tokens=2, steps=2, batch_size=4,
                         w_local=0.0)
    method, res = train_isa_on_paths(default_backbone, paths, cfg)
    assert type(method) is ISASymmetric and np.isfinite(res.final_global)
    assert type(load_isa(tmp_path / "sym", default_backbone)) is ISASymmetric


def test_checkpoint_for_another_backbone_is_refused(trained, default_backbone, monkeypatch):
    tmp, _, _ = trained
    monkeypatch.setattr(default_backbone, "fingerprint", lambda: "0000")
    with pytest.raises(CheckpointError, match="backbone"):
        load_isa(tmp / "ckpt", default_backbone)


def test_onnx_export_matches_pytorch_and_refuses_bad_shapes(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from zscir.export import OnnxQueryEncoder, export_isa_onnx
    from zscir.methods.isa import ISAQueryEncoder

    tmp, _, _ = trained
    out = export_isa_onnx(tmp / "ckpt", tmp_path / "isa.onnx")
    cfg, light, learner, _ = load_isa_modules(tmp / "ckpt")
    ref_model = ISAQueryEncoder(light, learner, cfg.image_size).eval()
    px = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        ref = ref_model(px).numpy()
    enc = OnnxQueryEncoder(out)
    got = enc(px.numpy())
    assert got.shape == (3, 3, 384)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    for bad in [(1, 3, 64, 64), (1, 1, 96, 96), (3, 96, 96)]:
        with pytest.raises(InputError, match=r"expected pixels of shape \(B, 3, 96, 96\)"):
            enc(np.zeros(bad, np.float32))
    # the raw onnxruntime session refuses too, naming the expected dimension
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Expected: 96"):
        sess.run(None, {"pixels": np.zeros((1, 3, 64, 64), np.float32)})


def test_symmetric_checkpoint_is_not_exported(default_backbone, tmp_path):
    from zscir.export import export_isa_onnx

    ISASymmetric(default_backbone, isa_config_for(default_backbone, "symmetric", 1)).save(tmp_path / "s")
    with pytest.raises(InputError, match="asymmetric"):
        export_isa_onnx(tmp_path / "s", tmp_path / "s.onnx")


def test_cli_train_and_export(trained, tmp_path, capsys):
    from zscir.cli import main

    tmp, _, _ = trained
    assert main(["export", "isa", "--checkpoint", str(tmp / "ckpt"), "--format", "onnx",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    assert (tmp_path / "q.onnx").is_file()
    assert main(["export", "isa", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "isa", "--help"])
    assert "--w-local" in capsys.readouterr().out
