"""The frozen-feature cache: computed once, memory-mapped, a new key for any change that alters the values,
never a half-written entry."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from datalayer_helpers import write_shards

from zscir.data import CacheKey, FeatureCache, PathsSource, StreamConfig, image_features, open_source, text_features
from zscir.errors import InputError
from zscir_fakes import make, make_other, write_gallery


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, pixels):
        self.calls += 1
        return self.fn(pixels)


def test_hit_miss_and_invalidation(tmp_path):
    bb = make()
    write_shards(tmp_path / "s", 2, 5, corrupt={3})
    src = open_source(str(tmp_path / "s"))
    cache = FeatureCache(tmp_path / "cache")
    fn = Counting(bb.image_tokens)
    a = image_features(bb, src, "image_tokens", cache=cache, fn=fn)
    assert fn.calls > 0 and len(a) == 9 and a.meta["failures"] == 1
    assert a.shape == (16, 24) and a.dtype == np.float16
    assert all(isinstance(x, np.memmap) for x in a.arrays)  # memory-mapped, not loaded
    assert a.keys[0] == "00000/000000000" and a.captions[0] == "a red circle"
    rec0 = next(iter(src))
    with torch.inference_mode():
        want = bb.image_tokens(bb.preprocess([rec0.load()])).half().numpy()[0]
    np.testing.assert_array_equal(a[0], want)
    np.testing.assert_array_equal(a.gather([4, 0])[1], want)

    calls = fn.calls
    b = image_features(bb, open_source(str(tmp_path / "s")), "image_tokens", cache=cache, fn=fn)
    assert fn.calls == calls and b.folder == a.folder  # hit: nothing recomputed

    other = image_features(make_other(), src, "image_tokens", cache=cache)  # other weights: a new entry
    assert other.folder != a.folder
    emb = image_features(bb, src, "image_embedding", cache=cache)  # another feature: a new entry
    assert emb.folder != a.folder and emb.shape == (32,)
    st = os.stat(tmp_path / "s" / "00001.tar")
    os.utime(tmp_path / "s" / "00001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the data changed
    changed = image_features(bb, open_source(str(tmp_path / "s")), "image_tokens", cache=cache, fn=fn)
    assert fn.calls > calls and changed.folder != a.folder
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 4
    assert not [p for p in (tmp_path / "cache").glob(".*") if not p.name.endswith(".lock")]  # no build folder left


def test_paths_and_text_features(tmp_path):
    bb = make()
    paths = write_gallery(tmp_path / "g", 5)
    f = image_features(bb, [str(p) for p in paths], "image_embedding", cache=tmp_path / "c")
    assert f.locations == [str(p) for p in paths] and f.shape == (32,)
    np.testing.assert_allclose(np.linalg.norm(f.tensor().float().numpy(), axis=1), 1, atol=1e-2)
    t = text_features(bb, ["a red circle", "a blue square"], cache=tmp_path / "c")
    t2 = text_features(bb, ["a red circle", "a blue square"], cache=tmp_path / "c")
    assert t2.folder == t.folder and t.captions == ["a red circle", "a blue square"]
    np.testing.assert_allclose(t[1], bb.text_trunk(["a blue square"]).detach().numpy()[0], rtol=1e-6)


def test_interrupted_build_is_invisible_then_resumed(tmp_path):
    bb = make()
    paths = write_gallery(tmp_path / "g", 10)
    cache = FeatureCache(tmp_path / "c")
    seen = []

    def crash_after_two_batches(pixels):
        if len(seen) == 2:
            raise RuntimeError("killed")
        seen.append(len(pixels))
        return bb.image_tokens(pixels)

    cfg = StreamConfig(batch_size=3, workers=0, max_bad_fraction=1.0)
    with pytest.raises(RuntimeError, match="killed"):
        # 1-byte shards: every batch is flushed (committed) as soon as it is computed
        image_features(bb, PathsSource(paths), "image_tokens", cache=cache, fn=crash_after_two_batches,
                       config=cfg, shard_bytes=1)
    partial = [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]
    assert len(partial) == 1 and partial[0].endswith(".building")  # a hidden partial build
    key = CacheKey(bb.fingerprint(), bb.preprocess_config.digest(), PathsSource(paths).fingerprint(), "image_tokens",
                   extra="float16")
    assert cache.get(key) is None  # a reader never sees it
    counting = Counting(bb.image_tokens)
    done = image_features(bb, PathsSource(paths), "image_tokens", cache=cache, fn=counting, config=cfg)
    assert len(done) == 10 and sorted(done.keys) == sorted(str(p.resolve()) for p in paths)
    assert counting.calls == 2  # the 4 missing images in 2 batches: the 6 already written were not recomputed
    full = image_features(bb, PathsSource(paths), "image_tokens", cache=FeatureCache(tmp_path / "fresh"), config=cfg)
    for k in full.keys:
        np.testing.assert_array_equal(done[done.position(k)], full[full.position(k)])
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_refused_build_leaves_nothing(tmp_path):
    write_shards(tmp_path / "s", 1, 3, corrupt={0, 1, 2})
    with pytest.raises(InputError, match="none of the 3"):
        image_features(make(), open_source(str(tmp_path / "s")), cache=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]


def test_ranks_write_their_parts_and_rank0_commits(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    key = CacheKey("bb", "pre", "src", "feat")
    barrier = threading.Barrier(2)
    results = {}

    def rank(r):
        rows = [(f"k{r}-{i}", f"/x/{r}/{i}", None, np.full((1, 3), 10 * r + i, np.float32)) for i in range(3)]
        batches = (([k], [loc], [c], a) for k, loc, c, a in rows)
        results[r] = cache.build(key, batches, rank=r, world_size=2, barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    e = results[0]
    assert results[1].folder == e.folder and len(e) == 6
    assert e.keys == ["k0-0", "k0-1", "k0-2", "k1-0", "k1-1", "k1-2"]
    assert e.gather(range(6))[:, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert cache.get(key) is not None and cache.get(CacheKey("bb", "pre", "src", "other")) is None


@pytest.mark.slow
def test_feature_cache_under_torchrun(tmp_path):
    """2 processes (gloo): each computes its half, rank 0 commits one entry with every item exactly once."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    write_shards(tmp_path / "shards", 3, 4, corrupt={5})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = Path(__file__).with_name("ddp_cache_worker.py")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert len(rows) == 2 and rows[0]["folder"] == rows[1]["folder"] == rows[0]["again"]
    want = sorted(rec.key for rec in open_source(str(tmp_path / "shards")) if not rec.key.endswith("0005"))
    assert sorted(rows[0]["keys"]) == want and rows[0]["keys"] == rows[1]["keys"]
    assert rows[0]["texts"] == rows[1]["texts"] and rows[0]["n_texts"] == 2  # rank 0 built, both read
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2


