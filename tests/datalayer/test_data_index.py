"""`zscir index` reads through the data layer (WebDataset shards, listings with custom columns) and its
`--out` never touches a folder that is not an index; the shared output-folder rule of utils.io."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datalayer_helpers import caption, write_pairs_csv, write_shards

from index_helpers import SPEC, contents
from zscir.cli import main
from zscir.data import open_source
from zscir.errors import InputError
from zscir.index.store import GalleryIndex
from zscir.utils.io import check_output_dir, safe_output_dir
from zscir_fakes import make


def test_index_webdataset_brace_pattern_end_to_end(tmp_path, monkeypatch, capsys):
    write_shards(tmp_path / "shards", 2, 5, corrupt={7})
    monkeypatch.chdir(tmp_path)
    rc = main(["index", "shards/{00000..00001}.tar", "--out", "idx", "--backbone", SPEC, "--no-progress",
               "--shard-size", "4"])
    assert rc == 0
    assert "9 images" in capsys.readouterr().out
    ids, emb = contents(tmp_path / "idx")
    assert ids == [r.key for r in open_source(str(tmp_path / "shards")) if not r.key.endswith("10007")]
    failures = (tmp_path / "idx" / "failures.jsonl").read_text()
    assert "00001/000010007" in failures and "unreadable image" in failures
    g = GalleryIndex(tmp_path / "idx")
    assert g.items[0]["meta"]["caption"] == caption(0) and g.items[0]["path"].endswith("00000.tar#000000000.jpg")
    bb = make()
    rec = next(iter(open_source(str(tmp_path / "shards" / "00000.tar"))))
    with torch.inference_mode():
        want = bb.encode_image(bb.preprocess([rec.load()])).numpy()[0]
    np.testing.assert_allclose(emb[0].astype(np.float32), want, atol=2e-3)  # float16 shards
    # a gallery image inside a tar as the reference of a search
    assert main(["search", "idx", "--gallery-id", "00000/000000001", "--text", "but blue", "-k", "3", "--json",
                 "--backbone", SPEC]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and "00000/000000001" not in [h["id"] for h in hits]


def test_index_csv_with_named_columns(tmp_path, capsys):
    p = write_pairs_csv(tmp_path, 4, image_col="filepath", caption_col="title")
    p.write_text(p.read_text().replace("filepath", "picture"))  # not a default column name
    assert main(["index", str(p), "--out", str(tmp_path / "idx"), "--backbone", SPEC, "--no-progress"]) == 2
    assert "--image-column" in capsys.readouterr().err
    assert main(["index", str(p), "--out", str(tmp_path / "idx"), "--backbone", SPEC, "--no-progress",
                 "--image-column", "picture", "--caption-column", "title"]) == 0
    ids, _ = contents(tmp_path / "idx")
    assert ids == [f"img/{i:03d}.png" for i in range(4)]
    assert GalleryIndex(tmp_path / "idx").items[2]["meta"]["title"] == f"{caption(2)}, nice"


def test_index_out_refuses_foreign_folders_and_leaves_them_untouched(tmp_path, monkeypatch, capsys):
    write_shards(tmp_path / "shards", 1, 2)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    assert main(["index", str(tmp_path / "shards"), "--out", str(victim), "--backbone", SPEC, "--no-progress"]) == 2
    assert "not a zscir index" in capsys.readouterr().err
    assert [p.name for p in victim.iterdir()] == ["thesis.txt"] and (victim / "thesis.txt").read_text() == "precious"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".git").write_text("x")
    assert main(["index", str(tmp_path / "shards"), "--out", str(hidden), "--backbone", SPEC, "--no-progress"]) == 2
    monkeypatch.chdir(victim)
    assert main(["index", str(tmp_path / "shards"), "--out", ".", "--backbone", SPEC, "--no-progress"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.txt"]
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["index", str(tmp_path / "shards"), "--out", str(f), "--backbone", SPEC, "--no-progress"]) == 2
    assert f.read_text() == "x"


def _ours(p):
    return (p / "kind.txt").is_file() and (p / "kind.txt").read_text() == "ours"


def test_safe_output_dir_rule(tmp_path):
    out = tmp_path / "ckpt"
    with safe_output_dir(out, _ours, "a test checkpoint") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".ckpt.")
        (tmp / "kind.txt").write_text("ours")
        (tmp / "w.bin").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["kind.txt", "w.bin"]
    with safe_output_dir(out, _ours, "a test checkpoint") as tmp:  # a previous output of the same kind: replaced
        (tmp / "kind.txt").write_text("ours")
    assert sorted(p.name for p in out.iterdir()) == ["kind.txt"]
    with pytest.raises(RuntimeError):  # a failed write leaves the previous output as it was
        with safe_output_dir(out, _ours, "a test checkpoint") as tmp:
            raise RuntimeError("crash")
    assert (out / "kind.txt").read_text() == "ours" and not list(tmp_path.glob(".ckpt.*"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    with pytest.raises(InputError, match=r"victim: a non-empty folder that is not a test checkpoint"):
        with safe_output_dir(victim, _ours, "a test checkpoint"):
            pytest.fail("must refuse before any work")
    assert (victim / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", _ours, "x") == tmp_path / "empty"
    for bad in ("/", ".", str(Path.cwd().parent), str(Path.home())):  # even when they look like ours
        with pytest.raises(InputError, match="refusing"):
            check_output_dir(bad, lambda p: True, "x")
