"""Builders of small data sets in the layouts users have: a folder tree, img2dataset WebDataset shards,
CSV/JSONL listings with custom columns."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from zscir_fakes import COLORS, SHAPES, make_image


def caption(i: int) -> str:
    return f"a {COLORS[i % len(COLORS)]} {SHAPES[(i // len(COLORS)) % len(SHAPES)]}"


def image_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, format=fmt)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int, per_shard: int, *, corrupt: set[int] = frozenset(),
                 start: int = 0) -> list[int]:
    """img2dataset layout: shards/{00000..}.tar holding key.jpg|png|webp + key.txt + key.json; returns the
    item numbers written. Items in `corrupt` get garbage image bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    i = start
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for _ in range(per_shard):
                key = f"{s:05d}{i:04d}"
                ext, fmt = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")][i % 3]
                data = b"not an image at all" if i in corrupt else image_bytes(i, fmt)
                _add(tf, f"{key}.{ext}", data)
                _add(tf, f"{key}.txt", caption(i).encode())
                _add(tf, f"{key}.json", json.dumps({"key": key, "url": f"http://x/{i}.jpg", "n": i}).encode())
                items.append(i)
                i += 1
    return items


def write_pairs_csv(folder: Path, n: int, *, image_col: str = "filepath", caption_col: str = "title") -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = [f"{image_col},{caption_col},extra"]
    for i in range(n):
        make_image(i).save(folder / "img" / f"{i:03d}.png")
        rows.append(f"img/{i:03d}.png,\"{caption(i)}, nice\",{i}")
    p = folder / "pairs.csv"
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


def write_pairs_jsonl(folder: Path, n: int, *, image_col: str = "img", caption_col: str = "alt") -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    p = folder / "pairs.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for i in range(n):
            make_image(i).save(folder / "img" / f"{i:03d}.png")
            f.write(json.dumps({image_col: f"img/{i:03d}.png", caption_col: caption(i), "n": i}) + "\n")
    return p
