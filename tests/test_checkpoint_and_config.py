from dataclasses import dataclass

import pytest
import torch

from zscir.checkpoint import check_fingerprint, load_checkpoint, save_checkpoint
from zscir.config import from_dict, to_dict
from zscir.errors import CheckpointError


@dataclass
class Cfg:
    rank: int = 4
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)


def test_config_roundtrip_and_unknown_keys():
    c = Cfg(rank=8, sizes=(3,))
    assert from_dict(Cfg, to_dict(c)) == c
    with pytest.raises(CheckpointError, match="unknown config keys"):
        from_dict(Cfg, {"rnak": 3})


def test_checkpoint_roundtrip_kind_and_fingerprint(tmp_path):
    t = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    p = save_checkpoint(tmp_path / "c", "zscir.test", {"rank": 4}, t, backbone_fingerprint="abc")
    ck = load_checkpoint(p, "zscir.test")
    assert ck.config == {"rank": 4} and torch.equal(ck.tensors["a"], t["a"]) and ck.fingerprint
    with pytest.raises(CheckpointError, match="expected 'zscir.other'"):
        load_checkpoint(p, "zscir.other")
    check_fingerprint(ck, "abc")
    with pytest.raises(CheckpointError, match="trained for backbone abc"):
        check_fingerprint(ck, "xyz")
    (p / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)
    assert not list(tmp_path.glob(".c.*"))  # no temporary folders left behind


def test_library_never_imports_train():
    """Training is kept apart from inference: no module outside zscir.train/zscir.experiments imports zscir.train."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "src" / "zscir"
    offenders = []
    for f in root.rglob("*.py"):
        rel = f.relative_to(root).parts
        if rel[0] in ("train", "experiments") or rel[-1] == "cli.py":
            continue
        if re.search(r"^\s*(from|import)\s+zscir\.train\b", f.read_text(), re.M):
            offenders.append(str(f.relative_to(root)))
    assert not offenders, f"library modules importing zscir.train: {offenders}"
