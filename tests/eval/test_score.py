"""`zscir score`: rankings made elsewhere, scored against the official annotations with the metrics of
`zscir eval`. The rankings here are the very ones `zscir eval` computes (same tiny backbone and method), so the
two commands must print the same numbers; malformed files are refused naming the query."""

import json

import pytest
import torch
from bench_fixtures import make_circo, make_cirr, make_fashioniq

from zscir.backbones import load_backbone
from zscir.cli import main
from zscir.datasets import load_benchmark
from zscir.eval.benchmarks import EvalSettings, _compose, _gallery
from zscir.eval.engine import score as cosine
from zscir.eval.engine import topk_stable
from zscir.methods import build_method

CMDS = ("zscir.eval.cli", "zscir.eval.score_cli")


def _eval(tmp_path, capsys, *args):
    out = tmp_path / "eval.json"
    assert main(["eval", "--backbone", "testfake:1", "--method", "sum", "--no-cache", "--out", str(out), *args],
                commands=CMDS) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


def _rankings(benchmark, root, subset=""):
    """{qid: top-50 ids} (+ CIRR {qid: ranked group members}) for `sum` on the tiny backbone."""
    method = build_method("sum", load_backbone("testfake:1"))
    split = load_benchmark(benchmark, root, subset, "val")
    settings = EvalSettings(benchmark=benchmark, root=root)
    with torch.no_grad():
        gal, qry = _gallery(method, split, settings), _compose(method, split, settings)
    ids = [g.id for g in split.gallery]
    gidx = split.gallery_index()
    exclude = [gidx[q.reference] for q in split.queries] if benchmark == "cirr" else None
    s = cosine(qry, gal, exclude=exclude)
    top = {q.qid: [ids[j] for j in row] for q, row in zip(split.queries, topk_stable(s, 50))}
    groups = {}
    if benchmark == "cirr":
        for i, q in enumerate(split.queries):
            keep = [gidx[m] for m in q.members if m != q.reference]
            order = torch.sort(s[i, keep], descending=True, stable=True).indices.tolist()
            groups[q.qid] = [ids[keep[j]] for j in order][:3]
    return top, groups


def _score(capsys, *args):
    rc = main(["score", *args], commands=CMDS)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cirr_scores_equal_eval(tmp_path, capsys):
    root = make_cirr(tmp_path / "CIRR", n_images=56)
    evaluated = _eval(tmp_path, capsys, "--benchmark", "cirr", "--root", str(root))
    expected = evaluated["summary"]
    top, groups = _rankings("cirr", root)
    pred, subs = tmp_path / "recall.json", tmp_path / "subset.json"
    pred.write_text(json.dumps({"version": "rc2", "metric": "recall", **top}))
    subs.write_text(json.dumps(groups))
    out = tmp_path / "scores.json"
    rc, text, _ = _score(capsys, "--benchmark", "cirr", "--root", str(root), "--predictions", str(pred),
                         "--subset-predictions", str(subs), "--out", str(out))
    assert rc == 0 and "Rs@1" in text
    scored = json.loads(out.read_text())
    assert scored["summary"] == pytest.approx(expected)
    # the same per-query values as the evaluation's: `zscir compare` pairs rankings made elsewhere with ours
    assert scored["results"]["cirr"]["per_query"] == evaluated["results"]["cirr"]["per_query"]
    from zscir.eval.compare import compare_docs

    assert all(r["difference"] == 0 and r["se"] == 0 for r in compare_docs(scored, evaluated))
    # without the subset file the group ranking is the global list filtered to the group: the same here
    rc, _, _ = _score(capsys, "--benchmark", "cirr", "--root", str(root), "--predictions", str(pred), "--out", str(out))
    assert rc == 0 and json.loads(out.read_text())["summary"] == pytest.approx(expected)
    # a wrong target at rank 0 everywhere: R@1 drops to 0
    bad = {q: [x for x in v if x not in ("dev-2-2-img0", "dev-7-1-img1", "dev-3-0-img1")] for q, v in top.items()}
    pred.write_text(json.dumps(bad))
    rc, _, err = _score(capsys, "--benchmark", "cirr", "--root", str(root), "--predictions", str(pred))
    assert rc == 2 and "need at least 50" in err


@pytest.mark.slow
def test_circo_and_fashioniq_scores_equal_eval(tmp_path, capsys):
    root = make_circo(tmp_path / "CIRCO", n_extra=45)
    evaluated = _eval(tmp_path, capsys, "--benchmark", "circo", "--root", str(root))
    expected = evaluated["summary"]
    top, _ = _rankings("circo", root)
    pred = tmp_path / "circo.json"
    pred.write_text(json.dumps({q: [int(x) for x in v] for q, v in top.items()}))  # the server's int ids
    out = tmp_path / "s.json"
    assert _score(capsys, "--benchmark", "circo", "--root", str(root), "--predictions", str(pred),
                  "--out", str(out))[0] == 0
    assert json.loads(out.read_text())["summary"] == pytest.approx(expected)
    pq, ev = json.loads(out.read_text())["results"]["circo"]["per_query"], evaluated["results"]["circo"]["per_query"]
    assert pq["qids"] == ev["qids"] and pq["values"].keys() == ev["values"].keys()
    assert all(v == pytest.approx(ev["values"][k]) for k, v in pq["values"].items())

    froot = make_fashioniq(tmp_path / "F", n_images=52)
    expected = _eval(tmp_path, capsys, "--benchmark", "fashioniq", "--root", str(froot))
    preds = {}
    for cat in ("dress", "shirt", "toptee"):
        preds.update(_rankings("fashioniq", froot, cat)[0])
    pred = tmp_path / "fiq.json"
    pred.write_text(json.dumps(preds))
    rc, text, _ = _score(capsys, "--benchmark", "fashioniq", "--root", str(froot), "--predictions", str(pred),
                         "--out", str(out))
    assert rc == 0 and "dress" in text
    doc = json.loads(out.read_text())
    assert doc["summary"] == pytest.approx(expected["summary"])
    # one category only: its average is labelled partial and the record incomplete
    pred.write_text(json.dumps({k: v for k, v in preds.items() if k.startswith("dress-")}))
    rc, text, _ = _score(capsys, "--benchmark", "fashioniq", "--root", str(froot), "--predictions", str(pred),
                         "--subsets", "dress", "--out", str(out))
    doc = json.loads(out.read_text())
    assert rc == 0 and "average (partial)" in text and doc["complete"] is False and doc["summary"]["partial"]


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("12063"), "no ranking for 1 of 3 queries (first: 12063)"),
    (lambda p: p.__setitem__("999", p["12060"]), "annotations do not have (first: 999)"),
    (lambda p: p["12060"].__setitem__(1, p["12060"][0]), "query 12060: duplicate ids"),
    (lambda p: p["12060"].__setitem__(1, "not-an-image"), "query 12060: 'not-an-image' is not a gallery image"),
    (lambda p: p.__setitem__("12066", None), "query 12066: expected a list of image ids"),
])
@pytest.mark.slow
def test_malformed_predictions_are_refused_naming_the_query(tmp_path, capsys, edit, message):
    root = make_cirr(tmp_path / "CIRR", n_images=56)
    top, _ = _rankings("cirr", root)
    edit(top)
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps(top))
    rc, _, err = _score(capsys, "--benchmark", "cirr", "--root", str(root), "--predictions", str(pred))
    assert rc == 2 and message in err and "Traceback" not in err
