"""Command-line arguments and checkpoint folders: one row per bad value, each a one-line error (exit 2)
naming the culprit, raised before the long work (model loading, embedding, evaluation, export), with no
output written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from bad_helpers import one_line_error, run_cli
from PIL import Image

from index_helpers import SPEC

BAD_UTF8 = b"make it \xff\xfe red".decode("utf-8", "surrogateescape")  # what argv holds for such bytes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, default_backbone):
    return default_backbone.save(tmp_path_factory.mktemp("bad_cli") / "model")


@pytest.fixture
def ok_png(tmp_path):
    p = tmp_path / "ok.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(p)
    return p


# --- checkpoint config.json, by type (item 9) -------------------------------------------------------------------
def _cfg(fn):
    def edit(folder: Path) -> None:
        p = folder / "config.json"
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
    return edit


def _drop_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "model.safetensors"))
    del t["logit_scale"]
    save_file(t, str(folder / "model.safetensors"))


CHECKPOINT_ROWS = [
    # issue 15, item 9 (all were tracebacks)
    ("config-null", _cfg(lambda d: d.update(config=None)), "'config' must be an object, got null"),
    ("config-a-list", _cfg(lambda d: d.update(config=[1])), "'config' must be an object, got a list"),
    ("config-missing", _cfg(lambda d: d.pop("config")), "no 'config'"),
    ("image-size-a-string", _cfg(lambda d: d["config"].update(image_size="96")), "config.image_size: expected int, got str '96'"),
    ("image-size-a-float", _cfg(lambda d: d["config"].update(image_size=96.5)), "config.image_size: expected int, got float 96.5"),
    ("head-heads-5", _cfg(lambda d: d["config"].update(head_heads=5)), "head_heads=5: must divide head_dim=384"),
    ("not-utf8", lambda f: (f / "config.json").write_bytes(b'{"kind": "\xff\xfe", "config": {}}'), "not UTF-8"),
    ("missing-tensor", _drop_tensor, "missing tensor 'logit_scale'"),
    # already held
    ("unknown-config-key", _cfg(lambda d: d["config"].update(imagesize=96)), "unknown config keys ['imagesize']"),
    ("not-json", lambda f: (f / "config.json").write_text("{nope"), "corrupt config"),
    ("garbage-weights", lambda f: (f / "model.safetensors").write_bytes(b"garbage"), "corrupt weights"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), "missing model.safetensors"),
    ("other-kind", _cfg(lambda d: d.update(kind="zscir.isa")), "kind 'zscir.isa' is not a backbone"),
    ("fingerprint-mismatch", _cfg(lambda d: d.update(fingerprint="0" * 16)), "fingerprint mismatch"),
]


@pytest.mark.parametrize("name,damage,words", CHECKPOINT_ROWS, ids=[r[0] for r in CHECKPOINT_ROWS])
@pytest.mark.slow
def test_tampered_checkpoint_rows(tmp_path, capsys, model_dir, ok_png, name, damage, words):
    folder = Path(shutil.copytree(model_dir, tmp_path / "m"))
    damage(folder)
    out = tmp_path / "q.npy"
    code, err = run_cli(capsys, "compose", "--backbone", folder, "--image", ok_png, "--text", "red", "--out", out)
    one_line_error(code, err, words)
    assert not out.exists()


# --- arguments ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_non_utf8_text(capsys, model_dir, ok_png, built_index, ref_png):
    """Item 9: a --text with undecodable bytes ended in UnicodeEncodeError."""
    code, err = run_cli(capsys, "compose", "--backbone", model_dir, "--image", ok_png, "--text", BAD_UTF8)
    one_line_error(code, err, "--text: not valid UTF-8")
    code, err = run_cli(capsys, "search", built_index, "--backbone", SPEC, "--image", ref_png, "--text", BAD_UTF8)
    one_line_error(code, err, "--text: not valid UTF-8")


@pytest.mark.parametrize("text,code_expected,words", [("", 2, "empty or whitespace-only"),
                                                      ("   \n", 2, "empty or whitespace-only"),
                                                      ("red " * 20000, 0, "")])
@pytest.mark.slow
def test_empty_and_huge_texts(capsys, model_dir, ok_png, text, code_expected, words):
    """Already held: empty texts refused, a huge text truncated to the tower's context."""
    code, err = run_cli(capsys, "compose", "--backbone", model_dir, "--image", ok_png, "--text", text)
    if code_expected == 2:
        one_line_error(code, err, words)
    else:
        assert code == 0, err


