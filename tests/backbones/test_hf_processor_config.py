"""transformers 5.x saves only processor_config.json (image settings under "image_processor"): its mean/std
are the checkpoint's own and must not silently become CLIP's defaults."""

import json

import pytest

from hf_tiny import tiny_clip
from zscir.backbones import load_backbone
from zscir.backbones.hf import CLIP_MEAN

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)


def test_processor_config_json_is_read(tmp_path):
    folder = tiny_clip(tmp_path / "m", image_size=64, patch=32)
    assert not (folder / "preprocessor_config.json").exists()
    assert tuple(load_backbone(f"hf:{folder}").preprocess_config.mean) == tuple(CLIP_MEAN)  # no file: defaults
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "CLIPProcessor",
        "image_processor": {"image_mean": mean, "image_std": std, "do_center_crop": False,
                            "size": {"shortest_edge": 64}, "resample": 2}}))
    pre = load_backbone(f"hf:{folder}").preprocess_config
    assert list(pre.mean) == mean and list(pre.std) == std and pre.mode == "resize" and pre.interpolation == "bilinear"
