"""Indexes: tampered manifests and shards, code named by a folder, id collisions, killed and concurrent
indexing, bad --kind. Each row checks the exit code, a one-line message naming the culprit, and that the
index on disk was not changed (nothing lost or half-written)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_helpers import no_temporaries, one_line_error, run_cli, run_zscir

from index_helpers import SPEC, contents
from zscir.errors import CheckpointError
from zscir.index import GalleryIndex, Manifest
from zscir.index.runner import build_index, index_lock
from zscir.index.search import Searcher
from zscir_fakes import write_gallery


def _edit_manifest(folder: Path, fn) -> None:
    p = folder / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _set(path: str, value):
    def fn(d):
        *parents, last = path.split(".")
        node = d
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return fn


# (id, manifest edit, words of the error) -- opening the index must refuse it with a CheckpointError
MANIFEST_ROWS = [
    # already held
    ("format-version-0", _set("format_version", 0), "format version 0"),
    ("not-a-manifest", lambda d: d.update(format="other"), "not a zscir index manifest"),
    # issue 15, item 9: by type, not with a traceback
    ("faiss-rerank-a-string", _set("faiss.rerank", "4"), "faiss.rerank: expected int"),
    ("faiss-search-invalid", _set("faiss.search", "nprobe=abc"), "faiss: search='nprobe=abc'"),
    ("faiss-search-unknown-param", _set("faiss.search", "nprobe=4"), "faiss.search"),
    ("faiss-file-traversal", _set("faiss.file", "../../etc/passwd"), "faiss: file='../../etc/passwd'"),
    ("faiss-a-list", _set("faiss", []), "faiss: expected an object"),
    ("shards-a-string", _set("shards", "many"), "shards: expected a list"),
    ("shard-count-a-string", _set("shards.0.count", "8"), "shards[0].count: expected int"),
    ("shard-name-traversal", _set("shards.0.name", "../../x"), "shards[0]"),
    ("dim-a-float", _set("dim", 32.5), "dim: expected int"),
    ("missing-field", lambda d: d.pop("dim"), "dim"),
    ("not-utf8", None, "corrupt manifest"),
]


@pytest.mark.parametrize("name,edit,words", MANIFEST_ROWS, ids=[r[0] for r in MANIFEST_ROWS])
def test_tampered_manifest_rows(index_copy, capsys, ref_png, name, edit, words):
    if edit is None:
        (index_copy / "manifest.json").write_bytes(b'{"format": "zscir.index", "x": "\xff\xfe"}')
    else:
        _edit_manifest(index_copy, edit)
    before = (index_copy / "manifest.json").read_bytes()
    with pytest.raises(CheckpointError, match="manifest|" + words.split(":")[0]) as e:
        GalleryIndex(index_copy)
    assert words in str(e.value)
    code, err = run_cli(capsys, "search", index_copy, "--backbone", SPEC, "--image", ref_png, "--text", "red")
    one_line_error(code, err, words)
    assert (index_copy / "manifest.json").read_bytes() == before


# --- item 1: a folder never names code to run ----------------------------------------------------------------
EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\ndef make():\n    raise SystemExit(99)\n"


@pytest.mark.parametrize("spec", ["py:os:abort", "py:code:interact", "py:evil_mod:make"])
@pytest.mark.slow
def test_manifest_naming_code_is_refused(index_copy, gallery, ref_png, tmp_path, spec):
    """`py:os:abort` in a manifest killed `zscir search` (exit 134); evil_mod.py in the index folder ran."""
    marker = tmp_path / "ran"
    (index_copy / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    _edit_manifest(index_copy, _set("backbone_spec", spec))
    res = run_zscir("search", ".", "--image", ref_png, "--text", "red", cwd=index_copy, timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr[-500:])
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "names Python code" in err[0] and f"--backbone {spec}" in err[0]
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="names Python code"):  # serve opens it the same way
        Searcher.open(index_copy)
    with pytest.raises(CheckpointError, match="names Python code"):  # and so does --add
        build_index(gallery, index_copy, "", add=True, progress=False)
    assert not marker.exists()


@pytest.mark.slow
def test_explicit_py_spec_is_not_imported_from_the_current_folder(index_copy, ref_png, tmp_path):
    """Even a spec the user types is not looked up in the current folder (python -m puts it on sys.path)."""
    marker = tmp_path / "ran"
    (index_copy / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    res = run_zscir("search", ".", "--backbone", "py:evil_mod:make", "--image", ref_png, "--text", "red",
                    cwd=index_copy, timeout=60)
    assert res.returncode == 2 and "cannot import 'evil_mod'" in res.stderr, res.stderr[-500:]
    assert not marker.exists()


# --- item 2: --add with colliding ids --------------------------------------------------------------------------
def test_add_with_colliding_ids_is_refused(tmp_path, capsys):
    write_gallery(tmp_path / "a", 6, sub=False)
    write_gallery(tmp_path / "b", 6, sub=False)  # same file names, other folder: same ids
    out = tmp_path / "idx"
    build_index(tmp_path / "a", out, SPEC, progress=False)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, "index", tmp_path / "b", "--out", out, "--add", "--backbone", SPEC, "--no-progress")
    one_line_error(code, err, "6 of its 6 image id(s) are already in the index for other files")
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    # the same folder again is a no-op, not a collision (already held)
    man = build_index(tmp_path / "a", out, SPEC, add=True, progress=False)
    assert man.count == 6 and man.complete


# --- items 4 and 9: damaged shards / faiss file ------------------------------------------------------------------
SERVE_SCRIPT = r"""
import sys, numpy as np
from pathlib import Path
from zscir.index.search import Searcher
from zscir.utils.io import load_image
idx = Path(sys.argv[1])
s = Searcher.open(idx, backbone="py:zscir_fakes:make")
img = load_image(s.index.items[4]["path"])
before = [(h.id, round(h.score, 6)) for h in s.search([img], None, "image", None, 10)]
for f in sorted((idx / "shards").glob("*.npy")) + [idx / s.index.manifest.faiss.file]:
    if sys.argv[2] == "truncate":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
    else:  # overwrite in place, same size
        with open(f, "r+b") as fh:
            fh.seek(256); fh.write(np.random.default_rng(0).bytes(max(0, f.stat().st_size - 300)))
