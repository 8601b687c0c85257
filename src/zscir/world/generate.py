"""Generate a world folder (see the on-disk format in world.json / load.py), deterministic from the seed."""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import time
import zlib
from pathlib import Path

from tqdm import tqdm

from zscir.errors import InputError
from zscir.utils.io import atomic_dir, write_json
from zscir.world import language as L
from zscir.world.modify import Compound, Family, Mod, partials, random_compound, random_family, random_mod
from zscir.world.render import render
from zscir.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Scene, all_combos, random_scene
from zscir.world.scene import SIZES as OBJ_SIZES

log = logging.getLogger(__name__)

VERSION = 1
IMAGE_SIZE = 128
HELDOUT_FRACTION = 0.12
COMPOUND_FRACTION = 0.25
HELDOUT_TARGET_FRACTION = 0.45  # eval queries whose target is forced to contain a held-out combination

_COUNTS = ("pairs", "unlabelled", "text_triplets", "cir_train", "cirr_queries", "circo_queries")
SIZES: dict[str, dict[str, int]] = {
    "quick": dict(zip(_COUNTS, (1000, 500, 3000, 300, 200, 120))),
    "default": dict(zip(_COUNTS, (6000, 3000, 20000, 3000, 1000, 400))),
    "large": dict(zip(_COUNTS, (24000, 12000, 80000, 12000, 4000, 1600))),
}
_INTERNAL_SIZES = {"tiny": dict(zip(_COUNTS, (60, 30, 100, 20, 24, 16)))}


def _heldout(rng: random.Random) -> list[tuple[str, str]]:
    """~12% of (shape, colour) pairs, at most one per shape and per colour so every attribute is still seen."""
    n = round(HELDOUT_FRACTION * len(SHAPES) * len(COLOURS))
    shapes, colours = list(SHAPES), list(COLOURS)
    rng.shuffle(shapes)
    rng.shuffle(colours)
    return sorted(zip(shapes[:n], colours[:n]))


def _render_one(job: tuple[str, dict, int, str]) -> None:
    image_id, scene_d, seed, folder = job
    im = render(Scene.from_dict(scene_d), IMAGE_SIZE, rng_seed=zlib.crc32(f"{seed}/{image_id}".encode()))
    im.save(Path(folder) / f"{image_id}.png", format="PNG", compress_level=1)


