"""One way to build a composition method, used by every command, the service and the demo.

    method = build_method("pic2word", backbone, ["runs/p2w"])      # name + checkpoint folder
    method = build_method(None, backbone, ["runs/p2w"])            # the checkpoint says which method
    method = build_method("slerp", backbone, alpha=0.9)            # training-free, with a setting

Rules (the same everywhere):

- A checkpoint's `config.json` says what it is (`kind`, its config, the backbone fingerprint, and for stacked
  artefacts the earlier one: an RTD checkpoint records the mapper it was trained for, a stage-2 checkpoint its
  stage 1 inside and its RTD text tower as `text_init`). Each method class declares the kinds it loads and
  `serves(doc)` says whether a given checkpoint is one it can run; with no name, the method the checkpoint was
  made for is built (`methods_for_checkpoint`).
- A method that needs trained weights and has none is refused with a one-line `InputError` saying what to
  train; a checkpoint given to a method it does not serve, or trained on another backbone, is refused with the
  reason. Nothing ever runs with random or untuned weights.
- Settings a method does not declare (`setting_defaults`) are refused by `check_settings`.
- Extra checkpoint folders resolve recorded dependencies whose recorded path is gone (matched by fingerprint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.backbones.base import Backbone
from zscir.checkpoint import read_checkpoint_config
from zscir.errors import CheckpointError, InputError
from zscir.methods.base import CompositionMethod, check_settings, get_method_class, list_methods


@dataclass
class CheckpointRef:
    """A checkpoint folder given by the user, its config.json, and the other folders given with it."""

    path: Path
    doc: dict[str, Any]
    others: list[CheckpointRef] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> CheckpointRef:
        path = Path(path)
        return cls(path, read_checkpoint_config(path))

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def config(self) -> dict[str, Any]:
        return self.doc.get("config") or {}

    @property
    def fingerprint(self) -> str:
        return str(self.doc.get("fingerprint", ""))

    def resolve(self, recorded: dict[str, Any], what: str) -> Path:
        """The folder of a recorded dependency ({"path", "fingerprint"}): the recorded path, the same name next
        to this checkpoint, or another given folder with the recorded fingerprint. Refused when none fits."""
        want = str(recorded.get("fingerprint", ""))
        raw = str(recorded.get("path", ""))
        candidates: list[Path] = []
        if raw:
            candidates += [Path(raw), self.path.parent / Path(raw).name]
        candidates += [o.path for o in self.others]
        seen_wrong = []
        for c in candidates:
            try:
                fp = str(read_checkpoint_config(c).get("fingerprint", ""))
            except CheckpointError:
                continue
            if not want or fp == want:
                return c
            seen_wrong.append(c.name)
        extra = f" ({', '.join(seen_wrong)} has another fingerprint)" if seen_wrong else ""
        raise CheckpointError(f"{self.path.name}: {what} {Path(raw).name or '?'} (fingerprint {want[:12] or '?'}) "
                              f"it was trained with is missing{extra}; pass that folder too (--checkpoint DIR)")


def _refs(checkpoints: Sequence[str | Path | CheckpointRef] | str | Path | None) -> list[CheckpointRef]:
    if checkpoints is None:
        return []
    if isinstance(checkpoints, (str, Path, CheckpointRef)):
        checkpoints = [checkpoints]
    refs = [c if isinstance(c, CheckpointRef) else CheckpointRef.open(c) for c in checkpoints if str(c)]
    for r in refs:
        r.others = [o for o in refs if o is not r]
    return refs


def methods_for_checkpoint(checkpoint: str | Path | CheckpointRef | dict[str, Any]) -> list[str]:
    """The registered methods a checkpoint serves, the one it was made for first. Refused (CheckpointError with
    the reason) when it serves none."""
    doc = checkpoint if isinstance(checkpoint, dict) else _refs([checkpoint])[0].doc
    scored: list[tuple[int, int, str]]
    scored, reasons = [], []
    for name in list_methods():
        cls = get_method_class(name)
        if not cls.needs_checkpoint():
            continue
        level, why = cls.serves(doc)
        if level > 0:
            scored.append((-level, len(scored), name))
        elif why and doc.get("kind") in cls.checkpoint_kinds:
            reasons.append(why)
    if not scored:
        where = checkpoint.path.name if isinstance(checkpoint, CheckpointRef) else (
            Path(str(checkpoint)).name if not isinstance(checkpoint, dict) else "checkpoint")
        detail = f": {reasons[0]}" if reasons else ""
        raise CheckpointError(f"{where}: a {doc.get('kind')!r} checkpoint that no registered method runs{detail}")
    return [n for _, _, n in sorted(scored)]


def missing_checkpoint_message(cls: type[CompositionMethod]) -> str:
    hint = cls.train_hint or "`zscir train`"
    return (f"method {cls.name!r} needs trained weights and no checkpoint was given: train them with {hint}, "
            "then pass the folder with --checkpoint DIR")


def precheck(name: str | None, checkpoints: Sequence[str | Path | CheckpointRef] | None = (), **settings: Any) -> str:
    """Everything `build_method` refuses that needs no backbone (unknown method, a setting it does not take,
    a missing checkpoint, a checkpoint for another method), checked before any model is loaded; returns
    the method name (inferred from the first checkpoint when `name` is None)."""
    refs = _refs(checkpoints)
    if not name:
        name = methods_for_checkpoint(refs[0])[0] if refs else "slerp"
    cls = get_method_class(name)
    check_settings(cls, settings)
    if cls.needs_checkpoint() and not refs:
        raise InputError(missing_checkpoint_message(cls))
    if cls.needs_checkpoint() and not any(cls.serves(r.doc)[0] > 0 for r in refs):
        why = cls.serves(refs[0].doc)[1]
        raise CheckpointError(f"method {name!r} cannot run checkpoint {refs[0].path.name}: {why}; that checkpoint "
                              f"is for {_served_text(refs[0])}")
    if not cls.needs_checkpoint() and refs:
        served = _served_text(refs[0])
        raise InputError(f"method {name!r} is training-free and takes no checkpoint ({refs[0].path.name} is for "
                         f"{served}); drop --checkpoint or choose {served}")
    return name


def build_method(name: str | None, backbone: Backbone,
                 checkpoints: Sequence[str | Path | CheckpointRef] | str | Path | None = (),
                 **settings: Any) -> CompositionMethod:
    """The ready method (in eval mode). `name` None: the method the first checkpoint was made for ("slerp" when
    there is no checkpoint). `checkpoints`: the method's folder first; others only resolve dependencies that a
    checkpoint records (a mapper, an RTD text tower) when their recorded path is gone. `settings` (e.g.
    alpha=0.9; None values mean the default) are checked against the method's declared settings."""
    refs = _refs(checkpoints)
    name = precheck(name, refs, **settings)
    cls = get_method_class(name)
    settings = check_settings(cls, settings)
    if not cls.needs_checkpoint():
        return cls.from_checkpoint(backbone, None, **settings).eval()
    chosen = next(r for r in refs if cls.serves(r.doc)[0] > 0)
    method = cls.from_checkpoint(backbone, chosen, **settings)
    method.checkpoint_ref = {"path": str(chosen.path), "fingerprint": chosen.fingerprint,
                             "kind": chosen.kind}
    return method.eval()


def _served_text(ref: CheckpointRef) -> str:
    try:
        return " or ".join(repr(n) for n in methods_for_checkpoint(ref))
    except CheckpointError:
        return "no registered method"


def method_info(method: CompositionMethod | type[CompositionMethod]) -> dict[str, Any]:
    """What a client needs to offer a method: {name, takes_alpha, default_alpha} (None when it has no alpha)."""
    cls = method if isinstance(method, type) else type(method)
    takes = "alpha" in cls.setting_defaults
    default = None
    if takes:
        default = float(getattr(method, "alpha", cls.setting_defaults["alpha"])) if not isinstance(method, type) \
            else float(cls.setting_defaults["alpha"])
    name = cls.name if isinstance(method, type) else method.name
    return {"name": name, "takes_alpha": takes, "default_alpha": default}


def checkpoint_fingerprint(method: CompositionMethod) -> str:
    """The fingerprint of the checkpoint the method was built from ("" for a training-free method)."""
    return str((getattr(method, "checkpoint_ref", None) or {}).get("fingerprint", ""))
