import json
import random

import pytest

from zscir.errors import InputError
from zscir.world import SIZES, generate_world, load_world
from zscir.world.generate import _INTERNAL_SIZES
from zscir.world.modify import KINDS, Compound, mods_of_kind, random_compound, random_family
from zscir.world.render import render
from zscir.world.scene import Scene, all_combos, random_scene

JSONS = ("world.json", "scenes.json", "pairs.json", "unlabelled.json", "text_triplets.json", "cir_train.json",
         "eval_cirr.json", "eval_circo.json")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("worlds")
    a = generate_world(base / "a", seed=3, size="tiny", progress=False)
    b = generate_world(base / "b", seed=3, size="tiny", progress=False)
    c = generate_world(base / "c", seed=4, size="tiny", progress=False)
    return a, b, c


@pytest.mark.slow
def test_determinism(worlds):
    a, b, c = worlds
    for f in JSONS:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    pngs = sorted((a / "images").iterdir())
    for p in pngs[:: max(1, len(pngs) // 25)]:
        assert p.read_bytes() == (b / "images" / p.name).read_bytes()
    assert (a / "scenes.json").read_bytes() != (c / "scenes.json").read_bytes()


def test_render_size_and_seed():
    s = random_scene(random.Random(0), all_combos())
    im = render(s, 128, rng_seed=5)
    assert im.size == (128, 128) and im.mode == "RGB"
    assert im.tobytes() == render(s, 128, rng_seed=5).tobytes()


@pytest.mark.slow
def test_modifications_are_functions():
    rng = random.Random(1)
    combos = set(all_combos())
    for _ in range(200):
        s = random_scene(rng, sorted(combos))
        assert s.is_valid()
        for k in KINDS:
            for m in mods_of_kind(s, k, combos)[:5]:
                t = m.apply(s)
                assert t.is_valid() and t.key() != s.key() and t == m(s)
                assert m.text(random.Random(0), s)
        c = random_compound(rng, s, combos)
        if c is not None:
            assert isinstance(c, Compound) and c.apply(s) == c.mods[1].apply(c.mods[0].apply(s))
            assert c.apply(s).is_valid() and c.text(rng, s)
    # scene key is canonical
    o = s.objects
    assert Scene(tuple(reversed(o)), s.background).key() == s.key()


def test_world_targets_correct_by_construction(worlds):
    w = load_world(worlds[0])
    # every CIR train/eval target is a valid scene distinct from its reference
    for t in w.cir_train:
        assert w.scene(t["reference"]) != w.scene(t["target"])


def test_cirr(worlds):
    w = load_world(worlds[0])
    g = w.cirr["gallery"]
    assert len(set(g)) == len(g)
    keys = [w.scene(i).key() for i in g]
    refs = {q["reference"] for q in w.cirr["queries"]}
    # every scene once, but each reference's scene twice: the reference and its twin (a re-drawing, never an answer)
    from collections import Counter
    twice = {k for k, n in Counter(keys).items() if n > 1}
    assert twice == {w.scene(r).key() for r in refs} and max(Counter(keys).values()) == 2
    for q in w.cirr["queries"]:
        assert w.scene(q["target"]).key() not in twice
    gs = set(g)
    assert len(w.cirr["queries"]) == _INTERNAL_SIZES["tiny"]["cirr_queries"]
    for q in w.cirr["queries"]:
        m = q["members"]
        assert len(m) == 6 and len(set(m)) == 6
        assert q["reference"] in m and q["target"] in m and q["reference"] != q["target"]
        assert set(m) <= gs and q["modification"]


def test_circo(worlds):
    w = load_world(worlds[0])
    combos = set(all_combos())
    g = w.circo["gallery"]
    assert len(set(w.scene(i).key() for i in g)) == len(g)
    for q in w.circo["queries"]:
        assert q["gt"] and q["target"] == q["gt"][0] and q["reference"] not in q["gt"] and q["shared_concept"]
    # gt is exactly the satisfying gallery images: recompute with every family kind for the reference
    rng = random.Random(0)
    for _ in range(8):
        ref = random_scene(rng, sorted(combos))
        f = random_family(rng, ref, combos)
        assert f is not None
        mem = f.members(combos)
        assert mem and all(m.is_valid() and m != ref for m in mem) and f.contains(mem[0], combos)
        assert not f.contains(ref, combos)


def test_circo_gt_exact(tmp_path):
    from zscir.world import generate as G
    b = G._Builder(7, _INTERNAL_SIZES["tiny"])
    circo = b.circo()
    combos = set(all_combos())
    assert len(b.circo_families) == len(circo["queries"])
    for q, f in zip(circo["queries"], b.circo_families):
        keys = {m.key() for m in f.members(combos)}
        want = {i for i in circo["gallery"] if b.scenes[i].key() in keys}
        assert set(q["gt"]) == want and q["reference"] not in want
        assert b.scenes[q["reference"]] == f.ref and q["target"] == q["gt"][0]


def test_heldout(worlds):
    w = load_world(worlds[0])
    H = {tuple(c) for c in w.meta["heldout_combos"]}
    assert len(H) == round(0.12 * 64)
    train_ids = [p["image"] for p in w.pairs] + list(w.unlabelled)
    train_ids += [t[k] for t in w.cir_train for k in ("reference", "target")]
    for i in train_ids:
        assert not (w.scene(i).combos() & H), i
        assert not i.startswith("e")
    words = {f"{c} {s}" for s, c in H}
    for t in w.text_triplets:
        for k in ("reference", "modification", "target"):
            assert not any(x in t[k] for x in words), t
    targets = [q["target"] for q in w.cirr["queries"] + w.circo["queries"]]
    frac = sum(bool(w.scene(i).combos() & H) for i in targets) / len(targets)
    assert frac >= 0.25
    for split in (w.cirr, w.circo):
        assert all(i.startswith("e") for i in split["gallery"])


def test_counts_per_size(worlds):
    w = load_world(worlds[0])
    n = _INTERNAL_SIZES["tiny"]
    c = w.meta["counts"]
    for k in ("pairs", "unlabelled", "text_triplets", "cir_train", "cirr_queries", "circo_queries"):
        assert c[k] == n[k]
    assert set(SIZES) == {"quick", "default", "large"}
    assert SIZES["quick"]["pairs"] == 1000 and SIZES["default"]["cirr_queries"] == 1000
    assert SIZES["large"]["pairs"] >= 4 * SIZES["default"]["pairs"] - 1


@pytest.mark.slow
def test_cli_writes_loadable_world(tmp_path, monkeypatch):
    from zscir.cli import main
    from zscir.world import generate as G
    monkeypatch.setitem(G.SIZES, "quick", _INTERNAL_SIZES["tiny"])
    assert main(["world", "--out", str(tmp_path / "w"), "--seed", "1", "--size", "quick", "--workers", "1"]) == 0
    w = load_world(tmp_path / "w")
    assert w.meta["seed"] == 1 and w.image_path(w.pairs[0]["image"]).is_file()


def test_bad_world_folders(tmp_path, worlds):
    with pytest.raises(InputError):
        load_world(tmp_path / "nope")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(worlds[0], bad)
    (bad / "eval_cirr.json").write_text("{not json")
    with pytest.raises(InputError):
        load_world(bad)
    (bad / "eval_cirr.json").unlink()
    with pytest.raises(InputError):
        load_world(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(worlds[0], bad2)
    next((bad2 / "images").iterdir()).unlink()
    with pytest.raises(InputError):
        load_world(bad2)


# ---- world v2 calibration properties (docs/world.md) ----
def _near_copy(a: Scene, b: Scene) -> bool:
    """b is at most three changes away from a (a compound target's over-change: e.g. a new background, a changed
    object and one more change): at most two objects differing (changed, added or removed), on the same
    background or another one."""
    sa, sb = set(a.objects), set(b.objects)
    if a.background != b.background:
        return len(sa ^ sb) <= 4
    return 0 < len(sa ^ sb) <= 4


def test_version_4(worlds):
    from zscir.world.generate import VERSION
    w = load_world(worlds[0])
    assert VERSION == 4 and w.meta["version"] == 4


def _names_a_kept_object(text: str, kept: list) -> bool:
    """True if `text` ends with `, with <object>` naming one of `kept` (colour, shape and place); False if it has no
    such clause, which only a query that keeps nothing may lack (asserted)."""
    from zscir.world.language import POS_WORDS
    head, sep, clause = text.rpartition(", with ")
    if not kept:
        assert not sep, text
        return False
    assert sep and head, text
    assert any(o.colour in clause and o.shape in clause and any(p in clause for p in POS_WORDS[o.pos])
               for o in kept), text
    return True


def test_cirr_like_texts_name_what_the_target_keeps(worlds):
    """v3+: a CIRR-like (and cir_train) modification ends with `, with <object>` naming an object the target keeps
    unchanged from the reference (where it keeps one), as CIRR's texts often say what stays."""
    w = load_world(worlds[0])
    with_clause = 0
    for q in list(w.cirr["queries"]) + list(w.cir_train):
        ref, tgt = w.scene(q["reference"]), w.scene(q["target"])
        with_clause += _names_a_kept_object(q["modification"], [o for o in tgt.objects if o in ref.objects])
    assert with_clause >= len(w.cirr["queries"]) // 2


def test_circo_like_texts_name_what_every_ground_truth_keeps(worlds):
    """v4: a CIRCO-like modification ends with `, with <object>` naming an object of the reference that every one
    of its ground truths keeps, where they keep one."""
    w = load_world(worlds[0])
    with_clause = 0
    for q in w.circo["queries"]:
        ref = w.scene(q["reference"])
        kept = [o for o in ref.objects if all(o in w.scene(g).objects for g in q["gt"])]
        with_clause += _names_a_kept_object(q["modification"], kept)
    assert with_clause >= len(w.circo["queries"]) // 2


def test_v1_world_is_refused(tmp_path, worlds):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(worlds[0], old)
    meta = json.loads((old / "world.json").read_text())
    meta["version"] = 1
    (old / "world.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="version 1"):
        load_world(old)


def test_cirr_references_have_many_near_copies(worlds):
    from zscir.world.generate import CIRR_NEAR_COPIES
    w = load_world(worlds[0])
    gallery = [w.scene(i) for i in w.cirr["gallery"]]
    refs = {q["reference"] for q in w.cirr["queries"]}
    assert len(w.cirr["queries"]) >= 2 * len(refs)  # several queries per reference
    for r in refs:
        ref = w.scene(r)
        n = sum(_near_copy(ref, g) for g in gallery if g != ref)
        assert n >= CIRR_NEAR_COPIES - 2, (r, n)
    for q in w.cirr["queries"]:  # the target and every subset member are near copies of the reference
        ref = w.scene(q["reference"])
        assert all(_near_copy(ref, w.scene(m)) for m in q["members"] if m != q["reference"])


def test_resemblance_does_not_find_the_target(worlds):
    """In pixel space, the reference's nearest gallery neighbour is rarely its target (CIRR-like), and its
    nearest neighbours are rarely ground truths (CIRCO-like)."""
    from zscir.world.generate import _pixel_distance
    w = load_world(worlds[0])
    g = [(i, w.scene(i)) for i in w.cirr["gallery"]]
    hits = 0
    for q in w.cirr["queries"]:
        ref = w.scene(q["reference"])
        nn = min((x for x in g if x[0] != q["reference"]), key=lambda x: (_pixel_distance(ref, x[1]), x[0]))[0]
        hits += nn == q["target"]
    assert hits / len(w.cirr["queries"]) <= 0.3
    g = [(i, w.scene(i)) for i in w.circo["gallery"]]
    frac = []
    for q in w.circo["queries"]:
        ref = w.scene(q["reference"])
        near = sorted((x for x in g if x[0] != q["reference"]), key=lambda x: (_pixel_distance(ref, x[1]), x[0]))[:5]
        frac.append(sum(x[0] in q["gt"] for x in near) / 5)
        assert w.scene(q["reference"]) not in [w.scene(x) for x in q["gt"]]
    assert sum(frac) / len(frac) <= 0.2
    assert any(len(q["gt"]) > 1 for q in w.circo["queries"])  # several valid targets


def test_named_families():
    from zscir.world.modify import NAMED_FAMILY_KINDS
    rng = random.Random(3)
    combos = set(all_combos())
    seen = set()
    for _ in range(60):
        ref = random_scene(rng, sorted(combos))
        f = random_family(rng, ref, combos, NAMED_FAMILY_KINDS)
        assert f is not None and f.kind in NAMED_FAMILY_KINDS
        seen.add(f.kind)
        mem = f.members(combos)
        assert len(mem) >= 2 and all(m.is_valid() and m != ref for m in mem) and not f.contains(ref, combos)
        text = f.text(random.Random(0))
        assert f.value in text  # the modification names the concept the targets share
        if f.kind == "swap_colour":
            assert all(any(o.colour == f.value and o.pos == f.obj.pos for o in m.objects) for m in mem)
        if f.kind == "swap_shape":
            assert all(any(o.shape == f.value and o.pos == f.obj.pos for o in m.objects) for m in mem)
    assert seen == set(NAMED_FAMILY_KINDS)


def test_cir_train_shares_references(worlds):
    """Training triplets are shaped like the CIRR-like protocol: several targets per reference (the demo picks
    Slerp's alpha on them), each a change the text names (no removals)."""
    w = load_world(worlds[0])
    refs = {t["reference"] for t in w.cir_train}
    assert len(refs) <= len(w.cir_train) / 2
    for t in w.cir_train:
        assert len(w.scene(t["target"]).objects) >= len(w.scene(t["reference"]).objects)
        # the reference's twins (the same scene drawn again) are every triplet's negatives, as in the evaluation
        assert t["negatives"] and all(w.scene(n) == w.scene(t["reference"]) and n != t["reference"]
                                      for n in t["negatives"])


def test_modification_texts_name_the_new_state():
    from zscir.world.modify import Mod
    from zscir.world.scene import Obj
    s = Scene((Obj("circle", "red", "small", "top left"), Obj("star", "blue", "large", "centre")), "white")
    rng = random.Random(0)
    for _ in range(20):
        t = Mod("colour", s.objects[0], "green").text(rng, s)
        assert "green" in t and "red" not in t, t
        t = Mod("shape", s.objects[0], "cross").text(rng, s)
        assert "cross" in t and "circle" not in t, t


def test_over_changes_keep_what_the_text_says():
    """A target's over-change (the text's decoy in the CIRR-like gallery and subset) applies one more change
    that leaves the target's change in place: the new state of the changed object, the added object or the new
    background is still there."""
    from zscir.world.generate import _INTERNAL_SIZES, _Builder
    b = _Builder(5, _INTERNAL_SIZES["tiny"])
    combos = set(all_combos())
    found = 0
    for _ in range(200):
        ref = random_scene(b.rng, sorted(combos))
        m = b._target_mod(ref, combos, {ref.key()}, False)
        if m is None:
            continue
        oc = b._over_change(ref, m, combos, {ref.key(), m.apply(ref).key()})
        if oc is None:
            continue
        over, extra = oc
        found += 1
        target = m.apply(ref)
        assert over not in (ref, target) and extra.apply(target) == over
        assert extra.kind not in {x.kind for x in (m.mods if isinstance(m, Compound) else (m,))}
        changed = set(target.objects) - set(ref.objects)  # what the text describes: new or changed objects
        assert changed <= set(over.objects), (m, extra)
        if target.background != ref.background:
            assert over.background == target.background
    assert found >= 150


def test_cirr_subsets_hold_the_over_change(worlds):
    """Most CIRR-like subsets hold, besides the target, a copy that the text alone cannot tell from it: one
    more change away from the reference than the target is."""
    w = load_world(worlds[0])
    with_decoy = 0
    for q in w.cirr["queries"]:
        ref, t = w.scene(q["reference"]), w.scene(q["target"])
        changed = set(t.objects) - set(ref.objects)
        others = [w.scene(m) for m in q["members"] if m not in (q["reference"], q["target"])]
        with_decoy += any(changed <= set(o.objects) and (t.background == ref.background or o.background == t.background)
                          and _near_copy(t, o) for o in others)
    assert with_decoy >= 0.6 * len(w.cirr["queries"])
