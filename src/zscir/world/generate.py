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
from zscir.world.modify import (
    NAMED_FAMILY_DRAW,
    Compound,
    Family,
    Mod,
    partials,
    random_compound,
    random_family,
    random_mod,
)
from zscir.world.render import render
from zscir.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Scene, all_combos, random_scene
from zscir.world.scene import SIZES as OBJ_SIZES

log = logging.getLogger(__name__)

VERSION = 4
IMAGE_SIZE = 128
HELDOUT_FRACTION = 0.12
COMPOUND_FRACTION = 0.25
HELDOUT_TARGET_FRACTION = 0.45  # eval queries whose target is forced to contain a held-out combination
# World v2 calibration (docs/world.md): many near copies of each evaluation reference, so that resemblance to the
# reference does not find the target; the modification text has to be used.
CIRR_NEAR_COPIES = 15  # gallery copies of each CIRR-like reference (its queries' targets included)
CIRR_QUERIES_PER_REF = 4
CIRR_TWINS = 1  # re-drawings of each CIRR-like (and cir_train) reference in the gallery: resemblance alone finds them
TARGET_KINDS = ("colour", "shape", "size", "move", "add", "background")  # CIRR-like targets: the text names the change
# World v4: every modification (CIRR-like, CIRCO-like and cir_train) also names one object the target keeps from
# the reference, as CIRR's and CIRCO's texts often say what stays ("..., with a big yellow pentagon in the top left
# corner"). Without it (v2) the text alone found almost nothing at depth (R@10 7 against CIRR's 55), so the deep
# columns rewarded reference-heavy queries and `sum` led R@50; with it on the CIRR-like side only (v3, not
# adopted) the alpha chosen on cir_train no longer suited the CIRCO-like texts (docs/world.md).
CIRCO_NEAR_COPIES = 14  # non-answer copies of each CIRCO-like reference, the nearest to it in pixels
CIRCO_QUERIES_PER_REF = 2
CIRCO_MAX_GT = 5
THUMB_SIZE = 32

_COUNTS = ("pairs", "unlabelled", "text_triplets", "cir_train", "cirr_queries", "circo_queries")
SIZES: dict[str, dict[str, int]] = {
    "quick": dict(zip(_COUNTS, (1000, 500, 3000, 300, 200, 120))),
    "default": dict(zip(_COUNTS, (6000, 3000, 20000, 3000, 1000, 400))),
    "large": dict(zip(_COUNTS, (24000, 12000, 80000, 12000, 4000, 1600))),
}
_INTERNAL_SIZES = {"tiny": dict(zip(_COUNTS, (60, 30, 100, 20, 24, 16)))}