after = [(h.id, round(h.score, 6)) for h in s.search([img], None, "image", None, 10)]
print("same" if before == after else f"changed {before} {after}")
"""


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
@pytest.mark.slow
def test_shards_damaged_while_serving(tmp_path, gallery, how):
    """Item 4: a running server memory-mapped them: SIGBUS on truncation, silent new rankings on overwrite."""
    out = tmp_path / "ivfpq"
    build_index(gallery, out, SPEC, kind="IVF2,PQ8x4", progress=False)
    script = tmp_path / "serve_sim.py"
    script.write_text(SERVE_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(out), how], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-800:])  # -7 was SIGBUS
    assert res.stdout.strip() == "same"


@pytest.mark.parametrize("target", ["shard", "faiss", "jsonl"])
def test_no_verify_on_a_truncated_file_is_a_clean_error(index_copy, capsys, ref_png, target):
    """Item 9: `--no-verify` on a truncated shard or faiss file ended in a traceback."""
    man = Manifest.load(index_copy)
    f = {"shard": index_copy / f"{man.shards[1].name}.npy", "faiss": index_copy / man.faiss.file,
         "jsonl": index_copy / f"{man.shards[1].name}.jsonl"}[target]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2] + (b"\xff" if target == "jsonl" else b""))
    code, err = run_cli(capsys, "search", index_copy, "--backbone", SPEC, "--no-verify", "--image", ref_png,
                        "--text", "red")
    one_line_error(code, err, f.name)
    code, err = run_cli(capsys, "search", index_copy, "--backbone", SPEC, "--image", ref_png, "--text", "red")
    one_line_error(code, err, "checksum")  # (already held) verified: refused by checksum


# --- item 9: --kind checked before embedding -------------------------------------------------------------------
@pytest.mark.parametrize("kind,words", [("IVF4096,PQ8", "4096 IVF lists need at least 4096 images"),
                                        ("IVF2,PQ8", "PQ codebooks of 256 centroids"),
                                        ("IVF2,PQ7", "multiple of the number of subquantizers"),
                                        ("bogus", "could not parse index string bogus")])
def test_bad_kind_is_refused_before_embedding(tmp_path, capsys, gallery, kind, words):
    out = tmp_path / "idx"
    code, err = run_cli(capsys, "index", gallery, "--out", out, "--backbone", "py:zscir_fakes:make_slow",
                        "--kind", kind, "--no-progress")
    one_line_error(code, err, words)
    assert not (out / "manifest.json").exists() and not (out / "shards").exists()  # nothing embedded


def test_k_is_bounded_by_the_index_size(built_index, capsys, ref_png):
    """Item 9: `search -k 1000000000` ran out of memory."""
    code = run_cli(capsys, "search", built_index, "--backbone", SPEC, "--image", ref_png, "--text", "red",
                   "-k", "1000000000", "--json")[0]
    assert code == 0
    code, err = run_cli(capsys, "search", built_index, "--backbone", SPEC, "--image", ref_png, "--text", "red",
                        "-k", "0")
    one_line_error(code, err, "-k 0")


# --- held: wrong backbone, tampered shard, concurrent indexing -----------------------------------------------
def test_wrong_backbone_is_refused(built_index, capsys, ref_png):
    code, err = run_cli(capsys, "search", built_index, "--backbone", "py:zscir_fakes:make_other",
                        "--image", ref_png, "--text", "red")
    one_line_error(code, err, "refusing to mix embedding spaces")


def test_tampered_shard_is_refused(index_copy, capsys, ref_png, gallery):
    f = index_copy / "shards" / "shard-00000.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    code, err = run_cli(capsys, "search", index_copy, "--backbone", SPEC, "--image", ref_png, "--text", "red")
    one_line_error(code, err, "shard-00000.npy: checksum mismatch")
    code, err = run_cli(capsys, "index", gallery, "--out", index_copy, "--add", "--backbone", SPEC, "--no-progress")
    one_line_error(code, err, "checksum mismatch")


def test_concurrent_indexing_is_locked(index_copy, gallery):
    with index_lock(index_copy):
        with pytest.raises(CheckpointError, match="lock held"):
            build_index(gallery, index_copy, SPEC, add=True, progress=False)


# --- item 10: an --add in progress (or killed) leaves the complete index searchable -----------------------------
@pytest.mark.slow
def test_add_in_progress_keeps_the_complete_index_searchable(tmp_path, gallery, ref_png, capsys):
    out = tmp_path / "idx"
    build_index(gallery / "part0", out, SPEC, shard_size=4, progress=False)
    first = Manifest.load(out)
    cmd = [sys.executable, "-m", "zscir", "index", str(gallery / "part1"), "--out", str(out), "--add",
           "--backbone", "py:zscir_fakes:make_slow", "--shard-size", "2", "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(Manifest.load(out).shards) < len(first.shards) + 1:
            assert proc.poll() is None, "the --add finished before it could be observed"
            time.sleep(0.01)
        # while it runs: the index as it was is searchable (it was refused as "interrupted")
        idx = GalleryIndex(out)
        assert len(idx) == first.count and idx.pending >= 2
        code = run_cli(capsys, "search", out, "--backbone", SPEC, "--image", ref_png, "--text", "red", "-k", "3")[0]
        assert code == 0
        proc.send_signal(signal.SIGKILL)  # and killed: still searchable, then resumable (already held)
    finally:
        proc.wait()
    assert len(GalleryIndex(out)) == first.count
    man = build_index(gallery / "part1", out, SPEC, add=True, shard_size=2, progress=False)
    ids, _ = contents(out)
    assert man.complete and man.count == 20 and len(set(ids)) == 20
    no_temporaries(out)


def test_outputs_follow_the_umask(tmp_path, gallery):
    """Item 10: every output was created 0600 (folders 0700) whatever the umask."""
    old = os.umask(0o022)
    try:
        build_index(gallery / "part2", tmp_path / "idx", SPEC, progress=False)
    finally:
        os.umask(old)
    for f in (tmp_path / "idx" / "manifest.json", tmp_path / "idx" / "shards" / "shard-00000.npy"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, (f, oct(f.stat().st_mode))
    old = os.umask(0o077)
    try:
        from zscir.utils.io import write_text

        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
