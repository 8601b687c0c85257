"""Trained checkpoints of every method on a tiny random HF CLIP, made once per session (tests/method_checkpoints.py)."""

import sys
from pathlib import Path

import pytest

# the benchmark fixtures (miniature CIRR, ...) live in tests/datasets
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))


@pytest.fixture(scope="session")
def trained_setup(tmp_path_factory):
    from method_checkpoints import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def trained_setup_p16(tmp_path_factory):
    """The same on a CLIP with 16-px patches (CLS + 4x4 tokens at 64 px)."""
    from method_checkpoints import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("trained16"), patch=16)
