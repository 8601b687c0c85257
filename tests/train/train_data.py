"""Tiny user data for the trainer tests, made from a tiny synthetic world: a folder of images, a JSONL of
image-caption pairs (open_clip-style `filepath` / `title` columns), WebDataset tar shards, a JSONL of CIR
triplets (image paths relative to the file) and a JSONL of text triplets; plus a tiny random HF CLIP."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def make_user_data(root: Path) -> dict[str, str]:
    from zscir.world import generate_world, load_world

    root.mkdir(parents=True, exist_ok=True)
    world_dir = generate_world(root / "world", seed=0, size="tiny", progress=False)
    world = load_world(world_dir)
    images = root / "images"
    images.mkdir()
    for i in world.unlabelled[:24]:
        (images / "sub").mkdir(exist_ok=True)
        (images / "sub" / f"{i}.png").write_bytes(world.image_path(i).read_bytes())
    pairs = world.pairs[:32]
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"filepath": str(Path("world") / "images" / f"{p['image']}.png"),
                                "title": p["caption"]}) + "\n")
    shards = root / "shards"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for k, p in enumerate(pairs[s * 16 : (s + 1) * 16]):
                key = f"{s:05d}{k:04d}"
                for name, data in ((f"{key}.png", world.image_path(p["image"]).read_bytes()),
                                   (f"{key}.txt", p["caption"].encode()),
                                   (f"{key}.json", json.dumps({"key": key}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with open(root / "cir.jsonl", "w", encoding="utf-8") as f:
        for t in world.cir_train[:24]:
            f.write(json.dumps({"reference": f"world/images/{t['reference']}.png", "modification": t["modification"],
                                "target": f"world/images/{t['target']}.png"}) + "\n")
    with open(root / "text_triplets.jsonl", "w", encoding="utf-8") as f:
        for t in world.text_triplets[:24]:
            f.write(json.dumps({k: t[k] for k in ("reference", "modification", "target")}) + "\n")
    with open(root / "captions.csv", "w", encoding="utf-8") as f:
        f.write("filepath,title\n")
        for p in pairs:
            f.write(f"x.png,\"{p['caption']}\"\n")
    from backbones.test_hf import _tiny_clip

    _tiny_clip(root / "clip")
    return {"root": str(root), "world": str(world_dir), "images": str(images), "pairs": str(root / "pairs.jsonl"),
            "shards": str(shards / "{00000..00001}.tar"), "cir": str(root / "cir.jsonl"),
            "text_triplets": str(root / "text_triplets.jsonl"), "captions_csv": str(root / "captions.csv"),
            "clip": "hf:" + str(root / "clip")}


def trainer_commands(d: dict[str, str], out: Path, steps: int = 2, extra: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """`zscir` argument lists that train every trainer on the user's data (mapping first: composing and rtd
    start from its checkpoint, which must exist under `out` before they run). Dropout and RTD's noise are off:
    their random draws differ per torchrun process, and the DDP test compares with one process."""
    clip = d["clip"]
    common = ["--steps", str(steps), "--no-progress", "--feature-cache", str(out / "fcache"), *extra]
    plain = ["--steps", str(steps), "--no-progress", *extra]
    return {
        "mapping": ["train", "mapping", "--backbone", clip, "--pairs", d["pairs"], "--image-column", "filepath",
                    "--caption-column", "title", "--hidden", "32", "--dropout", "0", "--batch-size", "8", "--out", str(out / "mapping"),
                    *common],
        "pic2word": ["train", "pic2word", "--backbone", clip, "--images", d["images"], "--hidden", "32",
                     "--dropout", "0", "--batch-size", "8", "--out", str(out / "pic2word"), *common],
        "composing": ["train", "composing", "--backbone", clip, "--mapper", str(out / "mapping"), "--cir-triplets",
                      d["cir"], "--batch-size", "8", "--rank", "2", "--dropout", "0", "--out", str(out / "composing"), *common],
        "rtd": ["train", "rtd", "--backbone", clip, "--mapper", str(out / "mapping"), "--triplets", d["text_triplets"],
                "--batch-size", "8", "--noise", "0", "--lr", "1e-3", "--out", str(out / "rtd"), *plain],
        "isa": ["train", "isa", "--backbone", clip, "--images", d["images"], "--mode", "symmetric", "--tokens", "2",
                "--batch-size", "8", "--out", str(out / "isa"), *common],
        "tat": ["train", "tat", "--backbone", clip, "--pairs", d["shards"], "--batch-size", "8", "--dropout", "0",
                "--out", str(out / "tat"), *plain],
        "pretrain": ["pretrain", "--pairs", d["pairs"], "--image-column", "filepath", "--caption-column", "title",
                     "--batch-size", "8", "--out", str(out / "pretrain"), *common],
    }
