import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index_helpers import SPEC, contents
from zscir.errors import CheckpointError, InputError
from zscir.index import GalleryIndex, Manifest
from zscir.index.reader import read_source
from zscir.index.runner import build_index, index_lock
from zscir.index.search import Searcher
from zscir_fakes import write_gallery


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    write_gallery(root / "g", 30)
    (root / "g" / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root / "g"


@pytest.fixture(scope="module")
def index(gallery, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(gallery, out, SPEC, shard_size=8, batch_size=4, progress=False)
    return out


def test_manifest_records_backbone_shards_and_checksums(index):
    man = Manifest.load(index)
    assert man.complete and man.count == 30 and man.dim == 32 and man.dtype == "float16"
    assert man.backbone_spec == SPEC and man.backbone_fingerprint and man.preprocess_digest
    assert len(man.shards) == 4 and all(len(s.sha256) == 64 and len(s.meta_sha256) == 64 for s in man.shards)
    assert man.faiss.factory == "Flat" and man.faiss.metric == "ip"
    ids, emb = contents(index)
    assert len(set(ids)) == 30 and emb.dtype == np.float16
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=1e-2)


def test_unreadable_file_is_reported_not_fatal(index):
    rows = [json.loads(line) for line in (index / "failures.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["part0/broken.png"] and "unreadable" in rows[0]["error"]


def test_complete_index_is_not_rebuilt_without_add(gallery, index):
    with pytest.raises(InputError, match="--add"):
        build_index(gallery, index, SPEC, progress=False)


@pytest.mark.slow
def test_kill_midway_then_resume_equals_uninterrupted(tmp_path, gallery, index):
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "zscir", "index", str(gallery), "--out", str(out), "--backbone",
           "py:zscir_fakes:make_slow", "--shard-size", "8", "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            try:
                if len(Manifest.load(out).shards) >= 2:
                    break
            except CheckpointError:
                pass
            assert proc.poll() is None, "the run finished before it could be interrupted"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = Manifest.load(out)
    assert not partial.complete and 2 <= len(partial.shards) < 4
    with pytest.raises(CheckpointError, match="incomplete"):
        GalleryIndex(out)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ids_a, emb_a = contents(index)
    ids_b, emb_b = contents(out)
    assert ids_a == ids_b  # no duplicate, no loss, same order
    assert np.array_equal(emb_a, emb_b)
    assert [s.sha256 for s in Manifest.load(out).shards] == [s.sha256 for s in Manifest.load(index).shards]


def test_add_appends_without_duplicates(tmp_path):
    write_gallery(tmp_path / "g", 24)
    first = tmp_path / "first.csv"
    first.write_text("path,id,label\n" + "".join(f"{p},{p.stem},x{i}\n" for i, p in
                                                 enumerate(sorted((tmp_path / "g").rglob("*.*"))[:10])))
    out = tmp_path / "idx"
    build_index(first, out, SPEC, shard_size=4, progress=False)
    assert Manifest.load(out).count == 10
    everything = tmp_path / "all.jsonl"
    everything.write_text("".join(json.dumps({"path": str(p), "id": p.stem}) + "\n"
                                  for p in sorted((tmp_path / "g").rglob("*.*"))))
    man = build_index(everything, out, add=True, backbone=SPEC, shard_size=4, progress=False)
    ids, _ = contents(out)
    assert man.count == 24 and len(set(ids)) == 24
    idx = GalleryIndex(out)
    assert idx.items[0]["meta"] == {"label": "x0"} and len(idx) == 24


def test_concurrent_add_is_locked(tmp_path, gallery, index):
    with index_lock(index):
        with pytest.raises(CheckpointError, match="lock"):
            build_index(gallery, index, SPEC, add=True, progress=False)


def test_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        read_source(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no image files"):
        read_source(tmp_path / "texts")
    (tmp_path / "fake").mkdir()
    for i in range(3):
        (tmp_path / "fake" / f"{i}.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="none of the 3"):
        build_index(tmp_path / "fake", tmp_path / "out", SPEC, progress=False)
    assert len((tmp_path / "out" / "failures.jsonl").read_text().splitlines()) == 3
    with pytest.raises(InputError, match="no such"):
        read_source(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    write_gallery(tmp_path / "g", 3)
    with pytest.raises(InputError, match="not a zscir index"):
        build_index(tmp_path / "g", tmp_path / "junk", SPEC, progress=False)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_older_format_is_refused(tmp_path, index):
    out = _copy(index, tmp_path / "old")
    d = json.loads((out / "manifest.json").read_text())
    d["format_version"] = 0
    (out / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="format version 0"):
        GalleryIndex(out)


def test_truncated_shard_is_refused(tmp_path, gallery, index):
    out = _copy(index, tmp_path / "trunc")
    shard = out / "shards" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="checksum"):
        GalleryIndex(out)
    with pytest.raises(CheckpointError, match="checksum"):  # and a resume/--add does not build on it
        build_index(gallery, out, SPEC, add=True, progress=False)


def test_other_backbone_is_refused(index):
    with pytest.raises(CheckpointError, match="fingerprint"):
        Searcher.open(index, backbone="py:zscir_fakes:make_other")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "IVF2,Flat"])
@pytest.mark.slow
def test_index_kinds_find_the_exact_neighbours(tmp_path, gallery, kind):
    out = tmp_path / kind.replace(",", "_")
    man = build_index(gallery, out, SPEC, kind=kind, shard_size=16, progress=False)
    s = Searcher.open(out, backbone=SPEC)
    ids = [it["id"] for it in s.index.items]
    assert man.faiss.count == 30
    from zscir.utils.io import load_image

    img = load_image(s.index.items[5]["path"])
    hits = s.search([img], None, method="image", k=5)
    assert hits[0].id == ids[5] and hits[0].score == pytest.approx(1.0, abs=1e-2)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    excl = s.search([img], None, method="image", k=5, exclude_ids=[ids[5]])
    assert ids[5] not in [h.id for h in excl] and len(excl) == 5


def test_search_cli_table_and_json(index, gallery, capsys):
    from zscir.cli import main

    ref = str(next(gallery.rglob("img0003.png")))
    assert main(["search", str(index), "--backbone", SPEC, "--image", ref, "--text", "a red circle", "-k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["results"]) == 3 and doc["results"][0]["rank"] == 1
    assert {"score", "id", "path"} <= set(doc["results"][0])
    assert main(["search", str(index), "--backbone", SPEC, "--image", ref, "--image", ref, "--text", "red", "--method", "slerp",
                 "--alpha", "0.5", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "score", "path"] and len(out) == 3
    assert main(["search", str(index), "--backbone", SPEC, "--image", ref, "--text", "x", "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
