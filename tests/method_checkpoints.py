"""Every trained method's checkpoint, made by its own trainer (the Python API, tiny settings) on a tiny random
Hugging Face CLIP, so that tests can drive each method through every command.

`make_checkpoints(root, patch)` -> TinySetup with the backbone spec, the loaded backbone, a tiny world (what
the trainers read), and {method name: checkpoint folder} for every trained method. Training-free methods have
no entry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from hf_tiny import tiny_clip

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 40), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")


class TinyWorld:
    """The attributes the pseudo-token trainers read from a zscir world (12 images of coloured shapes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = {"seed": 0, "size": "tiny"}
        root.mkdir(parents=True, exist_ok=True)
        ids, self.pairs = [], []
        for k, (name, rgb) in enumerate(COLOURS.items()):
            for j, shape in enumerate(SHAPES):
                im = Image.new("RGB", (64, 64), (235, 235, 235))
                d = ImageDraw.Draw(im)
                box = (8 + 14 * j, 16, 30 + 14 * j, 40)
                (d.rectangle if shape == "square" else d.ellipse if shape == "circle" else
                 (lambda b, fill, d=d: d.polygon([(b[0] + 11, b[1]), (b[0], b[3]), (b[2], b[3])], fill=fill)))(box, fill=rgb)
                i = f"p{k}{j}"
                im.save(root / f"{i}.png")
                ids.append(i)
                self.pairs.append({"image": i, "caption": f"a {name} {shape}"})
        self.unlabelled = ids
        names = list(COLOURS)
        self.cir_train = [{"reference": f"p{k}{j}", "modification": f"make it {names[(k + d) % 4]}",
                           "target": f"p{(k + d) % 4}{j}"} for k in range(4) for j in range(3) for d in (1, 2)]
        self.text_triplets = [{"reference": p["caption"], "modification": "make it blue",
                               "target": " ".join(["a", "blue", *p["caption"].split()[2:]])} for p in self.pairs]

    def image_path(self, i: str) -> Path:
        return self.root / f"{i}.png"


@dataclass
class TinySetup:
    spec: str
    backbone: object
    world: TinyWorld
    checkpoints: dict[str, Path] = field(default_factory=dict)
    captions: Path | None = None


def make_checkpoints(root: Path, patch: int = 32) -> TinySetup:
    from zscir.backbones import load_backbone
    from zscir.train.isa import ISATrainConfig, train_isa_on_paths
    from zscir.train.pseudo_token import (
        ComposingConfig,
        mapping_config,
        pic2word_config,
        train_composing,
        train_mapping,
        train_pic2word,
    )
    from zscir.train.rtd import RTDConfig, load_rtd_start, train_rtd
    from zscir.train.tat import TATConfig, train_tat
    from zscir.train.triplets import triplets_from_dicts

    folder = tiny_clip(root / "clip", image_size=64, patch=patch)
    spec = f"hf:{folder}"
    b = load_backbone(spec)
    world = TinyWorld(root / "world")
    cache = str(root / "features")
    ck: dict[str, Path] = {}
    # slerp+tat: LoRA adapters on the image tower from image-caption pairs
    caps = root / "captions.jsonl"
    caps.write_text("".join(json.dumps({"image": f"{p['image']}.png", "caption": p["caption"]}) + "\n"
                            for p in world.pairs))
    train_tat(TATConfig(backbone=spec, images=str(world.root), captions=str(caps), out=str(root / "tat"), rank=2,
                        batch_size=6, epochs=1.0, lr=1e-3, warmup=0.0, save_every=0, progress=False,
                        val_fraction=0.0), backbone=b)
    ck["slerp+tat"] = root / "tat"
    small = dict(world="tiny", steps=2, batch_size=6, hidden=32, feature_cache=cache)
    ck["pic2word"] = train_pic2word(pic2word_config(out=str(root / "p2w"), **small), backbone=b, world=world).path
    ck["two-stage/mapping-only"] = train_mapping(mapping_config(out=str(root / "s1"), **small), backbone=b,
                                                 world=world).path
    stage2 = dict(world="tiny", mapper=str(ck["two-stage/mapping-only"]), steps=2, batch_size=8, rank=2,
                  feature_cache=cache)
    ck["two-stage"] = train_composing(ComposingConfig(out=str(root / "s2"), **stage2), backbone=b, world=world).path
    trips = triplets_from_dicts(world.text_triplets)

    def rtd(mapper_dir: Path, out: str) -> Path:
        src = load_rtd_start(mapper_dir, b)  # what `zscir train rtd --mapper DIR` records
        return train_rtd(RTDConfig(out=str(root / out), steps=2, batch_size=4, lr=1e-3), b, src.mapper, trips,
                         meta={"mapper": src.info}, progress=False, text_encoder=src.text_encoder).path

    ck["pic2word+rtd"] = rtd(ck["pic2word"], "p2w-rtd")
    # two-stage+rtd as the demo builds it: RTD for the stage-1 mapper, then stage 2 on the RTD tower
    s1_rtd = rtd(ck["two-stage/mapping-only"], "s1-rtd")
    ck["two-stage+rtd"] = train_composing(ComposingConfig(out=str(root / "s2-rtd"), text_init=str(s1_rtd), **stage2),
                                          backbone=b, world=world).path
    paths = [world.image_path(i) for i in world.unlabelled]
    for mode, name in (("asymmetric", "isa"), ("symmetric", "isa/symmetric")):
        out = root / f"isa-{mode}"
        train_isa_on_paths(b, paths, ISATrainConfig(out=str(out), mode=mode, n_tokens=2, steps=2, batch_size=6,
                                                    distill_epochs=1))
        ck[name] = out
    return TinySetup(spec, b, world, ck, caps)
