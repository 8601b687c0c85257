"""The world evaluator's precision is the towers' autocast while it embeds; scores stay fp32, and "auto" is
fp32 where the device has no native bf16."""

import pytest
import torch

from zscir.backbones.default import DefaultBackbone
from zscir.eval.world import WorldEvaluator
from zscir.methods import build_method
from zscir.world import generate_world, load_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load_world(generate_world(tmp_path_factory.mktemp("w") / "world", seed=0, size="tiny", progress=False))


def test_evaluator_precision_is_the_towers_autocast(world, monkeypatch):
    import zscir.utils.runtime as runtime

    torch.manual_seed(0)
    backbone = DefaultBackbone().eval()
    seen: list[object] = []
    real = backbone.encode_image

    def recording(pixels):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(pixels)

    monkeypatch.setattr(backbone, "encode_image", recording)
    method = build_method("sum", backbone)
    fp32 = WorldEvaluator(world, progress=False).evaluate(method)
    assert set(seen) == {None}
    seen.clear()
    bf16 = WorldEvaluator(world, progress=False, precision="bf16")
    res = bf16.evaluate(method)
    assert set(seen) == {torch.bfloat16}
    assert bf16.gallery_embeddings(method, "cirr").dtype == torch.float32  # scored in fp32
    for p in ("cirr", "circo"):  # the same ranking but for near ties
        for k, v in fp32[p].metrics.items():
            assert abs(res[p].metrics[k] - v) <= 10.0, (p, k)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    seen.clear()
    auto = WorldEvaluator(world, progress=False, precision="auto").evaluate(method)
    assert set(seen) == {None} and auto["cirr"].metrics == fp32["cirr"].metrics
