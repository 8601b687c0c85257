"""ISA on Hugging Face ViT towers of any patch size, with and without a CLS token: both variants train (the
light encoder's grid differs from the tower's tokens: CLS + 2x2 or 4x4 patches vs 2x2 cells), run from their
checkpoint through build_method, refuse the other variant's checkpoint, and the asymmetric query side exports
to ONNX with the same output as PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_tiny import coloured_images, tiny_clip, tiny_siglip
from zscir.backbones import load_backbone
from zscir.errors import CheckpointError
from zscir.methods import build_method
from zscir.methods.isa import align_cells


def test_align_cells_drops_the_cls_and_pools_the_patch_grid():
    feats = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # CLS + 4x4
    out = align_cells(feats, 4)
    assert out.shape == (2, 4, 3)
    grid = feats[:, 1:].reshape(2, 4, 4, 3)
    assert torch.allclose(out[:, 0], grid[:, :2, :2].mean(dim=(1, 2)))
    assert align_cells(feats[:, 1:], 16) is not None and align_cells(feats, 17) is feats  # same grid: unchanged


@pytest.fixture(scope="module", params=[("clip", 32), ("clip", 16), ("siglip", 16)], ids=["clip-p32", "clip-p16",
                                                                                         "siglip-p16"])
def vit(request, tmp_path_factory):
    kind, patch = request.param
    root = tmp_path_factory.mktemp(f"{kind}{patch}")
    folder = (tiny_clip if kind == "clip" else tiny_siglip)(root / "model", image_size=64, patch=patch)
    return load_backbone(f"hf:{folder}"), coloured_images(root / "images", 12)


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
@pytest.mark.slow
def test_isa_trains_and_runs_on_any_vit(vit, mode, tmp_path):
    from zscir.train.isa import ISATrainConfig, train_isa_on_paths

    backbone, paths = vit
    cfg = ISATrainConfig(out=str(tmp_path / "isa"), mode=mode, n_tokens=2, steps=2, batch_size=6, distill_epochs=1,
                         seed=0)
    trained, res = train_isa_on_paths(backbone, paths, cfg)
    assert res.images == 12 and np.isfinite(res.final_loss)
    name = "isa" if mode == "asymmetric" else "isa/symmetric"
    method = build_method(None, backbone, [tmp_path / "isa"])  # the checkpoint says which variant
    assert method.name == name
    px = backbone.preprocess([__import__("PIL.Image", fromlist=["Image"]).open(paths[0]).convert("RGB")] * 2)
    with torch.no_grad():
        q = method.compose(px, ["make it blue", ""])
        again = build_method(name, backbone, [tmp_path / "isa"]).compose(px, ["make it blue", ""])
        trained.eval()
        direct = trained.compose(px, ["make it blue", ""])
    assert q.shape == (2, backbone.embed_dim) and torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(q, again, atol=1e-6) and torch.allclose(q, direct, atol=1e-5)  # no random weights
    other = "isa/symmetric" if mode == "asymmetric" else "isa"
    with pytest.raises(CheckpointError, match=f"cannot run checkpoint.*{mode} ISA query side"):
        build_method(other, backbone, [tmp_path / "isa"])
    if mode == "asymmetric":
        pytest.importorskip("onnxruntime")
        from zscir.export import OnnxQueryEncoder, export_isa_onnx

        onnx_path = export_isa_onnx(tmp_path / "isa", tmp_path / "isa.onnx")
        with torch.no_grad():
            ref = method.query_encoder()(px).numpy()
        np.testing.assert_allclose(OnnxQueryEncoder(onnx_path)(px.numpy()), ref, atol=1e-4, rtol=1e-4)
