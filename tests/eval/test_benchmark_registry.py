"""The benchmark registry: a benchmark is one module declaring itself with `@register_benchmark`; `zscir eval`
and `zscir score` dispatch to it with no central list edited. Throw-away benchmarks here are named "test/..."
and unregistered afterwards."""

import json
import logging
import sys
import textwrap
from pathlib import Path

import bench_fixtures  # noqa: F401  (registers the testfake backbone)
import pytest
from PIL import Image

import zscir.datasets
from zscir.cli import main
from zscir.datasets import (
    BenchmarkSplit,
    ImageItem,
    Query,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
    registry,
)
from zscir.datasets.registry import Benchmark, unregister_benchmark
from zscir.errors import InputError
from zscir.eval.protocols import single_target_protocol
from zscir.eval.rankings import score_single_target

CMDS = ("zscir.eval.cli", "zscir.eval.score_cli")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


class Tiny(Benchmark):
    """Two parts ("a", "b") of six plain-colour images; query i of a part: image i, target image i + 1.
    Everything not written here comes from the `Benchmark` defaults (mean aggregation, table, text)."""

    subsets = ("a", "b")
    protocol = "tiny: reference kept; R@1/6 of one target"

    def load(self, root, subset="", split="val", strict_counts=False, check_images=True) -> BenchmarkSplit:
        if subset not in self.subsets:
            raise InputError(f"tiny: no part {subset!r}")
        root = Path(root)
        gallery = [ImageItem(f"{subset}{i}", root / f"{subset}{i}.png") for i in range(len(COLOURS))]
        queries = [Query(qid=f"{subset}-{i}", reference=f"{subset}{i}", texts=["is brighter"],
                         targets=[f"{subset}{i + 1}"]) for i in range(3)]
        return BenchmarkSplit(self.name, subset, split, root, gallery, queries)

    def evaluate(self, split, queries, gallery, settings):
        gidx = split.gallery_index()
        res = single_target_protocol(queries, gallery, [gidx[q.targets[0]] for q in split.queries], ks=(1, 6))
        return {"metrics": res.metrics}

    def score_subset(self, split, predictions, subset_predictions, where):
        return score_single_target(split, predictions, (1, 6), where)


@pytest.fixture
def tiny(tmp_path):
    for part in Tiny.subsets:
        for i, c in enumerate(COLOURS):
            Image.new("RGB", (12, 10), c).save(tmp_path / f"{part}{i}.png")
    register_benchmark("test/tiny")(Tiny)
    yield tmp_path
    unregister_benchmark("test/tiny")


