"""Shared fixtures. Tests never touch the user's ./data: ZSCIR_HOME points into a temporary folder."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
# Subprocesses and Ray workers must import the test-only fake backbone too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [TESTS, str(Path(TESTS).parent / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Session- and module-scoped fixtures run before the per-test home below: give them a throw-away home too, so
# nothing a test builds (feature caches, worlds, models) can land in the user's ./data.
os.environ["ZSCIR_HOME"] = tempfile.mkdtemp(prefix="zscir-test-home-")
atexit.register(shutil.rmtree, os.environ["ZSCIR_HOME"], ignore_errors=True)  # ours: gone with the session


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.getbasetemp() / "zscir_home"
    monkeypatch.setenv("ZSCIR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_backbone():
    """The embedded default with freshly initialised (seeded) heads: real towers, no pre-training."""
    from zscir.backbones.default import DefaultBackbone

    torch.manual_seed(0)
    return DefaultBackbone().eval()
