"""Miniature copies of the four benchmarks in their official on-disk formats (built on the fly), a tiny
deterministic backbone registered as `testfake`, and a helper that finds the real CIRCO annotations.

Quirks reproduced from the official files: FashionIQ captions with leading spaces and an empty caption,
images as .png in one category and .jpg in another; CIRR `reference_rank` / `target_rank` that are not
indices into `members`, `target_soft`, a gallery image no query mentions, test1 without targets; CIRCO
int ids, `gt_img_ids[0] == target_img_id`; GeneCIS templates with one non-modal gallery length."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from zscir.backbones import register_backbone
from zscir.backbones.base import Backbone, TokenizedTexts
from zscir.backbones.preprocess import PreprocessConfig


def _img(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    im.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(10), rng.randrange(7), 15, 12))
    im.save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


# --- FashionIQ -----------------------------------------------------------------------------------------

FIQ_EXT = {"dress": ".png", "shirt": ".jpg", "toptee": ".png"}


def make_fashioniq(root: Path, n_images: int = 8) -> Path:
    for ci, cat in enumerate(("dress", "shirt", "toptee")):
        asins = [f"B00{cat[:2].upper()}{i:04d}" for i in range(n_images)]
        for i, a in enumerate(asins):
            _img(root / "images" / f"{a}{FIQ_EXT[cat]}", 100 * ci + i)
        _json(root / "image_splits" / f"split.{cat}.val.json", asins)
        _json(root / "image_splits" / f"split.{cat}.test.json", asins)
        caps = [
            {"target": asins[1], "candidate": asins[0], "captions": ["is shiny and silver with shorter sleeves", "fit and flare"]},
            {"target": asins[2], "candidate": asins[3], "captions": [" is darker", "has a collar."]},
            {"target": asins[4], "candidate": asins[3], "captions": ["", " is longer"]},
            {"target": asins[0], "candidate": asins[5], "captions": ["is red?", "short , "]},
        ]
        _json(root / "captions" / f"cap.{cat}.val.json", caps)
        _json(root / "captions" / f"cap.{cat}.test.json", [{"candidate": asins[0], "captions": [" yello and more flowing", "short and black"]}])
    return root


# --- CIRR ----------------------------------------------------------------------------------------------


def make_cirr(root: Path, n_images: int = 10) -> Path:
    """n_images >= 51 lets test1 rankings fill the server's 50 slots."""
    ann = root / "cirr"
    for split, folder in (("val", "dev"), ("test1", "test1")):
        names = [f"{folder}-{i}-{i % 3}-img{i % 2}" for i in range(n_images)]
        for i, n in enumerate(names):
            _img(root / folder / f"{n}.png", (split == "val") * 1000 + i)
        _json(ann / "image_splits" / f"split.rc2.{split}.json", {n: f"./{folder}/{n}.png" for n in names})
        groups = [names[0:6], names[3:9]]  # names[9] is in no query: still in the gallery
        entries = []
        for k, (ref, tgt, grp) in enumerate([(names[0], names[2], 0), (names[4], names[7], 1), (names[5], names[3], 1)]):
            e = {"pairid": 12060 + 3 * k, "reference": ref, "caption": ["show three bottles of soft drink",
                 "remove all but one dog and add a woman hugging it", "make it blue"][k],
                 "img_set": {"id": 36 + grp, "members": groups[grp], "reference_rank": 4}}
            if split == "val":
                e["target_hard"] = tgt
                e["target_soft"] = {tgt: 1.0}
                e["img_set"]["target_rank"] = 5  # not an index into members
            entries.append(e)
        _json(ann / "captions" / f"cap.rc2.{split}.json", entries)
    return root


# --- CIRCO ---------------------------------------------------------------------------------------------

CIRCO_IDS = [9, 25, 30, 34, 36, 42, 49, 61, 64, 71, 72]


