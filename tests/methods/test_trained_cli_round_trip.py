"""Each trained method from the command line, as a user runs it, with tiny random HF CLIPs (32- and 16-px patches):
train (slerp+tat through `zscir train tat`; the others by their trainers' Python API, see method_checkpoints.py)
-> `zscir eval` on a CIRR-format fixture -> `zscir index` + `zscir search` -> `zscir serve` (its app, driven by
a test client) + one request. Without its checkpoint every command refuses the method (exit 2, one line)."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi")
from bench_fixtures import make_cirr
from fastapi.testclient import TestClient

from zscir.cli import main

pytestmark = pytest.mark.slow  # every test here trains or runs CLI round trips (see README: make test-fast)

TRAINED = ["slerp+tat", "pic2word", "two-stage/mapping-only", "two-stage", "pic2word+rtd", "two-stage+rtd", "isa",
           "isa/symmetric"]


def run(capsys, *args):
    rc = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module", params=[32, 16], ids=["patch32", "patch16"])
def cli_setup(request, tmp_path_factory):
    setup = request.getfixturevalue("trained_setup" if request.param == 32 else "trained_setup_p16")
    root = tmp_path_factory.mktemp("cli")
    cirr = make_cirr(root / "CIRR", n_images=12)
    return setup, root, cirr


def test_train_tat_from_the_command_line(cli_setup, capsys):
    s, root, _ = cli_setup
    rc, out, err = run(capsys, "train", "tat", "--backbone", s.spec, "--images", s.world.root, "--captions", s.captions,
                       "--out", root / "tat-cli", "--rank", "2", "--batch-size", "6", "--epochs", "1",
                       "--save-every", "0", "--no-progress")
    assert rc == 0, err
    rc, out, err = run(capsys, "compose", "--backbone", s.spec, "--checkpoint", root / "tat-cli", "--image",
                       s.world.image_path("p00"), "--text", "make it blue", "--json")
    assert rc == 0 and json.loads(out)["method"] == "slerp+tat"  # no --method: the checkpoint says which


@pytest.mark.parametrize("name", TRAINED)
def test_eval_index_search_serve(cli_setup, name, capsys, monkeypatch, tmp_path):
    s, root, cirr = cli_setup
    ck = s.checkpoints[name]
    common = ["--backbone", s.spec]
    # eval on the CIRR fixture, the method inferred from the checkpoint
    rc, out, err = run(capsys, "eval", "--benchmark", "cirr", "--root", cirr, *common, "--checkpoint", ck, "--no-cache",
                       "--out", tmp_path / "r.json")
    assert rc == 0, err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["method"]["name"] == name and doc["method"]["checkpoint"]["fingerprint"]
    assert set(doc["summary"]) >= {"R@1", "R@5", "Rs@1"} and "R@1" in out
    # index (the gallery encoder of the method) + search
    idx = tmp_path / "idx"
    rc, _, err = run(capsys, "index", cirr / "dev", "--out", idx, *common, "--method", name, "--checkpoint", ck,
                     "--no-progress")
    assert rc == 0, err
    man = json.loads((idx / "manifest.json").read_text())
    assert man["gallery_method"] == name and bool(man["gallery_checkpoint_fingerprint"]) == (name == "slerp+tat")
    ref = cirr / "dev" / "dev-0-0-img0.png"
    rc, out, err = run(capsys, "search", idx, "--image", ref, "--text", "make it blue", "--checkpoint", ck, "-k", "3",
                       "--json")
    assert rc == 0, err
    found = json.loads(out)
    assert found["method"] == name and len(found["results"]) == 3
    # the training-free methods share the index unless the method tuned the gallery tower (slerp+tat)
    rc, out, err = run(capsys, "search", idx, "--image", ref, "--text", "make it blue", "--method", "slerp", "--json")
    if name == "slerp+tat":
        assert rc == 2 and "tuned image tower" in err and "untuned" in err
    else:
        assert rc == 0 and json.loads(out)["method"] == "slerp", err
    # serve: the command's own app (uvicorn.run captured), one request, the same ranking as `zscir search`
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    rc, out, err = run(capsys, "serve", idx, "--checkpoint", ck)
    assert rc == 0 and name in out, err
    client = TestClient(apps[0])
    assert name in [m["name"] for m in client.get("/methods").json()["methods"]]
    r = client.post("/search", data={"text": "make it blue", "method": name, "k": "3"},
                    files={"image": ("ref.png", ref.read_bytes(), "image/png")})
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == [h["id"] for h in found["results"]]


@pytest.mark.parametrize("name", TRAINED)
def test_every_command_refuses_a_trained_method_without_its_checkpoint(cli_setup, name, capsys, tmp_path):
    s, root, cirr = cli_setup
    ref = cirr / "dev" / "dev-0-0-img0.png"
    commands = [
        ["compose", "--backbone", s.spec, "--method", name, "--image", ref, "--text", "x"],
        ["eval", "--benchmark", "cirr", "--root", cirr, "--backbone", s.spec, "--method", name, "--no-cache"],
        ["index", cirr / "dev", "--out", tmp_path / "i", "--backbone", s.spec, "--method", name, "--no-progress"],
        ["search", tmp_path / "nowhere", "--method", name, "--image", ref, "--text", "x"],
    ]
    for cmd in commands:
        rc, _, err = run(capsys, *cmd)
        assert rc == 2 and re.search(f"method '{re.escape(name)}' needs trained weights.*zscir train", err), (cmd, err)
        assert len(err.strip().splitlines()) == 1
    # the wrong checkpoint: refused with the reason, before any model loads
    other = s.checkpoints["isa" if name != "isa" else "pic2word"]
    rc, _, err = run(capsys, "compose", "--backbone", "hf:/nonexistent", "--method", name, "--checkpoint", other,
                     "--image", ref, "--text", "x")
    assert rc == 2 and f"method '{name}' cannot run checkpoint" in err


def test_one_rule_for_a_setting_a_method_does_not_have(cli_setup, capsys, tmp_path):
    """`--alpha` on `image` (or on a trained method without one): the same one-line refusal from every command."""
    s, root, cirr = cli_setup
    ref = cirr / "dev" / "dev-0-0-img0.png"
    for name, ck in (("image", []), ("pic2word", ["--checkpoint", s.checkpoints["pic2word"]])):
        commands = [
            ["compose", "--backbone", s.spec, "--method", name, *ck, "--image", ref, "--text", "x", "--alpha", "0.5"],
            ["eval", "--benchmark", "cirr", "--root", cirr, "--backbone", s.spec, "--method", name, *ck,
             "--alpha", "0.5", "--no-cache"],
            ["search", tmp_path / "nowhere", "--method", name, *ck, "--image", ref, "--text", "x", "--alpha", "0.5"],
        ]
        for cmd in commands:
            rc, _, err = run(capsys, *cmd)
            assert rc == 2 and f"method '{name}' has no alpha setting (its settings: none)" in err, (cmd, err)


def test_export_takes_the_checkpoint_and_refuses_what_has_no_query_side(cli_setup, capsys, tmp_path):
    pytest.importorskip("onnx")
    s, _, _ = cli_setup
    rc, out, err = run(capsys, "export", "--checkpoint", s.checkpoints["isa"], "--out", tmp_path / "q.onnx")
    assert rc == 0 and (tmp_path / "q.onnx").is_file(), err  # the checkpoint says isa
    for name in ("isa/symmetric", "pic2word", "slerp+tat"):
        rc, _, err = run(capsys, "export", "--checkpoint", s.checkpoints[name], "--out", tmp_path / "x.onnx")
        assert rc == 2 and f"method '{name}' has no query side to export" in err, err
    rc, _, err = run(capsys, "export", "isa", "--checkpoint", s.checkpoints["pic2word"], "--out", tmp_path / "x.onnx")
    assert rc == 2 and "method 'isa' cannot run checkpoint" in err
