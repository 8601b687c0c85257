"""Fixtures of the bad-input suite: a small indexed gallery made with the tests' fake backbone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from index_helpers import SPEC
from zscir_fakes import make_image, write_gallery


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_gallery")
    write_gallery(root / "g", 30)
    return root / "g"


@pytest.fixture(scope="session")
def built_index(gallery, tmp_path_factory) -> Path:
    from zscir.index.runner import build_index

    out = tmp_path_factory.mktemp("bad_index") / "idx"
    build_index(gallery, out, SPEC, shard_size=8, batch_size=8, progress=False)
    return out


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    """A private copy of the built index a test may damage."""
    return Path(shutil.copytree(built_index, tmp_path / "idx"))


@pytest.fixture
def ref_png(tmp_path) -> Path:
    p = tmp_path / "ref.png"
    make_image(3).save(p)
    return p