def _run(capsys, *args):
    rc = main(list(args), commands=CMDS)
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_dispatches_to_a_benchmark_registered_in_a_test(tiny, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc, text, err = _run(capsys, "eval", "--backbone", "testfake:1", "--benchmark", "test/tiny", "--root", str(tiny),
                         "--method", "sum", "--no-cache", "--out", str(out))
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "test/tiny" and list(doc["results"]) == ["a", "b"]
    assert doc["protocol"] == "tiny: reference kept; R@1/6 of one target"
    assert doc["text"] == {"template": "{caption}"}
    assert all(r["metrics"]["R@6"] == 100.0 for r in doc["results"].values())  # 6 images: every target in the top 6
    # the default aggregation: each metric's mean over the parts; the default table: a row per part + average
    for k in ("R@1", "R@6"):
        assert doc["summary"][k] == pytest.approx(sum(r["metrics"][k] for r in doc["results"].values()) / 2)
    lines = text.splitlines()
    assert lines[0].startswith("test/tiny val  method=sum")
    assert lines[1].split() == ["R@1", "R@6"] and [ln.split()[0] for ln in lines[2:5]] == ["a", "b", "average"]
    assert doc["complete"] is True and "WARNING" not in text

    rc, text, _ = _run(capsys, "eval", "--backbone", "testfake:1", "--benchmark", "test/tiny", "--root", str(tiny),
                       "--method", "sum", "--no-cache", "--out", str(out), "--subsets", "b")
    doc = json.loads(out.read_text())
    assert rc == 0 and "average (partial)" in text and doc["complete"] is False and doc["summary"]["subsets"] == ["b"]
    # the built-in rules apply to it as to the others: template fields, subsets
    rc, _, err = _run(capsys, "eval", "--backbone", "testfake:1", "--benchmark", "test/tiny", "--root", str(tiny),
                      "--method", "sum", "--template", "{shared_concept} {caption}")
    assert rc == 2 and "not available for test/tiny" in err


def test_score_dispatches_to_it_too(tiny, tmp_path, capsys):
    preds = {f"{p}-{i}": [f"{p}{(i + 1 + j) % 6}" for j in range(6)] for p in ("a", "b") for i in range(3)}
    preds["b-2"] = preds["b-2"][1:] + preds["b-2"][:1]  # one target ranked last
    f = tmp_path / "preds.json"
    f.write_text(json.dumps(preds))
    out = tmp_path / "s.json"
    rc, text, err = _run(capsys, "score", "--benchmark", "test/tiny", "--root", str(tiny), "--predictions", str(f),
                         "--out", str(out))
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["results"]["a"]["metrics"] == {"R@1": 100.0, "R@6": 100.0}
    assert doc["results"]["b"]["metrics"]["R@1"] == pytest.approx(200 / 3)
    assert doc["summary"]["R@1"] == pytest.approx((100 + 200 / 3) / 2) and "average" in text
    f.write_text(json.dumps({**preds, "c-0": preds["a-0"]}))
    rc, _, err = _run(capsys, "score", "--benchmark", "test/tiny", "--root", str(tiny), "--predictions", str(f))
    assert rc == 2 and "rankings for queries of no scored subset (first: c-0)" in err


def test_built_in_benchmarks_are_discovered():
    assert {"cirr", "circo", "fashioniq", "genecis"} <= set(list_benchmarks())
    assert {"cirr", "circo", "fashioniq"} <= set(list_benchmarks(scorable=True))
    assert "genecis" not in list_benchmarks(scorable=True)
    assert get_benchmark("circo").template_fields == {"caption", "shared_concept"}
    assert get_benchmark("fashioniq").official_counts[("dress", "val")] == {"queries": 2017, "gallery": 3817}
    assert get_benchmark("cirr").official_counts["val"]["queries"] == 4181
    with pytest.raises(InputError, match="unknown benchmark 'nope'; expected one of circo, cirr"):
        get_benchmark("nope")


def test_a_module_dropped_into_the_package_is_found(tmp_path, monkeypatch):
    """Adding a benchmark = adding one module to zscir.datasets: discovery imports it, no list to edit."""
    (tmp_path / "dropped_bench.py").write_text(textwrap.dedent('''
        from zscir.datasets.registry import Benchmark, register_benchmark

        @register_benchmark("test/dropped")
        class Dropped(Benchmark):
            protocol = "dropped in"
    '''))
    monkeypatch.setattr(zscir.datasets, "__path__", [*zscir.datasets.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        assert "test/dropped" in list_benchmarks()
        assert get_benchmark("test/dropped").protocol == "dropped in"
        assert "test/dropped" not in list_benchmarks(scorable=True)  # no score_subset: not scorable
    finally:
        unregister_benchmark("test/dropped")
        sys.modules.pop("zscir.datasets.dropped_bench", None)


def test_entry_point_plugins(monkeypatch, caplog):
    class Plugin(Benchmark):
        protocol = "from another distribution"

    class EP:
        def __init__(self, name, load):
            self.name, self.value, self.load = name, f"somewhere:{name}", load

    def broken():
        raise ImportError("no such module")

    monkeypatch.setattr(registry, "entry_points", lambda group: [EP("test/plugin", lambda: Plugin),
                                                                 EP("test/broken", broken)])
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        with caplog.at_level(logging.WARNING):
            assert get_benchmark("test/plugin").protocol == "from another distribution"
        assert "test/broken" not in list_benchmarks() and "cirr" in list_benchmarks()
        assert "test/broken" in caplog.text and "no such module" in caplog.text
    finally:
        unregister_benchmark("test/plugin")


def test_a_name_registered_twice_is_refused():
    register_benchmark("test/twice")(type("A", (Benchmark,), {}))
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_benchmark("test/twice")(type("B", (Benchmark,), {}))
    finally:
        unregister_benchmark("test/twice")