def make_circo(root: Path, n_extra: int = 0) -> Path:
    """n_extra more gallery images (>= 40 lets rankings fill the server's 50 slots)."""
    ids = CIRCO_IDS + [100 + 7 * k for k in range(n_extra)]
    info = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 20, "height": 14} for i in ids],
            "info": {}, "licenses": []}
    _json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", info)
    for k, i in enumerate(ids):
        _img(root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg", 2000 + k)
    val = [
        {"reference_img_id": 9, "target_img_id": 30, "relative_caption": "shows two people",
         "shared_concept": "a girl with an umbrella", "gt_img_ids": [30, 34, 61], "id": 0,
         "semantic_aspects": ["cardinality", "addition"]},
        {"reference_img_id": 42, "target_img_id": 72, "relative_caption": "is at night",
         "shared_concept": "a dog", "gt_img_ids": [72], "id": 1, "semantic_aspects": ["addition"]},
    ]
    _json(root / "annotations" / "val.json", val)
    test = [{"reference_img_id": r, "relative_caption": c, "shared_concept": "a cat", "id": k}
            for k, (r, c) in enumerate([(25, "has a higher quality"), (49, "is in black and white"), (71, "is taken from above")])]
    _json(root / "annotations" / "test.json", test)
    return root


# --- GeneCIS -------------------------------------------------------------------------------------------


def make_genecis(root: Path, gallery_len: int = 3) -> Path:
    coco = [139, 285, 632, 724, 776, 785, 802, 872]
    for k, i in enumerate(coco):
        _img(root / "coco2017" / "val2017" / f"{i:012d}.jpg", 3000 + k, size=(24, 16))
    vg = [1, 2, 3, 4]
    for k, i in enumerate(vg):
        _img(root / "Visual_Genome" / "VG_100K_all" / f"{i}.jpg", 4000 + k, size=(40, 30))

    def o(i):
        return {"val_image_id": i}

    for task in ("focus_object", "change_object"):
        t = [{"condition": c, "reference": o(coco[a]), "target": o(coco[b]), "gallery": [o(coco[g]) for g in gal]}
             for c, a, b, gal in [("cardboard", 0, 1, [2, 3, 4]), ("dog", 1, 5, [0, 6, 7]), ("train", 2, 3, [4, 5, 6]),
                                  ("odd", 3, 4, [5, 6])]]  # the last: gallery length 2, not the modal 3
        _json(root / "genecis" / f"{task}.json", t)

    def a(i, box):
        return {"image_id": i, "instance_bbox": box}

    for task in ("focus_attribute", "change_attribute"):
        t = [{"condition": "color", "reference": a(1, [5, 5, 10, 8]), "target": a(2, [0, 0, 12, 12]),
              "gallery": [a(3, [20, 10, 15, 15]), a(4, [2, 3, 30, 20]), a(1, [25, 20, 10, 8])]},
             {"condition": "white", "reference": a(2, [10, 10, 5, 5]), "target": a(3, [1, 1, 8, 8]),
              "gallery": [a(4, [0, 0, 40, 30]), a(1, [5, 5, 10, 8]), a(2, [30, 20, 9, 9])]}]
        _json(root / "genecis" / f"{task}.json", t)
    return root


# --- a tiny deterministic backbone -------------------------------------------------------------------------


class FakeBackbone(Backbone):
    """16 px images pooled to 2x2 colour cells -> linear; hashed words -> mean embedding -> linear."""

    embed_dim = 8
    word_dim = 8
    max_text_tokens = 16
    VOCAB = 97

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.spec = f"testfake:{seed}"
        g = torch.Generator().manual_seed(seed)
        self.img_proj = nn.Linear(12, 8)
        self.words = nn.Embedding(self.VOCAB, 8)
        self.txt_proj = nn.Linear(8, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self._pre = PreprocessConfig(size=16, mode="center_crop")

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._pre

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels, 2).flatten(2).transpose(1, 2)  # (B, 4, 3)

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.img_proj(tokens.flatten(1))

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        ids = [[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.VOCAB for w in t.lower().split()][: self.max_text_tokens] or [0]
               for t in texts]
        n = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (n - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])
        return TokenizedTexts(input_ids, mask, [[] for _ in texts])

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        m = tok.attention_mask.unsqueeze(-1).to(inputs_embeds.dtype)
        return (inputs_embeds * m).sum(1) / m.sum(1)

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.txt_proj(pooled)

    def word_embeddings(self) -> nn.Embedding:
        return self.words

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def image_tower(self) -> nn.Module:
        return nn.ModuleList([self.img_proj])

    @property
    def text_tower(self) -> nn.Module:
        return nn.ModuleList([self.words, self.txt_proj])


@register_backbone("testfake")
def _load_fake(arg: str) -> Backbone:
    return FakeBackbone(int(arg or 0))


# --- the real CIRCO annotations -----------------------------------------------------------------------------


def real_circo_dir() -> Path | None:
    """$ZSCIR_SHARED_DATA/circo, else the first `shared/data/circo` beside the repo or any parent folder
    (CI: ../shared beside the clone; a worktree: further up), else the copy in tests/data/circo."""
    env = os.environ.get("ZSCIR_SHARED_DATA")
    if env and (Path(env) / "circo" / "val.json").is_file():
        return Path(env) / "circo"
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "data" / "circo"
        if (cand / "val.json").is_file():
            return cand
    # a copy kept with the tests (CC BY-NC 4.0, credited in its README) so a bare clone never skips these
    vendored = here.parents[1] / "data" / "circo"
    return vendored if (vendored / "val.json").is_file() else None
