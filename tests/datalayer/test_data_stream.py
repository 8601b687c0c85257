"""Streaming: worker processes x DDP ranks see every item exactly once per epoch; unreadable items are skipped
into the failures report; too many of them refuse the data set."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datalayer_helpers import write_pairs_csv, write_shards

from zscir.backbones.preprocess import PreprocessConfig
from zscir.data import StreamConfig, open_source, stream
from zscir.errors import InputError
from zscir_fakes import write_gallery

PRE = PreprocessConfig(size=16, mode="resize", interpolation="bilinear")


def _keys(source, world: int, workers: int, **cfg) -> Counter:
    seen: Counter = Counter()
    for rank in range(world):
        loader = stream(source, PRE, StreamConfig(batch_size=3, workers=workers, **cfg), rank=rank, world_size=world)
        for b in loader:
            assert b.pixels.shape == (len(b), 3, 16, 16)
            assert len(b) <= 3
            seen.update(b.keys)
    return seen


@pytest.mark.parametrize("n_shards", [6, 1])  # 6 tars >= 2x2 parts: whole tars per part; 1 tar: item split
@pytest.mark.slow
def test_shards_exactly_once_across_workers_and_ranks(tmp_path, n_shards):
    write_shards(tmp_path / "s", n_shards, 12 // n_shards)
    src = open_source(str(tmp_path / "s"))
    want = Counter(r.key for r in src)
    assert _keys(src, world=2, workers=2) == want
    assert _keys(src, world=2, workers=2, shuffle=True, shuffle_buffer=4) == want


@pytest.mark.slow
def test_folder_exactly_once_and_shuffle_is_seeded(tmp_path):
    write_gallery(tmp_path / "g", 11)
    src = open_source(str(tmp_path / "g"))
    want = Counter(r.key for r in src)
    assert _keys(src, world=3, workers=2) == want

    def order(seed, epoch):
        loader = stream(src, PRE, StreamConfig(batch_size=4, workers=0, shuffle=True, seed=seed))
        loader.set_epoch(epoch)
        return [k for b in loader for k in b.keys]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and sorted(order(0, 1)) == sorted(want)


@pytest.mark.slow
def test_batches_stay_full_when_items_fail_and_failures_are_reported(tmp_path):
    write_shards(tmp_path / "s", 2, 10, corrupt={2, 13})
    out = tmp_path / "failures.jsonl"
    loader = stream(open_source(str(tmp_path / "s")), PRE, StreamConfig(batch_size=6, workers=2, min_seen=1,
                                                                         max_bad_fraction=0.2), failures_path=out)
    sizes = [len(b) for b in loader]
    assert sum(sizes) == 18 and sizes.count(6) == 2  # 9 good per worker: one full batch + 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["00000/000000002", "00001/000010013"]
    assert all("unreadable image" in r["error"] for r in rows)
    assert loader.seen == 20 and loader.ok == 18


def test_too_many_unreadable_items_refuse_the_data(tmp_path):
    write_shards(tmp_path / "s", 1, 10, corrupt={0, 1, 2, 3})
    loader = stream(open_source(str(tmp_path / "s")), PRE, StreamConfig(batch_size=2, workers=0, min_seen=5,
                                                                        max_bad_fraction=0.1),
                    failures_path=tmp_path / "f.jsonl")
    with pytest.raises(InputError, match=r"4 of \d+ items unreadable .* > the allowed 10.0%.*f.jsonl"):
        for _ in loader:
            pass
    write_shards(tmp_path / "bad", 1, 3, corrupt={0, 1, 2})
    with pytest.raises(InputError, match="none of the 3 item"):
        list(stream(open_source(str(tmp_path / "bad")), PRE, StreamConfig(max_bad_fraction=1.0)))


def test_pairs_need_captions_and_repeat_cycles(tmp_path):
    p = write_pairs_csv(tmp_path, 5)
    lines = p.read_text().splitlines()
    lines[2] = "img/001.png,,1"  # a pair without its caption
    p.write_text("\n".join(lines) + "\n")
    loader = stream(open_source(str(p)), PRE, StreamConfig(batch_size=2, workers=0, need_captions=True,
                                                           max_bad_fraction=0.5, repeat=True))
    got = []
    for b in loader:
        assert all(b.captions)
        got += b.keys
        if len(got) >= 12:
            break
    assert set(got) == {f"img/{i:03d}.png" for i in (0, 2, 3, 4)}
    assert loader.failures[0]["error"] == "no caption"


def test_rejects_bad_settings():
    with pytest.raises(InputError, match="batch size 0"):
        StreamConfig(batch_size=0)
    with pytest.raises(InputError, match="max bad fraction"):
        StreamConfig(max_bad_fraction=float("nan"))


@pytest.mark.slow
def test_listing_problems_reported_once_over_epochs(tmp_path):
    import os

    write_gallery(tmp_path / "g", 4)
    os.symlink(tmp_path / "g" / "gone.png", tmp_path / "g" / "a-dangling.png")  # sorts before every image
    src = open_source(str(tmp_path / "g"))
    out = tmp_path / "f.jsonl"
    loader = stream(src, PRE, StreamConfig(batch_size=2, workers=2, max_bad_fraction=0.5), failures_path=out)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sum(len(b) for b in loader) == 4
    assert [f["id"] for f in loader.failures] == ["a-dangling.png"]
    assert out.read_text().count("dangling symbolic link") == 1
