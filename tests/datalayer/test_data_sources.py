"""Sources: every layout users have is read lazily, problems are reported (never a crash), errors name the
file and line."""

from __future__ import annotations

import os
import tarfile

import pytest
from datalayer_helpers import caption, write_pairs_csv, write_pairs_jsonl, write_shards

from zscir.data import (
    FolderSource,
    GlobSource,
    ListingSource,
    TarSource,
    expand_braces,
    iter_texts,
    load_location,
    open_source,
    read_location,
)
from zscir.errors import InputError
from zscir_fakes import write_gallery


def test_brace_expansion_keeps_padding_and_multiplies():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InputError, match="cannot expand"):
        expand_braces("x{abc}.tar")


def test_webdataset_shards_img2dataset_layout(tmp_path):
    write_shards(tmp_path / "shards", 2, 4)
    src = open_source(str(tmp_path / "shards/{00000..00001}.tar"))
    assert isinstance(src, TarSource) and len(src.units()) == 2
    recs = list(src)
    assert [r.key for r in recs[:2]] == ["00000/000000000", "00000/000000001"]
    assert [r.caption for r in recs] == [caption(i) for i in range(8)]
    assert recs[5].meta["n"] == 5 and recs[5].meta["url"].endswith("/5.jpg")
    # jpg, png and webp members all decode; the location re-opens the same bytes later (random access)
    assert {r.location.rsplit(".", 1)[1] for r in recs} == {"jpg", "png", "webp"}
    for r in recs[:3]:
        assert read_location(r.location) == r.data
        assert load_location(r.location).size == r.load().size == (32, 32)
    # the same shards as a folder of tars, a single tar, a glob, a list of patterns
    assert [r.key for r in open_source(str(tmp_path / "shards"))] == [r.key for r in recs]
    assert len(list(open_source(str(tmp_path / "shards" / "00001.tar")))) == 4
    assert len(list(open_source(str(tmp_path / "shards" / "*.tar")))) == 8
    assert len(list(open_source([str(tmp_path / "shards/{00000..00001}.tar")]))) == 8
    assert not src.failures


def test_missing_shard_in_pattern_is_named(tmp_path):
    write_shards(tmp_path / "shards", 2, 1)
    with pytest.raises(InputError, match=r"1 shard\(s\) not found: .*00002.tar"):
        open_source(str(tmp_path / "shards/{00000..00002}.tar"))


def test_truncated_tar_keeps_what_was_read_and_reports_the_rest(tmp_path):
    write_shards(tmp_path / "shards", 1, 6)
    tar = tmp_path / "shards" / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    src = open_source(str(tar))
    recs = list(src)
    assert 0 < len(recs) < 6
    assert len(src.failures) == 1 and "truncated or corrupt tar" in src.failures[0]["error"]


