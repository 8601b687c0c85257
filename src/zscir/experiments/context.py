"""The ground every recipe stands on: the world, the pre-trained default backbone, the evaluator, the settings
and the folder where trained artefacts are cached. Built (or reused) under $ZSCIR_HOME by `build_context`,
shared by `zscir demo` and the benchmark scripts so they train and cache the same things."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.backbones.base import Backbone
from zscir.experiments.artifacts import cached_artifact
from zscir.experiments.settings import Settings, load_settings
from zscir.paths import models_dir, worlds_dir
from zscir.train.engine import NOT_IN_SIGNATURE

log = logging.getLogger(__name__)


@dataclass
class ExperimentContext:
    """Everything a recipe may use. `extras` collects what recipes measure besides the metrics (sweeps, the
    modality gap, costs); `results.json` carries it at top level."""

    world: Any  # zscir.world.World
    backbone: Backbone
    evaluator: Any  # zscir.eval.world.WorldEvaluator
    workdir: Path
    settings: Settings
    seed: int
    device: str
    extras: dict[str, Any] = field(default_factory=dict)
    _world_fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def size(self) -> str:
        return str(self.world.meta.get("size", ""))

    def world_fingerprint(self) -> str:
        """Identifies the world for artefact keys (see `world_fingerprint`); digested once per context, as every
        artefact of a run asks and a run does not edit its world."""
        if self._world_fingerprint is None:
            self._world_fingerprint = world_fingerprint(self.world)
        return self._world_fingerprint

    def artifact(self, name: str, settings: Any, build: Any, inputs: dict[str, str] | None = None) -> Path:
        """A trained artefact of this experiment (see artifacts.cached_artifact), keyed by `settings` (a dict or
        a config dataclass, minus where it is written and run), the backbone, the world and `inputs`."""
        return cached_artifact(self.workdir, name, settings_doc(settings),
                               {"backbone": self.backbone.fingerprint(), "world": self.world_fingerprint(),
                                **(inputs or {})}, build)


# where a config says where it runs or writes, not what it trains: never part of an artefact's key
# (the engine's resume-signature exclusions, plus the inputs an artefact is keyed by through their fingerprints)
NOT_KEYED = NOT_IN_SIGNATURE | {"world", "mapper", "text_init"}


def settings_doc(settings: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    doc = asdict(settings) if is_dataclass(settings) and not isinstance(settings, type) else dict(settings)
    return {k: v for k, v in doc.items() if k not in NOT_KEYED}


# what a trainer reads from a world (its images are these files' scenes, drawn by the generator of `version`)
WORLD_TRAINING_FILES = ("pairs.json", "unlabelled.json", "text_triplets.json", "cir_train.json")


def world_fingerprint(world: Any) -> str:
    """A world's part of an artefact key: where it is, its seed, size and generator version, and a digest of its
    training files, so that a world rebuilt or edited at the same path never reuses what was trained on the old
    one; a world that only grew its evaluation (benchmarks/world_variants.py) keeps its artefacts."""
    import hashlib

    meta = getattr(world, "meta", {}) or {}
    h = hashlib.sha1()
    for name in WORLD_TRAINING_FILES:
        f = Path(world.root) / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"(none)") + b"\0")
    return (f"{Path(world.root).resolve()}|seed={meta.get('seed')}|size={meta.get('size')}|v={meta.get('version')}"
            f"|training={h.hexdigest()[:16]}")


def ensure_world(size: str, seed: int) -> Path:
    """The synthetic world of this size and seed under $ZSCIR_HOME/worlds, generated if missing or made by an
    older version of the generator (its protocols are not the current ones)."""
    from zscir.utils.io import read_json
    from zscir.world import generate_world
    from zscir.world.generate import VERSION

    path = worlds_dir() / f"{size}-s{seed}"
    meta = path / "world.json"
    if not meta.is_file() or read_json(meta).get("version") != VERSION:
        log.info("generating the %s world (seed %d) -> %s", size, seed, path)
        generate_world(path, seed=seed, size=size)
    return path


def ensure_default_model(world_path: Path, settings: Settings, init_temperature: float | None = None) -> Path:
    """The embedded default pre-trained on this world ($ZSCIR_HOME/models/default-<size>-s<seed>), trained if
    missing or made with other settings. `init_temperature` (None: the pre-training default) makes a variant
    kept beside it (`...-T<t>`). Never written over $ZSCIR_HOME/models/default, which is the user's own
    `zscir pretrain` output; `--backbone default` falls back to this model when there is none (backbones)."""
    from zscir.train.pretrain import PretrainConfig, pretrain
    from zscir.world import load_world

    world = load_world(world_path)
    size, seed = world.meta.get("size"), settings.seed
    suffix = "" if init_temperature is None else f"-T{init_temperature:g}"
    overrides = {} if init_temperature is None else {"init_temperature": init_temperature}
    cfg = settings.config("pretrain", PretrainConfig, world=str(world_path), **overrides)

    def build(out: Path) -> None:
        from dataclasses import replace

        pretrain(replace(cfg, out=str(out)))

    return cached_artifact(models_dir(), f"default-{size}-s{seed}{suffix}", settings_doc(cfg),
                           {"world": world_fingerprint(world)}, build, keyed_folder=False)


def build_context(size: str, seed: int = 0, device: str = "", progress: bool = True,
                  init_temperature: float | None = None, settings_file: str | Path | None = None) -> ExperimentContext:
    """The world, the pre-trained default backbone, the evaluator and the settings of one experiment size,
    built or reused under $ZSCIR_HOME. `init_temperature` selects a pre-training variant with its own workdir."""
    from zscir.backbones.default import DefaultBackbone
    from zscir.eval.world import WorldEvaluator
    from zscir.utils.runtime import pick_device, resolve_precision
    from zscir.world import load_world

    dev = pick_device(device or None)
    settings = load_settings(size, seed, device, settings_file)
    world_path = ensure_world(size, seed)
    world = load_world(world_path)
    model = ensure_default_model(world_path, settings, init_temperature)
    backbone = DefaultBackbone.load(model).to(dev).eval()
    suffix = "" if init_temperature is None else f"-T{init_temperature:g}"
    workdir = models_dir() / f"experiments-{size}-s{seed}{suffix}"
    # [evaluation] precision: the towers' autocast while embedding galleries and queries (default fp32)
    precision = str(settings.table("evaluation").get("precision", "fp32"))
    evaluator = WorldEvaluator(world, progress=progress, precision=resolve_precision(precision, dev))
    return ExperimentContext(world=world, backbone=backbone, evaluator=evaluator,
                             workdir=workdir, settings=settings, seed=seed, device=str(dev))