class _Builder:
    def __init__(self, seed: int, counts: dict[str, int]) -> None:
        self.seed = seed
        self.counts = counts
        self.rng = random.Random(seed)
        self.heldout = _heldout(self.rng)
        self.all = set(all_combos())
        self.train = self.all - set(self.heldout)
        self.train_list = sorted(self.train)
        self.all_list = sorted(self.all)
        self.scenes: dict[str, Scene] = {}
        self.n = {"p": 0, "u": 0, "c": 0, "e": 0}

    def new_id(self, prefix: str, scene: Scene) -> str:
        self.n[prefix] += 1
        i = f"{prefix}{self.n[prefix]:06d}"
        self.scenes[i] = scene
        return i

    def has_heldout(self, scene: Scene) -> bool:
        return bool(scene.combos() & set(self.heldout))

    def mod(self, scene: Scene, combos: set) -> Mod | Compound | None:
        if self.rng.random() < COMPOUND_FRACTION:
            c = random_compound(self.rng, scene, combos)
            if c is not None:
                return c
        return random_mod(self.rng, scene, combos)

    # ---- training data (held-out combinations never appear) ----
    def pairs(self) -> list[dict]:
        out = []
        for _ in range(self.counts["pairs"]):
            s = random_scene(self.rng, self.train_list)
            out.append({"image": self.new_id("p", s), "caption": L.caption(self.rng, s)})
        return out

    def unlabelled(self) -> list[str]:
        return [self.new_id("u", random_scene(self.rng, self.train_list)) for _ in range(self.counts["unlabelled"])]

    def _triplet(self) -> tuple[Scene, str, Scene]:
        while True:
            ref = random_scene(self.rng, self.train_list)
            m = self.mod(ref, self.train)
            if m is not None:
                return ref, m.text(self.rng, ref), m.apply(ref)

    def text_triplets(self) -> list[dict]:
        out = []
        for _ in range(self.counts["text_triplets"]):
            ref, t, tgt = self._triplet()
            out.append({"reference": L.caption(self.rng, ref), "modification": t, "target": L.caption(self.rng, tgt)})
        return out

    def cir_train(self) -> list[dict]:
        out = []
        for _ in range(self.counts["cir_train"]):
            ref, t, tgt = self._triplet()
            out.append({"reference": self.new_id("c", ref), "modification": t, "target": self.new_id("c", tgt)})
        return out

    # ---- CIRR-like: groups of a reference + 5 variants, single target ----
    def cirr(self) -> dict:
        rng, combos = self.rng, self.all
        gallery: list[str] = []
        keys: set = set()
        queries: list[dict] = []
        while len(queries) < self.counts["cirr_queries"]:
            ref = random_scene(rng, self.all_list)
            if ref.key() in keys:
                continue
            want = rng.random() < HELDOUT_TARGET_FRACTION
            m1 = None
            for _ in range(20):
                m1 = self.mod(ref, combos)
                if m1 is not None and (not want or self.has_heldout(m1.apply(ref))):
                    break
            if m1 is None:
                continue
            variants: list[tuple[Scene, Mod | Compound | None]] = []  # None: a partial of a compound
            seen = {ref.key()}

            def push(scene: Scene, mod: Mod | Compound | None, seen: set = seen, variants: list = variants) -> None:
                if scene.key() not in seen and len(variants) < 5:
                    seen.add(scene.key())
                    variants.append((scene, mod))

            push(m1.apply(ref), m1)
            if isinstance(m1, Compound):
                for p in partials(m1, ref, combos):
                    push(p, None)
            for _ in range(60):
                if len(variants) >= 5:
                    break
                m = random_mod(rng, ref, combos)
                if m is not None:
                    push(m.apply(ref), m)
            variants = variants[:5]
            allkeys = [ref.key()] + [v[0].key() for v in variants]
            if len(variants) < 5 or len(set(allkeys)) != 6 or keys & set(allkeys):
                continue
            keys |= set(allkeys)
            rid = self.new_id("e", ref)
            ids = [rid] + [self.new_id("e", v[0]) for v in variants]
            gallery += ids
            members = sorted(ids)
            second = [j for j, v in enumerate(variants) if j > 0 and v[1] is not None]
            picks = [0] + ([rng.choice(second)] if second and len(queries) + 1 < self.counts["cirr_queries"] else [])
            for j in picks:
                mod = variants[j][1]
                assert mod is not None  # picks are the first variant (m1) or ones with a modification
                queries.append({"id": len(queries), "reference": rid, "modification": mod.text(rng, ref),
                                "target": ids[j + 1], "members": members})
        self._distractors(gallery, keys, max(1, len(gallery) // 5))
        return {"gallery": gallery, "queries": queries}

    def _distractors(self, gallery: list[str], keys: set, n: int) -> None:
        while n > 0:
            s = random_scene(self.rng, self.all_list)
            if s.key() not in keys:
                keys.add(s.key())
                gallery.append(self.new_id("e", s))
                n -= 1

    # ---- CIRCO-like: underspecified modifications, several valid targets ----
    def circo(self) -> dict:
        rng, combos = self.rng, self.all
        gallery: list[str] = []
        by_key: dict = {}

        def put(s: Scene) -> str:
            if s.key() not in by_key:
                by_key[s.key()] = self.new_id("e", s)
                gallery.append(by_key[s.key()])
            return by_key[s.key()]

        pending: list[tuple[Family, str, str, set]] = []
        while len(pending) < self.counts["circo_queries"]:
            ref = random_scene(rng, self.all_list)
            fam = random_family(rng, ref, combos)
            if fam is None:
                continue
            members = fam.members(combos)
            rng.shuffle(members)
            if rng.random() < HELDOUT_TARGET_FRACTION:
                members.sort(key=lambda s: not self.has_heldout(s))  # stable: held-out ones first
            fam_keys = {s.key() for s in members}
            k = rng.randint(1, min(6, len(members)))
            rid = put(ref)
            first = put(members[0])
            for s in members[1:k]:
                put(s)
            # hard negatives: other changes of the reference that fall outside the family
            for _ in range(rng.randint(2, 4)):
                m = random_mod(rng, ref, combos)
                if m is not None and m.apply(ref).key() not in fam_keys:
                    put(m.apply(ref))
            pending.append((fam, rid, first, fam_keys))
        self._distractors_circo(put, by_key, max(1, len(gallery) // 5))
        queries = []
        for qi, (fam, rid, first, fam_keys) in enumerate(pending):
            gt = [first] + [g for g in gallery if g != first and self.scenes[g].key() in fam_keys]
            assert rid not in gt
            queries.append({"id": qi, "reference": rid, "modification": fam.text(rng), "target": first, "gt": gt,
                            "shared_concept": fam.shared_concept()})
        return {"gallery": gallery, "queries": queries}

    def _distractors_circo(self, put, by_key: dict, n: int) -> None:
        while n > 0:
            s = random_scene(self.rng, self.all_list)
            if s.key() not in by_key:
                put(s)
                n -= 1


def _counts_for(size: str) -> dict[str, int]:
    if size in SIZES:
        return SIZES[size]
    if size in _INTERNAL_SIZES:
        return _INTERNAL_SIZES[size]
    raise InputError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")


def generate_world(out: Path, seed: int = 0, size: str = "quick", workers: int = 2, progress: bool = True) -> Path:
    """Build a world into `out` (replacing it atomically) and return `out`."""
    out = Path(out)
    counts = _counts_for(size)
    t0 = time.perf_counter()
    b = _Builder(int(seed), counts)
    pairs = b.pairs()
    unlabelled = b.unlabelled()
    text = b.text_triplets()
    cir = b.cir_train()
    cirr = b.cirr()
    circo = b.circo()
    log.info("world: %d scenes built in %.1fs", len(b.scenes), time.perf_counter() - t0)
    meta = {
        "version": VERSION, "seed": int(seed), "size": size,
        "counts": {"pairs": len(pairs), "unlabelled": len(unlabelled), "text_triplets": len(text),
                   "cir_train": len(cir), "cirr_queries": len(cirr["queries"]), "cirr_gallery": len(cirr["gallery"]),
                   "circo_queries": len(circo["queries"]), "circo_gallery": len(circo["gallery"]),
                   "images": len(b.scenes)},
        "vocab": {"shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(OBJ_SIZES),
                  "positions": list(POSITIONS), "backgrounds": list(BACKGROUNDS)},
        "heldout_combos": [list(c) for c in b.heldout],
        "image_size": IMAGE_SIZE,
    }
    with atomic_dir(out) as tmp:
        img = tmp / "images"
        img.mkdir()
        jobs = [(i, s.to_dict(), b.seed, str(img)) for i, s in b.scenes.items()]
        bar = tqdm(total=len(jobs), desc="rendering world", unit="img", disable=not progress, mininterval=0.5)
        if workers > 1 and len(jobs) > 1500:
            with mp.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_one, jobs, chunksize=64):
                    bar.update()
        else:
            for j in jobs:
                _render_one(j)
                bar.update()
        bar.close()
        write_json(tmp / "scenes.json", {i: s.to_dict() for i, s in b.scenes.items()}, indent=None)
        write_json(tmp / "pairs.json", pairs)
        write_json(tmp / "unlabelled.json", unlabelled)
        write_json(tmp / "text_triplets.json", text)
        write_json(tmp / "cir_train.json", cir)
        write_json(tmp / "eval_cirr.json", cirr, indent=None)
        write_json(tmp / "eval_circo.json", circo, indent=None)
        write_json(tmp / "world.json", meta)  # last: its presence marks a complete world
    log.info("world %s (%s, seed %d) written in %.1fs", out, size, seed, time.perf_counter() - t0)
    return out
