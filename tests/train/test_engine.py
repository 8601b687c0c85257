"""The training engine (zscir.train.engine) on a toy task: schedule, refusals, NaN stop, resume, --out rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from zscir.errors import InputError
from zscir.train.data import EpochSequence
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    EngineConfig,
    Task,
    TrainingDiverged,
    check_out_dir,
    fit,
    param_groups,
    partial_dir,
    warmup_cosine,
)


def _toy(out: str = "", lr: float = 0.05, crash_at: int = 0, bad_at: int = 0):
    """A linear regression with dropout (so the RNG state matters) over 40 items in batches of 8."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.LayerNorm(8), nn.Linear(8, 1))
    x = torch.randn(40, 4)
    y = x.sum(1, keepdim=True)
    calls = {"n": 0}

    def batches(epoch: int):
        g = torch.Generator().manual_seed(1000 + epoch)
        perm = torch.randperm(40, generator=g)
        return [perm[i : i + 8] for i in range(0, 40, 8)]

    def loss(b, ctx):
        calls["n"] += 1
        if crash_at and calls["n"] == crash_at:
            raise KeyboardInterrupt  # the process "dies" after the state saved at step crash_at - 1
        out_ = ((model(x[b]) - y[b]) ** 2).mean()
        return out_ * float("nan") if bad_at and calls["n"] == bad_at else out_

    return model, Task("toy", model, batches, loss, steps_per_epoch=5, signature={"toy": 1})


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_schedule_groups_and_epochs():
    f = warmup_cosine(10, 0.2)
    assert [round(f(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0] and f(9) < 0.05
    model, task = _toy()
    groups = param_groups(model, 0.1)
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim < 2 for p in groups[1]["params"])
    res = fit(task, EngineConfig(epochs=2, lr=0.05, progress=False), DistInfo())
    assert res.steps == 10 and len(res.losses) == 10 and res.losses[-1] < res.losses[0]
    seq = EpochSequence(lambda: torch.Generator().manual_seed(3), lambda g: torch.randperm(5, generator=g).tolist())
    e2 = seq(2)
    assert seq(0) != e2 and seq(2) == e2  # a pure function of the epoch, whatever order it is asked in


@pytest.mark.parametrize("kw, match", [
    ({"steps": -3}, "steps"), ({"steps": 0, "epochs": 0}, "steps"), ({"lr": float("nan")}, "learning rate"),
    ({"lr": 0.0}, "learning rate"), ({"lr": -1.0}, "learning rate"), ({"lr": float("inf")}, "learning rate"),
    ({"precision": "fp8"}, "precision"), ({"grad_clip": -1.0}, "clipping"), ({"warmup": 1.5}, "warmup"),
])
def test_impossible_settings_are_refused(kw, match):
    with pytest.raises(InputError, match=match):
        EngineConfig(**kw).check()


def test_nan_loss_stops_and_saves_nothing(tmp_path):
    out = tmp_path / "ck"
    model, task = _toy(str(out), bad_at=3)
    with pytest.raises(TrainingDiverged, match="nan at step 3"):
        fit(task, EngineConfig(steps=6, lr=0.05, out=str(out), save_every=1, progress=False), DistInfo())
    assert not out.exists()
    model, task = _toy(str(out))
    with pytest.raises(TrainingDiverged):  # an absurd lr: the weights (or the loss) overflow
        fit(task, EngineConfig(steps=6, lr=1e30, out=str(out), progress=False), DistInfo())


def test_resume_after_a_crash_reaches_the_uninterrupted_weights(tmp_path):
    cfg = dict(steps=12, lr=0.05, warmup=0.2, weight_decay=0.01, grad_clip=1.0, progress=False)
    model, task = _toy()
    fit(task, EngineConfig(**cfg), DistInfo())
    want = _weights(model)

    out = tmp_path / "run"
    model, task = _toy(str(out), crash_at=8)  # dies in step 8; the last state was saved after step 6
    with pytest.raises(KeyboardInterrupt):
        fit(task, EngineConfig(**cfg, out=str(out), save_every=3), DistInfo())
    state = partial_dir(out) / "state.pt"
    assert state.is_file() and torch.load(state, weights_only=False)["step"] == 6
    model, task = _toy(str(out))  # a fresh process: new model, same seed
    res = fit(task, EngineConfig(**cfg, out=str(out), save_every=3, resume=True), DistInfo())
    assert res.resumed_from == 6 and res.steps == 12
    got = _weights(model)
    for k in want:
        assert torch.equal(want[k], got[k]), k  # bit-identical: weights, optimiser, schedule, RNG and data order

    model, task = _toy(str(tmp_path / "none"))
    with pytest.raises(InputError, match="no resumable state"):
        fit(task, EngineConfig(**cfg, out=str(tmp_path / "none"), resume=True), DistInfo())


def test_out_rule_refuses_other_folders_and_touches_nothing(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    with pytest.raises(InputError, match="victim"):
        check_out_dir(victim, "zscir.token-mapper")
    assert (victim / "thesis.txt").read_text() == "precious"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "zscir.isa"}))
    with pytest.raises(InputError, match="other"):
        check_out_dir(other, "zscir.token-mapper")
    same = tmp_path / "same"
    same.mkdir()
    (same / "config.json").write_text(json.dumps({"kind": "zscir.token-mapper"}))
    assert check_out_dir(same, "zscir.token-mapper") == same  # an earlier checkpoint of the same kind: replaced
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", "zscir.isa")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_out_dir(tmp_path / "afile", "zscir.isa")
    monkeypatch.chdir(victim)
    for bad in (".", "..", str(Path.home())):
        with pytest.raises(InputError, match="refusing"):
            check_out_dir(bad, "zscir.isa")
    (tmp_path / "new.partial").mkdir()
    (tmp_path / "new.partial" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="partial"):  # the resume state's sibling folder is protected too
        check_out_dir(tmp_path / "new", "zscir.isa")


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    import argparse

    import zscir.utils.runtime as runtime
    from zscir.train.engine import add_engine_args, autocast, engine_args, resolve_precision

    for given in ("fp32", "bf16", "fp16"):
        assert resolve_precision(given, "cpu") == given
    p = argparse.ArgumentParser()
    add_engine_args(p, lr=1e-3, batch_size=4, steps=2)
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, native=native: native)
        assert resolve_precision("auto", "cpu") == want
        # the CLI records what ran, never "auto"
        assert engine_args(p.parse_args(["--out", "x", "--precision", "auto"]))["precision"] == want
        with autocast(torch.device("cpu"), "auto"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if native else torch.float32)