def test_cached_batches_split_ranks_evenly(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    key = CacheKey("bb", "pre", "src", "feat")
    rows = np.arange(23, dtype=np.float32)[:, None].repeat(2, 1)
    e = cache.build(key, [([str(i) for i in range(10)], [""] * 10, [None] * 10, rows[:10]),
                          ([str(i) for i in range(10, 23)], [""] * 13, [None] * 13, rows[10:])])
    seen = []
    counts = []
    for rank in range(2):
        got = list(e.batches(4, seed=1, epoch=0, rank=rank, world_size=2))
        counts.append(len(got))
        for idx, t in got:
            assert t[:, 0].tolist() == idx.astype(np.float32).tolist()  # rows match their indices
            seen += idx.tolist()
    assert counts == [2, 2] and len(seen) == len(set(seen)) == 16  # equal steps per rank, no row twice
    first = [i for idx, _ in e.batches(4, seed=1, epoch=0) for i in idx]
    assert first == [i for idx, _ in e.batches(4, seed=1, epoch=0) for i in idx]
    assert first != [i for idx, _ in e.batches(4, seed=1, epoch=1) for i in idx]


def test_concurrent_builders_compute_once(tmp_path):
    """Two processes asking for the same missing entry at once (here: threads, each with its own lock file
    handle): the second waits for the first and reads its entry instead of computing or clobbering it."""
    import time

    cache = FeatureCache(tmp_path / "c")
    key = CacheKey("bb", "pre", "src", "feat")
    computed = []

    def batches():
        for i in range(3):
            time.sleep(0.05)
            computed.append(i)
            yield [f"k{i}"], [""], [None], np.full((1, 2), i, np.float32)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.build(key, batches()))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0].folder == results[1].folder
    assert computed == [0, 1, 2]  # once, not twice
    assert results[1].keys == ["k0", "k1", "k2"]
