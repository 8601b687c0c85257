"""Synthetic CIR triplets from image-caption pairs: the target is the nearest image to the edited caption,
kept above the floor, the kept fraction reported; the file's paths are relative to it and read back."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datalayer_helpers import write_pairs_csv, write_shards

from zscir.cli import main
from zscir.data import load_location, make_cir_triplets, open_source, read_cir_triplets
from zscir.errors import InputError
from zscir.train.triplets import generate_triplets
from zscir_fakes import make


def edit(caps, k, seed):
    return generate_triplets(caps, per_caption=k, seed=seed)


def test_targets_are_nearest_images_and_floor_sets_kept_fraction(tmp_path):
    bb = make()
    write_shards(tmp_path / "shards", 2, 10)
    src = open_source(str(tmp_path / "shards"))
    out = tmp_path / "t" / "triplets.jsonl"
    everything = make_cir_triplets(bb, src, out, edit, min_similarity=-1.0, min_margin=None,
                                   cache=tmp_path / "cache")
    assert everything.kept == everything.candidates > 0 and everything.kept_fraction == 1.0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == everything.kept
    # independent check of the target choice: argmax over images of cos(image, edited caption), reference excluded
    recs = list(src)
    with torch.inference_mode():
        imgs = bb.encode_image(bb.preprocess([r.load() for r in recs]))
    loc_index = {r.location: i for i, r in enumerate(recs)}
    sims = []
    for row in rows[:8]:
        assert not row["reference"].startswith("/") and row["reference"].startswith("../shards/")
        ref = loc_index[os.path.normpath(out.parent / row["reference"])]
        with torch.inference_mode():
            s = imgs @ F.normalize(bb.encode_text([row["target_caption"]]), dim=-1)[0]
        s = s.clone()
        s[ref] = -float("inf")
        best = int(s.argmax())
        assert row["target"] == f"../shards/{recs[best].location.rsplit('/', 1)[1]}"
        assert abs(row["similarity"] - float(s[best])) < 2e-2  # float16 cache
        sims.append(row["similarity"])
    floor = float(np.median([r["similarity"] for r in rows]))
    some = make_cir_triplets(bb, src, out, edit, min_similarity=floor, min_margin=None, cache=tmp_path / "cache")
    want = sum(r["similarity"] >= floor - 1e-3 for r in rows)
    assert abs(some.kept - want) <= 1 and 0 < some.kept_fraction < 1
    assert some.below_floor == some.candidates - some.kept
    back = read_cir_triplets(out)
    assert len(back) == some.kept
    assert load_location(back[0].reference).size == (32, 32) and load_location(back[0].target).size == (32, 32)
    assert all(t.reference != t.target for t in back)
    with pytest.raises(InputError, match=r"no edit clears the similarity floor 1.01 \(best "):
        make_cir_triplets(bb, src, tmp_path / "none.jsonl", edit, min_similarity=1.01, cache=tmp_path / "cache")
    assert not (tmp_path / "none.jsonl").exists()
    with pytest.raises(InputError, match=r"below the margin 2; lower --min-margin"):
        make_cir_triplets(bb, src, tmp_path / "none.jsonl", edit, min_similarity=-1, min_margin=2.0,
                          cache=tmp_path / "cache")
    margin0 = make_cir_triplets(bb, src, tmp_path / "m.jsonl", edit, min_similarity=-1, min_margin=0.0,
                                cache=tmp_path / "cache")
    assert margin0.kept + margin0.below_margin == margin0.candidates and margin0.below_margin > 0


def test_cli_make_triplets_reports_kept_fraction(tmp_path, capsys):
    p = write_pairs_csv(tmp_path, 12)
    out = tmp_path / "cir.jsonl"
    rc = main(["data", "make-triplets", str(p), "--out", str(out), "--backbone", "py:zscir_fakes:make",
               "--min-similarity", "-1", "--cache", str(tmp_path / "cache")])
    assert rc == 0
    line = capsys.readouterr().out
    assert "kept" in line and "%" in line
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all(r["reference"].startswith("img/") for r in rows)
    # refusing to overwrite something that is not a triplets file
    precious = tmp_path / "notes.jsonl"
    precious.write_text("my notes\n")
    assert main(["data", "make-triplets", str(p), "--out", str(precious), "--backbone", "py:zscir_fakes:make"]) == 2
    assert precious.read_text() == "my notes\n"
    # a source without captions is refused with one line
    assert main(["data", "make-triplets", str(tmp_path / "img"), "--out", str(tmp_path / "x.jsonl"),
                 "--backbone", "py:zscir_fakes:make"]) == 2
    assert "has no captions" in capsys.readouterr().err


def test_read_cir_triplets_missing_images(tmp_path):
    p = write_pairs_csv(tmp_path, 3)
    f = tmp_path / "t.jsonl"
    rows = [{"reference": "img/000.png", "modification": "make it blue", "target": "img/001.png"},
            {"reference": "img/000.png", "modification": "x", "target": "img/404.png"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"1 of 2 triplets name a missing image .*line 2: img/404.png"):
        read_cir_triplets(f)
    got = read_cir_triplets(f, max_missing=0.5)
    assert len(got) == 1 and got[0].target == str(p.parent / "img" / "001.png")
    f.write_text('{"reference": "img/000.png", "modification": "", "target": "img/001.png"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:1: 'modification' must be a non-empty string"):
        read_cir_triplets(f)


def test_extra_target_pool(tmp_path):
    from zscir_fakes import write_gallery

    bb = make()
    write_shards(tmp_path / "shards", 1, 10)
    src = open_source(str(tmp_path / "shards"))
    kw = dict(min_similarity=-1.0, cache=tmp_path / "cache")
    alone = make_cir_triplets(bb, src, tmp_path / "a.jsonl", edit, **kw)
    # the pairs' own images as the extra pool: the same triplets (the reference is still never its own target)
    same = make_cir_triplets(bb, src, tmp_path / "b.jsonl", edit, targets=open_source(str(tmp_path / "shards")), **kw)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert same.kept == alone.kept and same.images == 20
    write_gallery(tmp_path / "more", 30)
    more = make_cir_triplets(bb, src, tmp_path / "c.jsonl", edit, targets=open_source(str(tmp_path / "more")), **kw)
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert more.images == 40 and any(r["target"].startswith("more/") for r in rows)
    old = {(r["reference"], r["modification"]): r["similarity"] for r in
           map(json.loads, (tmp_path / "a.jsonl").read_text().splitlines())}
    for r in rows:  # a larger pool can only find a closer target
        assert r["similarity"] >= old[(r["reference"], r["modification"])] - 1e-6
        assert r["reference"] != r["target"]
