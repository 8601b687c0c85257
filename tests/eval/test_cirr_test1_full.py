"""The official CIRR test1 layout at its real size (4,148 pairids, 2,315 gallery images), including the one
blank caption of the official file (pairid 27098, caption " "): `zscir eval --split test` writes a complete,
validated server submission covering every pairid, without --allow-incomplete, and counts the blank query."""

import json
import random

import pytest
from bench_fixtures import _img, _json

from zscir.cli import main
from zscir.datasets import load_cirr
from zscir.eval import submission as sub

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)

N_IMAGES, N_QUERIES, BLANK = 2315, 4148, "27098"


def make_cirr_test1(root):
    names = [f"test1-{i}-{i % 3}-img{i % 2}" for i in range(N_IMAGES)]
    for i, n in enumerate(names):
        _img(root / "test1" / f"{n}.png", i, size=(8, 8))
    _json(root / "cirr" / "image_splits" / "split.rc2.test1.json", {n: f"./test1/{n}.png" for n in names})
    rng = random.Random(0)
    entries = []
    pairids = [str(27000 + k) for k in range(N_QUERIES)]
    for k, pid in enumerate(pairids):
        start = (6 * k) % (N_IMAGES - 6)
        members = names[start:start + 6]
        entries.append({"pairid": int(pid), "reference": members[rng.randrange(6)],
                        "caption": " " if pid == BLANK else f"make it {['red', 'blue', 'big'][k % 3]}",
                        "img_set": {"id": k, "members": members, "reference_rank": 3}})
    _json(root / "cirr" / "captions" / "cap.rc2.test1.json", entries)
    return root


def test_official_cirr_test1_layout_gives_a_complete_validated_submission(tmp_path, capsys):
    root = make_cirr_test1(tmp_path / "CIRR")
    out = tmp_path / "r.json"
    rc = main(["eval", "--benchmark", "cirr", "--root", str(root), "--split", "test", "--backbone", "testfake:1",
               "--method", "slerp", "--no-cache", "--batch-size", "512", "--out", str(out)],
              commands=("zscir.eval.cli",))
    text, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and doc["blank_modifications"] == 1
    assert doc["results"]["cirr"]["data"]["blank_modification_queries"] == [BLANK]
    recall = json.loads((tmp_path / "cirr_test1_recall.json").read_text())
    subset = json.loads((tmp_path / "cirr_test1_recall_subset.json").read_text())
    s = load_cirr(root, "test1", check_images=False)
    assert set(recall) - {"version", "metric"} == {q.qid for q in s.queries} and len(s.queries) == N_QUERIES
    assert BLANK in recall and len(recall[BLANK]) == 50
    assert sub.validate_cirr(recall, subset, {q.qid: q.reference for q in s.queries},
                             {q.qid: q.members for q in s.queries}, [g.id for g in s.gallery]) == []