def context_clause(rng: random.Random, ref: Scene, target: Scene) -> str:
    """`, with <object>` naming one object the target keeps unchanged from the reference ("" if it keeps none)."""
    kept = [o for o in target.objects if o in ref.objects]
    return f", with {L.obj_phrase(rng, rng.choice(kept))}" if kept else ""


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
        """Synthetic CIR triplets shaped like the CIRR-like protocol: CIRR_QUERIES_PER_REF targets share each
        reference (their targets are near copies of one another), a single change's target followed by its
        over-change (`_over_change`, as a compound triplet), with modifications that name the change, so a
        ranking over these images (the demo chooses Slerp's alpha on it) needs the text as the evaluation does."""
        out: list[dict] = []
        n = self.counts["cir_train"]
        while len(out) < n:
            ref = random_scene(self.rng, self.train_list)
            seen = {ref.key()}
            rid = None
            group_start = len(out)
            for _ in range(CIRR_QUERIES_PER_REF):
                m = self._target_mod(ref, self.train, seen, False) if len(out) < n else None
                if m is None:
                    break
                tgt = m.apply(ref)
                seen.add(tgt.key())
                rid = rid or self.new_id("c", ref)
                text = m.text(self.rng, ref) + context_clause(self.rng, ref, tgt)
                out.append({"reference": rid, "modification": text, "target": self.new_id("c", tgt)})
                # the target's over-change as a triplet of its own (a compound change), so this ranking holds
                # the text's decoys as the evaluation's does
                oc = self._over_change(ref, m, self.train, seen) if isinstance(m, Mod) and len(out) < n else None
                if oc is not None:
                    assert isinstance(m, Mod)  # only single changes get an over-change triplet (see above)
                    seen.add(oc[0].key())
                    text = Compound((m, oc[1])).text(self.rng, ref) + context_clause(self.rng, ref, oc[0])
                    out.append({"reference": rid, "modification": text, "target": self.new_id("c", oc[0])})
            if rid is not None:  # the reference's twins, as in the CIRR-like gallery: negatives of every triplet
                twins = [self.new_id("c", ref) for _ in range(CIRR_TWINS)]
                for t in out[group_start:]:
                    t["negatives"] = twins
        return out

    def _over_change(self, ref: Scene, m: Mod | Compound, combos: set, seen: set) -> tuple[Scene, Mod] | None:
        """The target of `m` with one more change that leaves what `m`'s text says true (another kind, not the
        object `m` changed): an image the modification text alone cannot tell from the target, which the
        reference's look can (it is one change farther from it), as CIRR's subsets hold for a text-only query."""
        mods = m.mods if isinstance(m, Compound) else (m,)
        used = {x.kind for x in mods}
        touched = {x.obj for x in mods} | {x.result_obj() for x in mods}
        kinds = [k for k in ("background", "add", "size", "move", "colour", "shape") if k not in used]
        target = m.apply(ref)
        for _ in range(20):
            e = random_mod(self.rng, target, combos, kinds)
            if e is None:
                return None
            if e.obj is not None and e.obj in touched:
                continue
            over = e.apply(target)
            if over.key() not in seen:
                return over, e
        return None

    # ---- CIRR-like: a reference, many near copies of it, several single-target queries ----
    def _target_mod(self, ref: Scene, combos: set, seen: set, want_heldout: bool) -> Mod | Compound | None:
        """A modification that names what the target shows (no removal: 'remove X' points at X)."""
        m: Mod | Compound | None = None
        for _ in range(30):
            if self.rng.random() < COMPOUND_FRACTION:
                m = random_compound(self.rng, ref, combos)
            if m is None:
                m = random_mod(self.rng, ref, combos, TARGET_KINDS)
            if m is not None and m.apply(ref).key() not in seen and (not want_heldout or self.has_heldout(m.apply(ref))):
                return m
            m = None
        return None

    def cirr(self, taken: set | None = None) -> dict:
        """Each reference comes with CIRR_NEAR_COPIES near copies in the gallery (single or compound changes of it);
        CIRR_QUERIES_PER_REF of them are query targets, each query's modification naming its own change, so the
        reference's look alone cannot tell the target from the other copies (image-only R@1 ~ 1/near copies), and
        its text alone cannot either (it does not describe the rest of the scene). Each target's over-change
        (`_over_change`) and CIRR_TWINS re-drawings of the reference are in the gallery too. `members`
        (Recall_subset) is the reference, the target, its over-change and other copies of the same reference.
        `taken`: scene keys no new image may repeat (for a protocol grown after the fact: benchmarks/)."""
        rng, combos = self.rng, self.all
        gallery: list[str] = []
        keys: set = set(taken or ())
        queries: list[dict] = []
        while len(queries) < self.counts["cirr_queries"]:
            ref = random_scene(rng, self.all_list)
            if ref.key() in keys:
                continue
            seen = {ref.key()} | keys
            targets: list[tuple[Scene, Mod | Compound]] = []
            overs: list[Scene | None] = []  # per target: its over-change (the text's decoy), if one exists
            others: list[Scene] = []
            n_q = min(CIRR_QUERIES_PER_REF, self.counts["cirr_queries"] - len(queries))
            for _ in range(n_q):
                m = self._target_mod(ref, combos, seen, rng.random() < HELDOUT_TARGET_FRACTION)
                if m is None:
                    m = self._target_mod(ref, combos, seen, False)
                if m is None:
                    continue
                seen.add(m.apply(ref).key())
                targets.append((m.apply(ref), m))
                oc = self._over_change(ref, m, combos, seen)
                overs.append(oc[0] if oc else None)
                if oc:
                    seen.add(oc[0].key())
                    others.append(oc[0])
                if isinstance(m, Compound):  # partial changes: the hardest near copies
                    for p in partials(m, ref, combos):
                        if p.key() not in seen:
                            seen.add(p.key())
                            others.append(p)
            for _ in range(200):
                if len(targets) + len(others) >= CIRR_NEAR_COPIES:
                    break
                m = random_compound(rng, ref, combos) if rng.random() < 0.2 else random_mod(rng, ref, combos)
                if m is not None and m.apply(ref).key() not in seen:
                    seen.add(m.apply(ref).key())
                    others.append(m.apply(ref))
            if not targets or len(targets) + len(others) < 5:
                continue
            rid = self.new_id("e", ref)
            tids = [self.new_id("e", t[0]) for t in targets]
            oids = [self.new_id("e", o) for o in others]
            keys |= {ref.key()} | {t[0].key() for t in targets} | set(o.key() for o in others)
            # the reference's twin: the same scene drawn again (its own jitter), as CIRR's galleries hold near
            # duplicates of a reference; the nearest image to the reference, never an answer
            gallery += [rid] + tids + oids + [self.new_id("e", ref) for _ in range(CIRR_TWINS)]
            copies = tids + oids
            oid_of = {o.key(): i for o, i in zip(others, oids)}
            for tid, (tgt, m), over in zip(tids, targets, overs):
                # the subset: reference, target, the target's over-change (text alone cannot separate those
                # two) and other copies of the reference (the reference's look alone cannot)
                decoy = [oid_of[over.key()]] if over is not None else []
                rest = [c for c in copies if c != tid and c not in decoy]
                members = sorted([rid, tid] + decoy + rng.sample(rest, 4 - len(decoy)))
                text = m.text(rng, ref) + context_clause(rng, ref, tgt)
                queries.append({"id": len(queries), "reference": rid, "modification": text,
                                "target": tid, "members": members})
        self._distractors(gallery, keys, max(1, len(gallery) // 5))
        return {"gallery": gallery, "queries": queries}

    def _distractors(self, gallery: list[str], keys: set, n: int) -> None:
        while n > 0:
            s = random_scene(self.rng, self.all_list)
            if s.key() not in keys:
                keys.add(s.key())
                gallery.append(self.new_id("e", s))
                n -= 1

    # ---- CIRCO-like: named-concept modifications, several valid targets, many near copies that are not ----
    def circo(self) -> dict:
        """Each reference gets CIRCO_QUERIES_PER_REF queries whose modification names a concept ("add something
        red", "replace the star with a circle") and leaves the rest free, so 1-5 gallery images satisfy it. The
        ground truths put in the gallery are the family members *farthest* from the reference in pixel space,
        and CIRCO_NEAR_COPIES other changes of the reference nearest to it in pixel space are added as negatives:
        the reference's nearest neighbours are not the answers, the modification text has to be used."""
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
            if ref.key() in by_key:
                continue
            n_q = min(CIRCO_QUERIES_PER_REF, self.counts["circo_queries"] - len(pending))
            fams: list[Family] = []
            for _ in range(4 * n_q):
                if len(fams) >= n_q:
                    break
                f = random_family(rng, ref, combos, NAMED_FAMILY_DRAW)
                if f is not None and all((f.kind, f.obj, f.value) != (g.kind, g.obj, g.value) for g in fams):
                    fams.append(f)
            if not fams:
                continue
            fam_keys_all: set = set()
            chosen: list[tuple[Family, list[Scene], set]] = []
            for f in fams:
                members = f.members(combos)
                fam_keys = {s.key() for s in members}
                fam_keys_all |= fam_keys
                rng.shuffle(members)
                want = rng.random() < HELDOUT_TARGET_FRACTION
                # farthest from the reference first (pixels), held-out combinations first when wanted
                far = sorted(members, key=lambda s: (want and not self.has_heldout(s), -_pixel_distance(ref, s)))
                pool = far[: max(1, len(far) // 2)]  # the farther half, in a random order
                head = pool[0] if want else None
                rng.shuffle(pool)
                if head is not None:
                    pool.remove(head)
                    pool.insert(0, head)
                k = rng.randint(1, min(CIRCO_MAX_GT, len(pool)))
                chosen.append((f, pool[:k], fam_keys))
            rid = put(ref)
            firsts = []
            for _, gts, _ in chosen:
                firsts.append(put(gts[0]))
                for s in gts[1:]:
                    put(s)
            # near copies that satisfy none of this reference's queries, nearest to the reference first
            cands: dict = {}
            for _ in range(6 * CIRCO_NEAR_COPIES):
                m = random_mod(rng, ref, combos)
                if m is not None:
                    t = m.apply(ref)
                    if t.key() not in fam_keys_all and t.key() not in by_key:
                        cands.setdefault(t.key(), t)
            near = sorted(cands.values(), key=lambda s: (_pixel_distance(ref, s), s.key()))
            for s in near[:CIRCO_NEAR_COPIES]:
                put(s)
            for (f, _, fam_keys), first in zip(chosen, firsts):
                pending.append((f, rid, first, fam_keys))
        self._distractors_circo(put, by_key, max(1, len(gallery) // 5))
        self.circo_families = [p[0] for p in pending]  # in query order (tests recompute the ground truths)
        queries = []
        for qi, (fam, rid, first, fam_keys) in enumerate(pending):
            gt = [first] + [g for g in gallery if g != first and self.scenes[g].key() in fam_keys]
            assert rid not in gt
            # v4: the clause of what stays, as the CIRR-like texts have it; every ground truth keeps the same
            # objects (a family changes or adds one object), so it is true of all of them
            text = fam.text(rng) + context_clause(rng, self.scenes[rid], self.scenes[first])
            queries.append({"id": qi, "reference": rid, "modification": text, "target": first, "gt": gt,
                            "shared_concept": fam.shared_concept()})
        return {"gallery": gallery, "queries": queries}

    def _distractors_circo(self, put, by_key: dict, n: int) -> None:
        while n > 0:
            s = random_scene(self.rng, self.all_list)
            if s.key() not in by_key:
                put(s)
                n -= 1


_THUMBS: dict = {}


def _thumb(scene: Scene):
    import numpy as np

    k = scene.key()
    if k not in _THUMBS:
        if len(_THUMBS) > 50000:
            _THUMBS.clear()
        _THUMBS[k] = np.asarray(render(scene, THUMB_SIZE, rng_seed=0), dtype=np.float32)
    return _THUMBS[k]


def _pixel_distance(a: Scene, b: Scene) -> float:
    """Mean absolute RGB difference of small jitter-free renderings: how far two scenes look apart."""
    return float(abs(_thumb(a) - _thumb(b)).mean())


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
