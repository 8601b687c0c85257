"""Every trainer from the CLI on a user's own data (a folder of images, a JSONL of pairs, WebDataset shards,
CIR triplets, text triplets) with a tiny random HF CLIP (pretrain: the embedded default's frozen towers):

- it trains, and its checkpoint loads for evaluation;
- a run killed right after a resume state was saved, then restarted, ends with the weights of an
  uninterrupted run (bit-identical);
- under `torchrun --nproc_per_node=2` (gloo) it matches one process at the same global batch (DDP_ATOL);
- --out on a folder that is not a checkpoint of the same kind, and impossible values, are refused (exit 2)
  before any work, and the folder's files are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zscir.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from train_data import make_user_data, trainer_commands

TRAINERS = ("mapping", "pic2word", "composing", "rtd", "isa", "tat", "pretrain")
STEPS = 3
#: max |single - DDP| over every tensor of every checkpoint after STEPS steps. Float reductions run in another
#: order; measured: pic2word 3e-8, tat 2e-7, mapping/composing 1e-5, isa 6e-5, rtd 1.3e-4.
DDP_ATOL = 1e-3
#: pretrain: Adam's first steps move every weight by about lr (2e-3) whatever its gradient's size, so a weight
#: whose gradient is about 0 (the attention's key bias exactly: softmax ignores it) steps by +-lr on the sign
#: of rounding noise. Measured 6.3e-4 (key bias), 1.4e-3 with the text detail (attention out_proj); bound 2 lr.
DDP_ATOL_PRETRAIN = 4e-3


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _run(cmd: list[str]) -> int:
    return main(cmd)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_user_data(tmp_path_factory.mktemp("userdata"))


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """Every trainer, uninterrupted, one process."""
    out = tmp_path_factory.mktemp("full")
    for name, cmd in trainer_commands(data, out, STEPS).items():
        assert _run(cmd) == 0, name
    return out


@pytest.mark.slow
def test_every_trainer_trains_on_user_data_and_loads(full, data):
    from zscir.backbones import load_backbone
    from zscir.backbones.default import DefaultBackbone
    from zscir.methods.isa import load_isa
    from zscir.methods.mapped import Pic2Word, TwoStage, TwoStageMappingOnly, load_mapped_method
    from zscir.methods.rtd import load_rtd_text_encoder
    from zscir.methods.tat import load_tat_backbone

    b = load_backbone(data["clip"])
    assert isinstance(load_mapped_method(b, full / "pic2word"), Pic2Word)
    assert isinstance(load_mapped_method(b, full / "mapping"), TwoStageMappingOnly)
    assert isinstance(load_mapped_method(b, full / "composing"), TwoStage)
    assert load_isa(full / "isa", b) is not None
    assert load_rtd_text_encoder(full / "rtd", b) is not None
    tuned = load_tat_backbone(b, full / "tat")
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert tuned.encode_image(px).shape == b.encode_image(px).shape
    DefaultBackbone.load(full / "pretrain")
    for name in TRAINERS:
        doc = json.loads((full / name / "config.json").read_text())
        assert doc.get("steps", STEPS) == STEPS, name
        assert not (full / f"{name}.partial").exists(), name  # the resume state is dropped once the run completes
    # the pairs and the shards were read through the data layer's memory-mapped feature cache
    assert list((full / "fcache").glob("image_tokens-*/features-*.npy"))


class _Killed(BaseException):
    """Stands for `kill -9` right after a resume state was written (nothing after it runs)."""


@pytest.mark.slow
def test_every_trainer_resumes_to_the_uninterrupted_weights(full, data, tmp_path, monkeypatch):
    import zscir.train.engine as engine

    def kill_at_2(step: int) -> None:
        if step == 2:
            raise _Killed

    out = tmp_path / "crash"
    for name, cmd in trainer_commands(data, out, STEPS, ("--save-every", "1")).items():
        monkeypatch.setattr(engine, "after_save", kill_at_2)
        with pytest.raises(_Killed):
            _run(cmd)
        assert (out / f"{name}.partial" / "state.pt").is_file(), name
        assert not (out / name).exists(), name
        monkeypatch.setattr(engine, "after_save", lambda step: None)
        assert _run(cmd) == 0, name
        want, got = _tensors(full / name), _tensors(out / name)
        assert want.keys() == got.keys(), name
        for k in want:
            assert torch.equal(want[k], got[k]), f"{name}: {k}"


@pytest.mark.slow
def test_every_trainer_under_torchrun_matches_one_process(full, data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    out = tmp_path / "ddp"
    spec = tmp_path / "commands.json"
    spec.write_text(json.dumps(list(trainer_commands(data, out, STEPS).values())))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("cli_ddp_worker.py")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), str(spec)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert r.stdout.count("saved ") == len(TRAINERS)  # rank 0 alone prints (and writes)
    assert "saved None" not in r.stdout
    worst = {}
    for name in TRAINERS:
        want, got = _tensors(full / name), _tensors(out / name)
        assert want.keys() == got.keys(), name
        worst[name] = max((want[k].float() - got[k].float()).abs().max().item() for k in want)
    print("max |single - ddp|:", worst)
    assert all(v <= (DDP_ATOL_PRETRAIN if n == "pretrain" else DDP_ATOL) for n, v in worst.items()), worst


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.slow
def test_autocast_precisions_train(data, full, tmp_path, precision):
    cmds = trainer_commands(data, tmp_path, 2, ("--precision", precision))
    for name in ("pic2word", "tat"):
        assert _run(cmds[name]) == 0, name
        assert json.loads((tmp_path / name / "config.json").read_text())["config"]["train"]["precision"] == precision


# --- refusals ------------------------------------------------------------------------------------------------
@pytest.fixture()
def victim(tmp_path):
    v = tmp_path / "victim"
    v.mkdir()
    (v / "thesis.txt").write_text("precious")
    return v


@pytest.mark.slow
def test_out_that_is_not_a_checkpoint_of_that_kind_is_refused(data, victim, tmp_path, monkeypatch, capsys, full):
    world = data["world"]
    cmds = [
        ["train", "pic2word", "--world", world, "--steps", "2", "--backbone", data["clip"], "--out", str(victim)],
        ["pretrain", "--world", world, "--epochs", "1", "--out", str(victim)],
        ["world", "--size", "quick", "--out", str(victim)],  # refused before any rendering
        ["train", "isa", "--backbone", data["clip"], "--images", data["images"], "--out", str(full / "pic2word")],
    ]
    for cmd in cmds:
        assert _run(cmd) == 2, cmd
        assert "refusing" in capsys.readouterr().err
    assert [p.name for p in victim.iterdir()] == ["thesis.txt"] and (victim / "thesis.txt").read_text() == "precious"
    assert (full / "pic2word" / "config.json").is_file()
    monkeypatch.chdir(victim)
    assert _run(["train", "pic2word", "--world", world, "--steps", "2", "--backbone", data["clip"], "--out", "."]) == 2
    assert [p.name for p in victim.iterdir()] == ["thesis.txt"]
    from zscir.errors import InputError
    from zscir.experiments.demo import check_demo_out

    with pytest.raises(InputError, match="refusing"):
        check_demo_out(victim)


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--steps", "-3"], ["--epochs", "0"], ["--batch-size", "0"],
                                 ["--lr", "nan"], ["--lr", "-1"], ["--lr", "inf"], ["--save-every", "-1"]])
def test_impossible_values_are_refused_before_any_work(data, tmp_path, bad, capsys):
    out = tmp_path / "never"
    cmd = ["train", "pic2word", "--backbone", data["clip"], "--images", data["images"], "--out", str(out), *bad]
    assert _run(cmd) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_diverging_run_stops_and_saves_nothing(data, tmp_path, capsys, full):
    out = tmp_path / "nan"
    cmd = ["train", "pic2word", "--backbone", data["clip"], "--images", data["images"], "--out", str(out),
           "--steps", "4", "--lr", "1e30", "--no-progress", "--feature-cache", str(full / "fcache")]
    assert _run(cmd) == 2
    assert "nothing was saved" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_real_kill_then_resume_reaches_the_uninterrupted_weights(full, data, tmp_path):
    """The same as above with a real process death: `os._exit(137)` right after the step-2 resume state is
    written (ZSCIR_TRAIN_CRASH_AFTER_SAVE), so no clean-up, finaliser or atexit runs, as under `kill -9`."""
    from zscir.train.engine import CRASH_ENV

    out = tmp_path / "killed"
    cmd = trainer_commands(data, out, STEPS, ("--save-every", "1"))["pic2word"]
    env = {**os.environ, CRASH_ENV: "2"}
    r = subprocess.run([sys.executable, "-m", "zscir", *cmd], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 137, r.stderr[-2000:]
    assert (out / "pic2word.partial" / "state.pt").is_file() and not (out / "pic2word").exists()
    assert _run(cmd) == 0
    want, got = _tensors(full / "pic2word"), _tensors(out / "pic2word")
    assert want.keys() == got.keys()
    for k in want:  # another process may reduce floats in another thread order: equal to float32 rounding
        assert torch.allclose(want[k], got[k], atol=1e-6, rtol=0), k
