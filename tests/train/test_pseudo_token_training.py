"""Trainers of pic2word and two-stage on a tiny fake world (a few coloured squares), a handful of steps."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from zscir.errors import InputError
from zscir.methods.mapped import Pic2Word, TwoStage, TwoStageMappingOnly, load_mapped_method
from zscir.train.pseudo_token import (
    ComposingConfig,
    grouped_batches,
    mapping_config,
    pic2word_config,
    select_triplets,
    soft_alignment_loss,
    train_composing,
    train_mapping,
    train_pic2word,
)

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 40)}


class TinyWorld:
    """The attributes the trainers read from a zscir world."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = {"seed": 0, "size": "tiny"}
        ids, self.pairs = [], []
        for k, (name, rgb) in enumerate(COLOURS.items()):
            for cell in range(3):
                img = Image.new("RGB", (96, 96), (128, 128, 128))
                x = 8 + 28 * cell
                img.paste(rgb, (x, 30, x + 24, 54))
                i = f"p{k}{cell}"
                img.save(root / f"{i}.png")
                ids.append(i)
                self.pairs.append({"image": i, "caption": f"a {name} square on the {['left', 'middle', 'right'][cell]}"})
        self.unlabelled = ids
        names = list(COLOURS)
        self.cir_train = [
            {"reference": f"p{k}{c}", "modification": f"make it {names[(k + d) % 4]}", "target": f"p{(k + d) % 4}{c}"}
            for k in range(4) for c in range(3) for d in (1, 2)
        ]

    def image_path(self, i: str) -> Path:
        return self.root / f"{i}.png"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return TinyWorld(tmp_path_factory.mktemp("tinyworld"))


def test_soft_alignment_and_data_selection():
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    caps = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert soft_alignment_loss(x, x, caps, 10.0).abs() < 1e-6
    assert soft_alignment_loss(-x, x, caps, 10.0) > 0
    trip = [{"reference": f"r{i // 3}", "modification": f"m{i}", "target": f"t{i}"} for i in range(30)]
    g = torch.Generator().manual_seed(0)
    assert len(select_triplets(trip, 0.1, 0.0, g)) == 3
    noisy = select_triplets(trip, 1.0, 0.3, g)
    changed = sum(t["modification"] != f"m{t['target'][1:]}" for t in noisy)
    assert changed == 9  # 30% shuffled, every shuffled one really changed
    with pytest.raises(InputError, match="fraction"):
        select_triplets(trip, 0.0, 0.0, g)
    batches = grouped_batches([t["reference"] for t in trip], 6, 3, g)
    assert sorted(i for b in batches for i in b) == list(range(30))
    assert all(len({trip[i]["reference"] for i in b}) == 2 for b in batches)  # 2 references x 3 triplets


@pytest.mark.slow
def test_pic2word_then_two_stage_train_save_and_load(world, tmp_path, default_backbone):
    b = default_backbone
    cache = tmp_path / "cache"
    p2w = train_pic2word(pic2word_config(world="tiny", out=str(tmp_path / "p2w"), steps=3, batch_size=6,
                                         hidden=64, feature_cache=str(cache)), backbone=b, world=world)
    assert p2w.path.is_dir() and list(cache.glob("image_tokens-*/meta.json"))
    m = load_mapped_method(b, p2w.path)
    assert isinstance(m, Pic2Word) and not m.mapper.uses_local
    s1 = train_mapping(mapping_config(world="tiny", out=str(tmp_path / "s1"), steps=3, batch_size=6, hidden=64,
                                      feature_cache=str(cache)), backbone=b, world=world)
    s1m = load_mapped_method(b, s1.path)
    assert isinstance(s1m, TwoStageMappingOnly) and s1m.mapper.uses_local
    before = {k: v.clone() for k, v in b.text_tower.state_dict().items()}
    s2 = train_composing(ComposingConfig(world="tiny", mapper=str(s1.path), out=str(tmp_path / "s2"), steps=3,
                                         batch_size=8, rank=4, fraction=0.5, noise=0.3, feature_cache=str(cache)),
                         backbone=b, world=world)
    assert s2.info["triplets"] == 12 and s2.info["trainable"] < 0.02 * s2.info["total"]
    assert all(torch.equal(before[k], v) for k, v in b.text_tower.state_dict().items())  # backbone untouched
    two = load_mapped_method(b, s2.path)
    assert isinstance(two, TwoStage) and two.text_encoder is not b
    px = b.preprocess([Image.open(world.image_path("p00"))])
    with torch.no_grad():
        q2, q1 = two.compose(px, ["make it blue"]), s1m.compose(px, ["make it blue"])
    assert q2.shape == (1, b.embed_dim) and not torch.allclose(q1, q2)  # the adapters changed the text side
    # stage 1 loaded from the stage-2 folder: same mapper, frozen text tower
    assert torch.allclose(TwoStageMappingOnly(b, checkpoint=s2.path).compose(px, ["make it blue"]), q1, atol=1e-5)
    with pytest.raises(InputError, match="mapper"):
        train_composing(ComposingConfig(world="tiny", out=str(tmp_path / "x")), backbone=b, world=world)


