"""Bad input through the CLI: one line naming the culprit, a non-zero exit, nothing half-written."""

import numpy as np
import pytest
from PIL import Image

from zscir.cli import main


@pytest.fixture
def model_dir(tmp_path, default_backbone):
    return default_backbone.save(tmp_path / "model")


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.slow
def test_compose_ok(tmp_path, capsys, model_dir):
    img = tmp_path / "ref.png"
    Image.new("RGB", (50, 40), (200, 10, 10)).save(img)
    out = tmp_path / "q.npy"
    code = main(["compose", "--backbone", str(model_dir), "--image", str(img), "--text", "make it blue", "--out", str(out)])
    assert code == 0
    q = np.load(out)
    assert q.shape == (384,) and abs(np.linalg.norm(q) - 1) < 1e-4


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--image", "{tmp}/missing.png", "--text", "x"], "missing.png: image not found"),
        (["--image", "{tmp}/corrupt.png", "--text", "x"], "corrupt.png: unreadable image"),
        (["--image", "{tmp}/ok.png", "--text", "   "], "--text: empty or whitespace-only"),
        (["--image", "{tmp}/ok.png", "--text", "x", "--alpha", "1.5"], "alpha 1.5 is outside [0, 1]"),
        (["--image", "{tmp}/ok.png", "--text", "x", "--method", "nope"], "unknown method 'nope'"),
    ],
)
def test_compose_bad_input(tmp_path, capsys, model_dir, args, culprit):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    out = tmp_path / "q.npy"
    argv = ["compose", "--backbone", str(model_dir), "--out", str(out)] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert len(err) == 1 and culprit in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".q.npy*"))


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    import torch

    from zscir.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m", "zscir.isa", {}, {"w": torch.zeros(1)})
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    code, err = _run(capsys, "compose", "--backbone", str(tmp_path / "m"), "--image", str(tmp_path / "ok.png"), "--text", "x")
    assert code == 2 and len(err) == 1 and "kind 'zscir.isa' is not a backbone" in err[0]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("world", "pretrain", "compose", "demo"):
        assert cmd in out
