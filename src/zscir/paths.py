"""Where zscir keeps generated worlds, pre-trained models and caches: $ZSCIR_HOME, default ./data."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    return Path(os.environ.get("ZSCIR_HOME", "data")).expanduser()


def models_dir() -> Path:
    return data_home() / "models"


def worlds_dir() -> Path:
    return data_home() / "worlds"


def cache_dir() -> Path:
    return data_home() / "cache"
