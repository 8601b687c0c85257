"""Official benchmark files as they are: a missing or blank modification is kept and counted; a subset run is
recorded as partial and incomplete."""

import json

from bench_fixtures import make_cirr, make_fashioniq, make_genecis

from zscir.cli import main
from zscir.datasets import load_cirr


def run_eval(capsys, *args):
    rc = main(["eval", "--backbone", "testfake:1", "--no-cache", *map(str, args)], commands=("zscir.eval.cli",))
    out, err = capsys.readouterr()
    return rc, out, err


def test_missing_and_blank_modifications_are_kept_and_counted(tmp_path, capsys, caplog):
    root = make_cirr(tmp_path / "C", n_images=12)
    cap = root / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(cap.read_text())
    entries[0]["caption"] = " "
    del entries[2]["caption"]
    cap.write_text(json.dumps(entries))
    assert [q.texts for q in load_cirr(root, "val").queries] == [[""], [entries[1]["caption"]], [""]]
    for method in ("slerp", "text", "image"):
        with caplog.at_level("WARNING"):
            rc, out, err = run_eval(capsys, "--benchmark", "cirr", "--root", root, "--method", method,
                                    "--out", tmp_path / "r.json")
        assert rc == 0, err
        doc = json.loads((tmp_path / "r.json").read_text())
        assert doc["blank_modifications"] == 2 and "2 quer(ies) with an empty modification" in out
        assert doc["results"]["cirr"]["data"]["blank_modification_queries"] == ["12060", "12066"]
        assert sum("empty modification text in the official file" in r.message for r in caplog.records) == 1
        caplog.clear()


def test_a_subset_run_is_partial(tmp_path, capsys):
    root = make_fashioniq(tmp_path / "F")
    rc, out, _ = run_eval(capsys, "--benchmark", "fashioniq", "--root", root, "--method", "sum", "--subsets", "dress",
                          "--out", tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and doc["complete"] is False and doc["summary"]["partial"] is True
    assert doc["summary"]["subsets"] == ["dress"] and "average (partial)" in out

    groot = make_genecis(tmp_path / "G")
    rc, out, _ = run_eval(capsys, "--benchmark", "genecis", "--root", groot, "--method", "image", "--subsets",
                          "change_object", "focus_object", "--out", tmp_path / "g.json")
    doc = json.loads((tmp_path / "g.json").read_text())
    assert rc == 0 and doc["complete"] is False and doc["summary"]["partial"] is True
    assert "average (partial) R@1" in out
