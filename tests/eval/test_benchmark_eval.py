"""`zscir eval` end to end on miniature benchmarks with a tiny backbone, and the test-server writers."""

import json

import pytest
from bench_fixtures import make_circo, make_cirr, make_fashioniq, make_genecis

from zscir.cli import main
from zscir.datasets import load_cirr
from zscir.errors import InputError
from zscir.eval import submission as sub
from zscir.eval.benchmarks import EvalSettings, evaluate, format_table, query_texts
from zscir.eval.cli import build_method
from zscir.eval.engine import compose_queries, embed_gallery
from zscir.eval.protocols import cirr_protocol

# Only the eval subcommand: the test must not depend on other subcommands being importable.
CMDS = ("zscir.eval.cli",)


def run_eval(capsys, *args):
    rc = main(["eval", "--backbone", "testfake:1", *args], commands=CMDS)
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_fashioniq_end_to_end(tmp_path, capsys):
    root = make_fashioniq(tmp_path / "FashionIQ")
    out = tmp_path / "res" / "fiq.json"
    rc, text, _ = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--method", "slerp",
                           "--alpha", "0.5", "--cache", str(tmp_path / "cache"), "--out", str(out))
    assert rc == 0
    for word in ("dress", "shirt", "toptee", "average", "R@10", "R@50", "mean of averages", "not the full official"):
        assert word in text
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "fashioniq" and doc["split"] == "val" and doc["complete"] is False
    assert doc["method"] == {"name": "slerp", "settings": {"alpha": 0.5}}
    assert doc["backbone"]["spec"] == "testfake:1" and len(doc["backbone"]["fingerprint"]) == 16
    assert doc["preprocess"]["mode"] == "center_crop" and doc["text"] == {"template": "{caption}", "caption_order": "both"}
    # 8-image galleries: every target is within the top 10
    assert all(r["metrics"]["R@10"] == 100.0 for r in doc["results"].values())
    assert set(doc["summary"]) == {"R@10", "R@50", "mean"}
    assert len(list((tmp_path / "cache").glob("gallery-*.npy"))) == 3  # one gallery per category


def test_eval_cirr_val_matches_protocol_and_preprocess_option(tmp_path, capsys):
    root = make_cirr(tmp_path / "CIRR")
    out = tmp_path / "cirr.json"
    rc, text, _ = run_eval(capsys, "--benchmark", "cirr", "--root", str(root), "--method", "sum", "--out", str(out),
                           "--preprocess", "target_pad", "--no-cache")
    assert rc == 0 and "Rs@1" in text and "Avg" in text
    doc = json.loads(out.read_text())
    m = doc["summary"]
    assert set(m) == {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "(R@5+Rs@1)/2"}
    assert m["(R@5+Rs@1)/2"] == pytest.approx((m["R@5"] + m["Rs@1"]) / 2)
    assert doc["preprocess"]["mode"] == "target_pad"
    # recompute with the engine + protocol directly: same numbers
    method = build_method("sum", "testfake:1", None, "target_pad", "cpu")
    s = load_cirr(root, "val")
    g = embed_gallery(method, [x.id for x in s.gallery], s.gallery)
    imgs = s.images()
    q = compose_queries(method, [imgs[x.reference] for x in s.queries], query_texts(s, "{caption}", "both")[0])
    gi = s.gallery_index()
    ref = cirr_protocol(q, g, [gi[x.reference] for x in s.queries], [gi[x.targets[0]] for x in s.queries],
                        [[gi[n] for n in x.members] for x in s.queries])
    assert {k: v for k, v in m.items() if k in ref.metrics} == pytest.approx(ref.metrics)


def test_eval_cirr_test_writes_server_files(tmp_path, capsys):
    root = make_cirr(tmp_path / "CIRR", n_images=56)
    subdir = tmp_path / "submit"
    args = ["--benchmark", "cirr", "--root", str(root), "--split", "test", "--method", "sum",
            "--out", str(tmp_path / "r.json"), "--submission-dir", str(subdir), "--no-cache"]
    # a fixture is not the full official split: no server file unless asked for explicitly
    rc, _, err = run_eval(capsys, *args)
    assert rc == 2 and "--allow-incomplete" in err and "official 2,315" in err and not subdir.exists()
    rc, text, _ = run_eval(capsys, *args, "--allow-incomplete")
    assert rc == 0 and "wrote" in text
    recall = json.loads((subdir / "cirr_test1_recall.json").read_text())
    subset = json.loads((subdir / "cirr_test1_recall_subset.json").read_text())
    s = load_cirr(root, "test1")
    assert list(recall) == sorted(recall)  # written with sorted keys
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    assert set(recall) - {"version", "metric"} == {q.qid for q in s.queries} == {"12060", "12063", "12066"}
    names = {g.id for g in s.gallery}
    for q in s.queries:
        r, t = recall[q.qid], subset[q.qid]
        assert len(r) == 50 and len(set(r)) == 50 and q.reference not in r and set(r) <= names
        assert len(t) == 3 and set(t) <= set(q.members) - {q.reference}
        # the subset list keeps the global order of the members
        assert [n for n in r if n in t] == [n for n in t if n in r]
    assert sub.validate_cirr(recall, subset, {q.qid: q.reference for q in s.queries},
                             {q.qid: q.members for q in s.queries}, sorted(names)) == []
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["submission_files"]) == 2