@pytest.mark.slow
def test_pic2word_mapper_learns_on_tiny_data(world, tmp_path, default_backbone):
    """A few steps of the contrastive objective move the loss down (frozen towers, cached features)."""
    res = train_pic2word(pic2word_config(world="tiny", out=str(tmp_path / "p"), steps=12, batch_size=12, lr=3e-3,
                                         hidden=128, warmup=0.0), backbone=default_backbone, world=world)
    import json

    doc = json.loads((res.path / "config.json").read_text())
    assert doc["config"]["method"] == "pic2word" and doc["backbone_fingerprint"] == default_backbone.fingerprint()
    assert res.final_loss < 2.48  # log(12): chance level of a 12-way contrastive task


@pytest.mark.slow
def test_two_stage_on_an_rtd_tower(world, tmp_path, default_backbone):
    """two-stage+rtd: RTD tunes the text tower for the stage-1 mapper, stage 2 trains LoRA on that tower; the
    checkpoint remembers the RTD tower and refuses to load without it (or with another one)."""
    import shutil

    from zscir.errors import CheckpointError
    from zscir.methods.rtd import load_rtd_text_encoder
    from zscir.nn.mappers import load_mapper
    from zscir.train.rtd import RTDConfig, train_rtd
    from zscir.train.triplets import Triplet

    b = default_backbone
    s1 = train_mapping(mapping_config(world="tiny", out=str(tmp_path / "s1"), steps=2, batch_size=6, hidden=64),
                       backbone=b, world=world)
    mapper, _ = load_mapper(s1.path, b.fingerprint())
    trips = [Triplet(p["caption"], "make it blue", p["caption"].replace(p["caption"].split()[1], "blue"))
             for p in world.pairs]
    rtd = train_rtd(RTDConfig(out=str(tmp_path / "rtd"), steps=2, batch_size=4, lr=1e-3), b, mapper, trips,
                    progress=False).path
    s2 = train_composing(ComposingConfig(world="tiny", mapper=str(s1.path), out=str(tmp_path / "s2"), steps=2,
                                         batch_size=8, rank=4, text_init=str(rtd)), backbone=b, world=world)
    plain = train_composing(ComposingConfig(world="tiny", mapper=str(s1.path), out=str(tmp_path / "s2p"), steps=2,
                                            batch_size=8, rank=4), backbone=b, world=world)
    two, two_plain = load_mapped_method(b, s2.path), load_mapped_method(b, plain.path)
    rtd_tower = load_rtd_text_encoder(rtd, b)
    px = b.preprocess([Image.open(world.image_path("p00"))])
    with torch.no_grad():
        tok = two.pseudo_tokens(px)
        q = two.compose(px, ["make it blue"])
        # the adapters' B matrices start at zero and moved only a little: the query is near the RTD tower's ...
        near = rtd_tower.encode_text_with_tokens(two.prompts(["make it blue"]), tok)
        base = b.encode_text_with_tokens(two.prompts(["make it blue"]), tok)
        assert torch.allclose(two_plain.compose(px, ["make it blue"]), base, atol=0.05)
    assert (q - near).norm() < (q - base).norm()  # ... and away from the original tower's
    assert two.text_encoder.tuning("rtd").get("path") == str(rtd)
    other = train_rtd(RTDConfig(out=str(tmp_path / "rtd2"), steps=2, batch_size=4, lr=1e-3, seed=1), b, mapper,
                      trips, progress=False).path
    shutil.rmtree(rtd)
    with pytest.raises(CheckpointError, match="missing"):
        load_mapped_method(b, s2.path)
    shutil.copytree(other, rtd)
    with pytest.raises(CheckpointError, match="not the one"):
        load_mapped_method(b, s2.path)