def _unwritable(tmp_path: Path) -> Path:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d / "out.npy"


@pytest.mark.parametrize("where", ["a-folder", "unwritable"])
def test_out_checked_before_work(tmp_path, capsys, ok_png, where):
    """Item 9: `--out` a folder or unwritable failed after the work (compose, eval, export), with a traceback.
    The backbone / checkpoint / benchmark given do not exist: the --out error must come first."""
    import os

    if where == "unwritable" and os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    out = tmp_path if where == "a-folder" else _unwritable(tmp_path)
    words = "is a folder" if where == "a-folder" else "cannot write in"
    missing = tmp_path / "no-such-model"
    t0 = time.time()
    code, err = run_cli(capsys, "compose", "--backbone", missing, "--image", ok_png, "--text", "red", "--out", out)
    one_line_error(code, err, words)
    code, err = run_cli(capsys, "eval", "--benchmark", "cirr", "--root", missing, "--backbone", missing,
                        "--out", out)
    one_line_error(code, err, words)
    code, err = run_cli(capsys, "export", "isa", "--checkpoint", missing, "--out", out)
    one_line_error(code, err, words)
    assert time.time() - t0 < 10


def test_out_a_folder_as_root(tmp_path, capsys, ok_png):
    """The row above, for a root user (who can write anywhere): a folder is still refused."""
    missing = tmp_path / "no-such-model"
    code, err = run_cli(capsys, "compose", "--backbone", missing, "--image", ok_png, "--text", "red", "--out", tmp_path)
    one_line_error(code, err, "is a folder")


@pytest.mark.parametrize("template,words", [("{caption", "expected '}' before end of string"),
                                            ("{caption}}", "Single '}'"),
                                            ("{nope} {caption}", "not available for cirr")])
def test_eval_template(tmp_path, capsys, template, words):
    """Item 9: `eval --template "{caption"` was a traceback after loading everything."""
    code, err = run_cli(capsys, "eval", "--benchmark", "cirr", "--root", tmp_path / "missing",
                        "--backbone", tmp_path / "no-model", "--template", template, "--out", tmp_path / "r.json")
    one_line_error(code, err, words)


@pytest.mark.parametrize("args,words", [(["--port", "-1"], "--port -1: must be between 0 and 65535"),
                                        (["--port", "70000"], "--port 70000"),
                                        (["--max-upload-bytes", "0"], "--max-upload-bytes=0"),
                                        (["--read-timeout", "0"], "--read-timeout")])
def test_serve_arguments_checked_before_loading(tmp_path, capsys, args, words):
    """Item 9: `serve --port -1` failed only after the index and the model were loaded."""
    code, err = run_cli(capsys, "serve", tmp_path / "no-such-index", *args)
    one_line_error(code, err, words)


@pytest.mark.parametrize("args,words", [(["--alpha", "1.5"], "alpha 1.5 is outside [0, 1]"),
                                        (["--alpha", "nan"], "alpha nan"),
                                        (["--method", "nope"], "unknown method 'nope'")])
def test_bad_alpha_and_method(capsys, model_dir, ok_png, args, words):
    """Already held."""
    code, err = run_cli(capsys, "compose", "--backbone", model_dir, "--image", ok_png, "--text", "red", *args)
    one_line_error(code, err, words)