def test_eval_cirr_test_too_small_gallery_writes_nothing(tmp_path, capsys):
    root = make_cirr(tmp_path / "CIRR")  # 10 images: fewer than 50 candidates
    rc, _, err = run_eval(capsys, "--benchmark", "cirr", "--root", str(root), "--split", "test", "--method", "sum",
                          "--out", str(tmp_path / "r.json"), "--no-cache", "--allow-incomplete")
    assert rc == 2 and "failed validation, nothing written" in err and "expected 50" in err
    assert not list(tmp_path.glob("cirr_test1_*")) and not (tmp_path / "r.json").exists()


def test_eval_circo_val_and_test(tmp_path, capsys):
    root = make_circo(tmp_path / "CIRCO", n_extra=45)
    out = tmp_path / "circo.json"
    rc, text, _ = run_eval(capsys, "--benchmark", "circo", "--root", str(root), "--method", "text", "--out", str(out),
                           "--template", "find {shared_concept} but {caption}", "--cache", str(tmp_path / "c"))
    assert rc == 0 and "mAP@10" in text
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) >= {"mAP@5", "mAP@10", "mAP@25", "mAP@50"}
    assert doc["text"]["template"] == "find {shared_concept} but {caption}"
    assert set(doc["results"]["circo"]["semantic_mAP@10"]) == {"addition", "cardinality"}
    test_args = ["--benchmark", "circo", "--root", str(root), "--split", "test", "--method", "sum", "--out", str(out),
                 "--cache", str(tmp_path / "c")]
    rc, _, err = run_eval(capsys, *test_args)  # 48 of the 123,403 gallery images: refused
    assert rc == 2 and "--allow-incomplete" in err and not (tmp_path / "circo_test_submission.json").exists()
    rc, text, _ = run_eval(capsys, *test_args, "--allow-incomplete")
    assert rc == 0
    assert len(list((tmp_path / "c").glob("gallery-*.npy"))) == 1  # val and test share the gallery embedding
    f = json.loads((tmp_path / "circo_test_submission.json").read_text())
    assert list(f) == ["0", "1", "2"]
    assert all(len(v) == 50 and len(set(v)) == 50 and all(type(x) is int for x in v) for v in f.values())
    assert sub.validate_circo(f, 3) == []


def test_eval_genecis(tmp_path, capsys):
    root = make_genecis(tmp_path / "G")
    out = tmp_path / "g.json"
    rc, text, _ = run_eval(capsys, "--benchmark", "genecis", "--root", str(root), "--method", "image", "--out", str(out),
                           "--no-cache")
    assert rc == 0 and "average R@1" in text
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"focus_attribute", "change_attribute", "focus_object", "change_object"}
    assert doc["summary"]["average R@1"] == pytest.approx(
        sum(r["metrics"]["R@1"] for r in doc["results"].values()) / 4)
    assert doc["results"]["change_object"]["candidates_per_query"] == 4


def test_eval_bad_input(tmp_path, capsys):
    rc, _, err = run_eval(capsys, "--benchmark", "cirr", "--root", str(tmp_path / "none"), "--method", "sum")
    assert rc == 2 and "does not exist" in err
    root = make_fashioniq(tmp_path / "F")
    rc, _, err = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--split", "test", "--method", "sum")
    assert rc == 2 and "no test server" in err
    rc, _, err = run_eval(capsys, "--benchmark", "genecis", "--root", str(root), "--split", "test", "--method", "sum")
    assert rc == 2 and "single evaluation split" in err
    rc, _, err = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--method", "sum",
                          "--template", "{shared_concept} {caption}")
    assert rc == 2 and "not available for fashioniq" in err
    rc, _, err = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--method", "sum", "--alpha", "0.3")
    assert rc == 2 and "no alpha" in err
    croot = make_cirr(tmp_path / "C")
    cap = croot / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(cap.read_text())
    entries[1]["caption"] = None
    cap.write_text(json.dumps(entries))
    rc, _, err = run_eval(capsys, "--benchmark", "cirr", "--root", str(croot), "--method", "sum", "--no-cache")
    assert rc == 2 and "query 12063: 'caption' is null" in err  # never read as the text "None"
    (root / "images" / "B00DR0003.png").write_bytes(b"not a png")
    rc, _, err = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--method", "sum", "--no-cache",
                          "--out", str(tmp_path / "x.json"))
    assert rc == 2 and "B00DR0003.png: unreadable image" in err