def test_tar_group_without_image_is_a_failure(tmp_path):
    import io

    with tarfile.open(tmp_path / "x.tar", "w") as tf:
        for name, data in (("a.txt", b"caption only"), ("b.png", b"\x89PNG..."), ("b.txt", b"cap b")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    src = open_source(str(tmp_path / "x.tar"))
    assert [r.key for r in src] == ["x/b"]
    assert src.failures[0]["id"] == "x/a" and "no image member" in src.failures[0]["error"]


def test_folder_recursive_skips_dotfiles_reports_links_and_non_utf8_names(tmp_path):
    root = tmp_path / "g"
    write_gallery(root, 6)
    (root / ".hidden").mkdir()
    write_gallery(root / ".hidden", 1, sub=False)
    (root / "notes.txt").write_text("x")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.symlink(root, root / "part0" / "loop")  # a folder that contains itself
    bad = os.fsencode(str(root)) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(bad, "wb") as f:
        f.write((root / "part0" / "img0000.jpg").read_bytes())
    src = open_source(str(root))
    assert isinstance(src, FolderSource)
    keys = [r.key for r in src]
    assert keys == sorted(keys) and len(keys) == 6 and all(k.startswith("part") for k in keys)
    errors = {f["id"]: f["error"] for f in src.failures}
    assert "dangling symbolic link" in errors["dangling.png"]
    assert "loop" in errors["part0/loop"]
    assert any("not valid UTF-8" in e for e in errors.values())
    assert all(f["id"].encode("utf-8") for f in src.failures)  # printable: JSON-safe
    list(src)  # a second pass (another epoch) does not report the same problems twice
    assert len(src.failures) == 3


def test_glob_source(tmp_path):
    write_gallery(tmp_path / "g", 6)
    src = open_source(str(tmp_path / "g" / "**" / "*.png"))
    assert isinstance(src, GlobSource)
    assert len(list(src)) == 4


def test_open_clip_csv_with_custom_columns(tmp_path):
    p = write_pairs_csv(tmp_path, 5, image_col="filepath", caption_col="title")
    src = open_source(str(p), image_column="filepath", caption_column="title")
    assert isinstance(src, ListingSource)
    recs = list(src)
    assert recs[1].caption == f"{caption(1)}, nice"
    assert recs[1].location == str(tmp_path / "img" / "001.png")  # relative to the listing
    assert recs[1].meta["extra"] == "1"
    assert recs[1].load().size == (32, 32)
    # the columns are also found without being named (filepath and title are among the defaults)
    assert [r.caption for r in open_source(str(p))] == [r.caption for r in recs]
    with pytest.raises(InputError, match=r"no column 'image' \(--image-column\); the columns are filepath, title"):
        open_source(str(p), image_column="image")


def test_jsonl_with_custom_columns(tmp_path):
    p = write_pairs_jsonl(tmp_path, 4, image_col="picture", caption_col="alt")
    recs = list(open_source(str(p), image_column="picture", caption_column="alt"))
    assert [r.caption for r in recs] == [caption(i) for i in range(4)]
    assert recs[0].load().size == (32, 32)
    assert [r.caption for r in open_source(str(p), image_column="picture")] == [None] * 4  # 'alt' is not a default
    with pytest.raises(InputError, match="no image path column .* name it with --image-column"):
        open_source(str(p), caption_column="alt")
    p.write_text(p.read_text() + "{broken\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:5: not valid JSON"):
        list(open_source(str(p), image_column="picture"))


def test_non_utf8_csv_is_one_error_naming_the_line(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"filepath,title\na.png,ok\nb.png,caf\xe9\n")
    with pytest.raises(InputError, match=r"latin.csv:3: not UTF-8 text \(byte 0xe9 at column 10\)"):
        list(open_source(str(p)))


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="no such folder or file"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="matches no file"):
        open_source(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(InputError, match="expected a folder"):
        open_source(str(tmp_path / "x.bin"))


def test_iter_texts_reads_by_column_and_refuses_jsonl_named_txt(tmp_path):
    p = write_pairs_csv(tmp_path, 3)
    assert list(iter_texts(p, "title")) == [f"{caption(i)}, nice" for i in range(3)]  # no header row
    j = write_pairs_jsonl(tmp_path / "j", 3, image_col="img", caption_col="alt")
    assert list(iter_texts(j, "alt")) == [caption(i) for i in range(3)]  # not the JSON lines
    txt = tmp_path / "caps.txt"
    txt.write_text("one  caption\n\nanother\n")
    assert list(iter_texts(txt)) == ["one caption", "another"]
    bad = tmp_path / "caps2.txt"
    bad.write_text('{"caption": "x"}\n')
    with pytest.raises(InputError, match=r"caps2.txt:1: a JSON object, not a caption"):
        list(iter_texts(bad))
    write_shards(tmp_path / "shards", 1, 3)
    assert list(iter_texts(tmp_path / "shards" / "00000.tar")) == [caption(i) for i in range(3)]


def test_urls_and_non_utf8_tar_members_are_reported(tmp_path):
    import io

    p = tmp_path / "urls.csv"
    p.write_text("url,caption\nhttp://example.com/a.jpg,a cat\n")
    rec = next(iter(open_source(str(p), image_column="url")))
    with pytest.raises(InputError, match="a URL; images are not downloaded here"):
        rec.load()
    with tarfile.open(tmp_path / "n.tar", "w", encoding="utf-8", errors="surrogateescape") as tf:
        for name in (os.fsdecode(b"caf\xe9.png"), "ok.png"):
            data = (tmp_path / "urls.csv").read_bytes()
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    src = open_source(str(tmp_path / "n.tar"))
    assert [r.key for r in src] == ["n/ok"]
    assert "not valid UTF-8" in src.failures[0]["error"] and src.failures[0]["id"].encode("utf-8")


def test_cli_inspect(tmp_path, capsys):
    from zscir.cli import main

    write_shards(tmp_path / "shards", 2, 3, corrupt={4})
    assert main(["data", "inspect", str(tmp_path / "shards/{00000..00001}.tar"), "-n", "1", "--decode"]) == 0
    out = capsys.readouterr().out
    assert "webdataset source, 2 shard(s)" in out and "caption='a red circle'" in out
    assert "6 record(s), 6 with a caption, 1 problem(s) (1 unreadable image(s))" in out
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    assert "no such folder or file" in capsys.readouterr().err


def test_gzipped_shards_stream_and_reopen(tmp_path):
    import gzip

    write_shards(tmp_path / "s", 1, 3)
    gz = tmp_path / "s" / "00000.tar.gz"
    gz.write_bytes(gzip.compress((tmp_path / "s" / "00000.tar").read_bytes()))
    src = open_source(str(gz))
    recs = list(src)
    assert [r.key for r in recs] == ["00000/000000000", "00000/000000001", "00000/000000002"]
    assert read_location(recs[2].location) == recs[2].data  # no random access in gzip: found by a scan


def test_folder_follows_links_that_are_not_loops(tmp_path):
    write_gallery(tmp_path / "elsewhere", 2, sub=False)
    root = tmp_path / "g"
    write_gallery(root, 3, sub=False)
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a folder outside: followed
    os.symlink(root / "img0001.png", root / "alias.png")  # a file link: an image like any other
    os.symlink(root, root / "self")  # itself: a loop
    src = open_source(str(root))
    keys = [r.key for r in src]
    assert keys == ["alias.png", "img0000.jpg", "img0001.png", "img0002.png", "linked/img0000.jpg", "linked/img0001.png"]
    assert [f["id"] for f in src.failures] == ["self"] and "loop" in src.failures[0]["error"]
