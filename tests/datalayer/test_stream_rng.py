"""A feature pass must not touch the global RNG: whether a cache entry existed would otherwise change every
later random draw of a training run (its model's initialisation), and a rerun would not reproduce it."""

import torch
from PIL import Image

from zscir.data import PathsSource, StreamConfig, stream


def test_streaming_leaves_the_global_rng_alone(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 10, 10)).save(p)
        paths.append(p)
    from zscir.backbones.preprocess import PreprocessConfig

    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    n = sum(len(b) for b in stream(PathsSource(paths), PreprocessConfig(size=32), StreamConfig(batch_size=2, workers=0)))
    assert n == 5
    assert torch.equal(torch.rand(3), want)