# --- writers and validators, field for field --------------------------------------------------------------


def test_cirr_writer_and_validator(tmp_path):
    gallery = [f"test1-{i}-0-img0" for i in range(60)]
    refs = {"12063": gallery[0], "12064": gallery[1]}
    members = {"12063": gallery[0:6], "12064": gallery[1:7]}
    top = {k: [g for g in gallery if g != refs[k]][:50] for k in refs}
    stop = {k: [m for m in members[k] if m != refs[k]][:3] for k in refs}
    recall, subset = sub.cirr_submissions(list(refs), [top[k] for k in refs], [stop[k] for k in refs])
    assert recall == {"version": "rc2", "metric": "recall", "12063": top["12063"], "12064": top["12064"]}
    assert subset == {"version": "rc2", "metric": "recall_subset", "12063": stop["12063"], "12064": stop["12064"]}
    paths = sub.write_cirr(tmp_path, recall, subset, refs, members, gallery)
    assert [json.loads(p.read_text()) for p in paths] == [recall, subset]

    def errors(**patch):
        r = json.loads(json.dumps(recall))
        s = json.loads(json.dumps(subset))
        for k, v in patch.items():
            doc, key = (r, k[2:]) if k.startswith("r_") else (s, k[2:])
            if v is None:
                del doc[key]
            else:
                doc[key] = v
        return " | ".join(sub.validate_cirr(r, s, refs, members, gallery))

    assert "missing e.g. ['12064']" in errors(r_12064=None)
    assert "49 entries, expected 50" in errors(r_12063=top["12063"][:49])
    assert "duplicate" in errors(r_12063=top["12063"][:49] + top["12063"][:1])
    assert "lists the reference" in errors(r_12063=[refs["12063"]] + top["12063"][:49])
    assert "file extension" in errors(r_12063=[n + ".png" for n in top["12063"]])
    assert "version" in errors(r_version="rc1")
    assert "metric" in errors(s_metric="recall")
    assert "not allowed here" in errors(s_12063=[gallery[40]] + stop["12063"][:2])
    assert "unexpected" in errors(s_99999=stop["12063"])
    bad = dict(recall, **{"12063": top["12063"][:10]})
    with pytest.raises(InputError, match="nothing written"):
        sub.write_cirr(tmp_path / "bad", bad, subset, refs, members, gallery)
    assert not (tmp_path / "bad").exists()


def test_circo_writer_and_validator(tmp_path):
    ids = list(range(1000, 1060))
    s = sub.circo_submission(["0", "1"], [[str(i) for i in ids[:50]], ids[5:55]])
    assert s == {"0": ids[:50], "1": ids[5:55]}
    p = sub.write_circo(tmp_path / "c.json", s, 2, ids)
    assert json.loads(p.read_text()) == s
    assert "expected exactly 0..2" in " ".join(sub.validate_circo(s, 3, ids))
    assert "duplicate" in " ".join(sub.validate_circo({"0": ids[:49] + ids[:1], "1": ids[5:55]}, 2, ids))
    assert sub.validate_circo({"0": [str(i) for i in ids[:50]], "1": ids[5:55]}, 2, ids) == []  # SEARLE's strings
    assert "expected a list of image ids" in " ".join(sub.validate_circo({"0": [1.5] * 50, "1": ids[5:55]}, 2))
    assert "duplicate" in " ".join(sub.validate_circo({"0": [str(ids[0])] + ids[:49], "1": ids[5:55]}, 2))
    assert "not allowed" in " ".join(sub.validate_circo({"0": ids[:49] + [7], "1": ids[5:55]}, 2, ids))
    with pytest.raises(InputError, match="nothing written"):
        sub.write_circo(tmp_path / "d.json", {"0": ids[:50]}, 2, ids)
    assert not (tmp_path / "d.json").exists()


