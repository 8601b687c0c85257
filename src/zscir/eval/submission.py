"""Test-server files for CIRR and CIRCO (benchmarks.md §1.2, §1.3, §2.3), and their validators.

Writers validate first and write nothing when validation fails (`write_*` raise InputError).

CIRR: two files, `{"version": "rc2", "metric": "recall", "<pairid>": [50 names]}` and
`{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names]}`; names without extension; the
reference never listed; every pairid present. Written compactly with sorted keys (the server takes <= 5 MB).
CIRCO: `{"<id>": [50 int image ids]}` for ids "0".."N-1", no duplicates. As in the official evaluation and
the peers, the reference is not removed from CIRCO rankings (it is never a ground truth).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from zscir.errors import InputError
from zscir.utils.io import atomic_path

CIRR_VERSION = "rc2"
CIRR_TOP = 50
CIRR_SUBSET_TOP = 3
CIRCO_TOP = 50
CIRR_MAX_BYTES = 5 * 1024 * 1024


def cirr_submissions(pairids: Sequence[str], top: Sequence[Sequence[str]], subset_top: Sequence[Sequence[str]]
                     ) -> tuple[dict, dict]:
    """The two CIRR server dicts from per-query ranked names (reference already removed)."""
    recall: dict[str, object] = {"version": CIRR_VERSION, "metric": "recall"}
    subset: dict[str, object] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for pid, t, s in zip(pairids, top, subset_top, strict=True):
        recall[str(pid)] = [str(n) for n in t[:CIRR_TOP]]
        subset[str(pid)] = [str(n) for n in s[:CIRR_SUBSET_TOP]]
    return recall, subset


def _check_list(where: str, names: object, n: int, allowed: set | None, banned: object) -> list[str]:
    errors = []
    if not isinstance(names, list):
        return [f"{where}: not a list"]
    if len(names) != n:
        errors.append(f"{where}: {len(names)} entries, expected {n}")
    if len(set(map(str, names))) != len(names):
        errors.append(f"{where}: duplicate entries")
    if banned is not None and banned in names:
        errors.append(f"{where}: lists the reference {banned}")
    if allowed is not None:
        bad = [x for x in names if x not in allowed]
        if bad:
            errors.append(f"{where}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} not allowed here, e.g. {bad[0]!r}")
    return errors


def validate_cirr(recall: Mapping, subset: Mapping, references: Mapping[str, str], members: Mapping[str, Sequence[str]],
                  gallery: Sequence[str]) -> list[str]:
    """Errors (empty = valid) for a CIRR pair: keys = version, metric + every pairid; 50 / 3 distinct names
    per query from the gallery (subset: from img_set.members), never the reference, no file extensions."""
    errors: list[str] = []
    g = set(gallery)
    want = set(references)
    for doc, metric, n in ((recall, "recall", CIRR_TOP), (subset, "recall_subset", CIRR_SUBSET_TOP)):
        if doc.get("version") != CIRR_VERSION:
            errors.append(f"{metric}: version {doc.get('version')!r}, expected {CIRR_VERSION!r}")
        if doc.get("metric") != metric:
            errors.append(f"{metric}: metric {doc.get('metric')!r}, expected {metric!r}")
        keys = set(doc) - {"version", "metric"}
        if keys != want:
            miss, extra = sorted(want - keys), sorted(keys - want)
            errors.append(f"{metric}: {len(keys)} pairids, expected {len(want)}"
                          + (f"; missing e.g. {miss[:3]}" if miss else "") + (f"; unexpected e.g. {extra[:3]}" if extra else ""))
        for k in sorted(keys & want):
            allowed = g if metric == "recall" else set(members[k]) - {references[k]}
            errors += _check_list(f"{metric}[{k}]", doc[k], n, allowed, references[k])
            if any(str(x).endswith((".png", ".jpg")) for x in doc[k] if isinstance(doc[k], list)):
                errors.append(f"{metric}[{k}]: names must not carry a file extension")
        if len(errors) > 20:
            break
    return errors


def circo_submission(qids: Sequence[str], top_ids: Sequence[Sequence[str | int]]) -> dict[str, list[int]]:
    return {str(q): [int(i) for i in t[:CIRCO_TOP]] for q, t in zip(qids, top_ids, strict=True)}


def validate_circo(sub: Mapping, n_queries: int, gallery_ids: Sequence[str | int] | None = None) -> list[str]:
    """Errors for a CIRCO file: keys exactly "0".."N-1"; 50 distinct int ids each, from the gallery."""
    errors: list[str] = []
    want = {str(i) for i in range(n_queries)}
    keys = set(sub)
    if keys != want:
        errors.append(f"{len(keys)} query ids, expected exactly 0..{n_queries - 1}"
                      + (f"; missing e.g. {sorted(want - keys, key=int)[:3]}" if want - keys else "")
                      + (f"; unexpected e.g. {sorted(keys - want)[:3]}" if keys - want else ""))
    g = {int(x) for x in gallery_ids} if gallery_ids is not None else None
    for k in sorted(keys & want, key=int):
        v = sub[k]
        # ints as in the official example; digit strings (SEARLE writes them) are cast by the server too
        if not isinstance(v, list) or not all(
            (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, str) and x.isdigit()) for x in v
        ):
            errors.append(f"[{k}]: expected a list of image ids (ints or digit strings)")
            continue
        errors += _check_list(f"[{k}]", [int(x) for x in v], CIRCO_TOP, g, None)
        if len(errors) > 20:
            break
    return errors


def _dump(path: Path, obj: object, compact: bool) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, sort_keys=compact, separators=(",", ":") if compact else None)


def write_cirr(out_dir: str | os.PathLike[str], recall: Mapping, subset: Mapping, references: Mapping[str, str],
               members: Mapping[str, Sequence[str]], gallery: Sequence[str], prefix: str = "cirr_test1_") -> list[Path]:
    """Validate, then write `<prefix>recall.json` and `<prefix>recall_subset.json`; nothing is written if
    either fails."""
    errors = validate_cirr(recall, subset, references, members, gallery)
    for name, doc in (("recall", recall), ("recall_subset", subset)):
        size = len(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        if size > CIRR_MAX_BYTES:
            errors.append(f"{name}: {size:,} bytes, the server accepts at most {CIRR_MAX_BYTES:,}")
    if errors:
        raise InputError("CIRR submission failed validation, nothing written: " + "; ".join(errors[:10]))
    out = Path(out_dir)
    paths = [out / f"{prefix}recall.json", out / f"{prefix}recall_subset.json"]
    _dump(paths[0], dict(recall), True)
    _dump(paths[1], dict(subset), True)
    return paths


def write_circo(path: str | os.PathLike[str], sub: Mapping, n_queries: int,
                gallery_ids: Sequence[str | int] | None = None) -> Path:
    errors = validate_circo(sub, n_queries, gallery_ids)
    if errors:
        raise InputError("CIRCO submission failed validation, nothing written: " + "; ".join(errors[:10]))
    path = Path(path)
    _dump(path, {k: sub[k] for k in sorted(sub, key=int)}, False)
    return path