def test_format_table_and_evaluate_api(tmp_path):
    root = make_genecis(tmp_path / "G")
    method = build_method("sum", "testfake:2", None, None, "cpu")
    doc = evaluate(method, EvalSettings("genecis", root, subsets=["focus_object"]))
    assert list(doc["results"]) == ["focus_object"]
    assert "focus_object" in format_table(doc)
    with pytest.raises(InputError, match="unknown subset"):
        evaluate(method, EvalSettings("genecis", root, subsets=["dress"]))


def test_compare_two_evals_query_by_query(tmp_path, capsys):
    """`zscir compare`: the per-query values `zscir eval` writes pair two methods on the same queries."""
    from zscir.eval.compare import compare_docs

    root = make_cirr(tmp_path / "CIRR")
    files = {}
    for m in ("image", "sum"):
        files[m] = tmp_path / f"{m}.json"
        rc, _, _ = run_eval(capsys, "--benchmark", "cirr", "--root", str(root), "--method", m, "--no-cache",
                            "--out", str(files[m]))
        assert rc == 0
    a, b = (json.loads(files[m].read_text()) for m in ("image", "sum"))
    pq = a["results"]["cirr"]["per_query"]
    assert len(pq["qids"]) == len(pq["values"]["R@1"]) and set(pq["values"]) >= {"R@1", "R@50", "Rs@1"}
    # the per-query values are the queries' own: their mean is the metric
    assert sum(pq["values"]["R@10"]) / len(pq["qids"]) == pytest.approx(a["results"]["cirr"]["metrics"]["R@10"])
    rows = {r["metric"]: r for r in compare_docs(a, b)}
    assert rows["R@10"]["difference"] == pytest.approx(a["summary"]["R@10"] - b["summary"]["R@10"])
    same = {r["metric"]: r for r in compare_docs(a, a)}
    assert all(r["se"] == 0 and r["within_noise"] for r in same.values())  # a method against itself: no noise
    rc = main(["compare", str(files["image"]), str(files["sum"]), "--json", str(tmp_path / "cmp.json")],
              commands=("zscir.eval.compare",))
    out, _ = capsys.readouterr()
    assert rc == 0 and "A = image on testfake:1" in out and "B = sum on testfake:1" in out and "± SE" in out
    assert "not the full official split" in out  # the fixture is a miniature CIRR: said, not hidden
    assert json.loads((tmp_path / "cmp.json").read_text())["rows"]
    # refused with one line: another benchmark, a file without per-query values, not a results file
    fiq = make_fashioniq(tmp_path / "FashionIQ")
    rc, _, _ = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(fiq), "--method", "sum", "--no-cache",
                        "--out", str(tmp_path / "fiq.json"))
    old = dict(b, results={k: {kk: vv for kk, vv in r.items() if kk != "per_query"} for k, r in b["results"].items()})
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "junk.json").write_text("{not json")
    for other, msg in (("fiq.json", "different benchmarks"), ("old.json", "no per-query values"),
                       ("junk.json", "not a JSON results file"), ("missing.json", "no such results file")):
        rc = main(["compare", str(files["image"]), str(tmp_path / other)], commands=("zscir.eval.compare",))
        _, err = capsys.readouterr()
        assert rc == 2 and msg in err, (other, err)


def test_compare_labels_name_the_checkpoint_folder():
    from zscir.eval.compare import _label

    doc = {"method": {"name": "lincir", "checkpoint": {"path": "runs/ck", "fingerprint": "e8d3", "kind": "x"}},
           "backbone": {"spec": "hf:clip"}, "complete": True}
    assert _label(doc, "r.json") == "lincir checkpoint runs/ck on hf:clip (r.json)"


def test_compare_averages_subsets_as_independent(tmp_path, capsys):
    from zscir.eval.compare import compare_docs

    root = make_fashioniq(tmp_path / "FashionIQ")
    docs = []
    for m, extra in (("image", []), ("slerp", ["--alpha", "0.5"])):
        out = tmp_path / f"{m}.json"
        rc, _, _ = run_eval(capsys, "--benchmark", "fashioniq", "--root", str(root), "--method", m, *extra,
                            "--no-cache", "--out", str(out))
        assert rc == 0
        docs.append(json.loads(out.read_text()))
    rows = compare_docs(*docs)
    avg = {r["metric"]: r for r in rows if r["subset"] == "average"}
    per = [r for r in rows if r["metric"] == "R@10" and r["subset"] != "average"]
    assert len(per) == 3 and avg["R@10"]["a"] == pytest.approx(docs[0]["summary"]["R@10"])
    assert avg["R@10"]["se"] == pytest.approx((sum(r["se"] ** 2 for r in per)) ** 0.5 / 3)
