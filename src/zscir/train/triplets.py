"""Text triplets (reference caption, modification text, target caption) for RTD, from three sources:

- the synthetic world's own `text_triplets.json`;
- a JSONL file, one `{"reference": ..., "modification": ..., "target": ...}` object per line (malformed lines
  are reported by line number and skipped; more than `max_bad_fraction` of them and the file is refused);
- any caption list, through a rule-based generator (`generate_triplets`): swap an attribute word (colour,
  size, shape, material, position, count) for another of its kind, or add / remove a phrase built from the
  corpus' own attribute words. Users with only captions can train.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir.errors import InputError

log = logging.getLogger(__name__)

FIELDS = ("reference", "modification", "target")


@dataclass(frozen=True)
class Triplet:
    reference: str
    modification: str
    target: str

    def as_dict(self) -> dict[str, str]:
        return {"reference": self.reference, "modification": self.modification, "target": self.target}


def _as_triplet(obj: object) -> Triplet:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    vals = []
    for k in FIELDS:
        v = obj[k]
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{k!r} is not a non-empty string")
        vals.append(" ".join(v.split()))
    return Triplet(*vals)


def triplets_from_dicts(rows: Iterable[dict]) -> list[Triplet]:
    """Validate in-memory triplets (e.g. a world's `text_triplets`)."""
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(_as_triplet(r))
        except ValueError as e:
            raise InputError(f"triplet {i}: {e}") from None
    return out


def read_triplets_jsonl(path: str | Path, max_bad_fraction: float = 0.05) -> list[Triplet]:
    """Read a JSONL triplet file. Blank lines are ignored; malformed lines are logged with their line numbers
    and skipped; if more than `max_bad_fraction` of the non-blank lines are bad the file is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: triplet file not found")
    good: list[Triplet] = []
    bad: list[tuple[int, str]] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                good.append(_as_triplet(json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append((lineno, f"invalid JSON ({e.msg})"))
            except ValueError as e:
                bad.append((lineno, str(e)))
    total = len(good) + len(bad)
    if total == 0:
        raise InputError(f"{path}: no triplets")
    if bad:
        shown = "; ".join(f"line {n}: {why}" for n, why in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        frac = len(bad) / total
        if frac > max_bad_fraction:
            raise InputError(
                f"{path}: {len(bad)} of {total} lines are malformed ({frac:.0%} > the allowed {max_bad_fraction:.0%}): "
                f"{shown}{more}"
            )
        log.warning("%s: skipped %d malformed line(s): %s%s", path, len(bad), shown, more)
    return good


def write_triplets_jsonl(path: str | Path, triplets: Sequence[Triplet]) -> None:
    from zscir.utils.io import write_text

    write_text(path, "".join(json.dumps(t.as_dict()) + "\n" for t in triplets))


def read_captions(path: str | Path) -> list[str]:
    """Captions from a text file (one per line), a JSON list of strings, or a JSON list of {"caption": ...}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: caption file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON ({e.msg})") from None
        if not isinstance(doc, list):
            raise InputError(f"{path}: expected a JSON list of captions")
        raw: list[Any] = [d.get("caption") if isinstance(d, dict) else d for d in doc]
    else:
        raw = text.splitlines()
    caps = [" ".join(c.split()) for c in raw if isinstance(c, str) and c.strip()]
    if not caps:
        raise InputError(f"{path}: no captions")
    return caps


# --- the rule-based generator ----------------------------------------------------------------------------
#: word classes whose members can replace each other ("swap an attribute word")
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "brown", "black", "white",
               "grey", "gray", "beige", "violet", "magenta", "golden", "silver"),
    "size": ("small", "large", "big", "tiny", "little", "huge"),
    "shape": ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "cube",
              "sphere", "cylinder", "cone", "ring", "heart", "oval", "rectangle"),
    "material": ("wooden", "metal", "metallic", "plastic", "glass", "rubber", "stone", "leather", "cotton"),
    "position": ("left", "right", "top", "bottom", "centre", "center", "middle"),
    "count": ("one", "two", "three", "four", "five"),
    "pattern": ("striped", "dotted", "plain", "checked", "floral"),
}
_SYNONYMS = ({"large", "big", "huge"}, {"small", "tiny", "little"}, {"grey", "gray"}, {"centre", "center", "middle"},
             {"metal", "metallic"})
_SWAP_PHRASES = ("make it {new} instead of {old}", "change {old} to {new}", "{new} instead of {old}",
                 "replace the {old} with {new}")
_ADD_PHRASES = ("add {p}", "also include {p}", "there should also be {p}")
_REMOVE_PHRASES = ("remove {p}", "take away {p}", "without {p}")
_WORD = re.compile(r"[A-Za-z]+")


def _same_meaning(a: str, b: str) -> bool:
    return a == b or any(a in s and b in s for s in _SYNONYMS)


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _corpus_vocab(captions: Sequence[str]) -> dict[str, list[str]]:
    """The attribute words of each class that actually occur in the captions (the swap pool)."""
    seen = {w.lower() for c in captions for w in _WORD.findall(c)}
    return {k: [w for w in ws if w in seen] for k, ws in ATTRIBUTE_WORDS.items()}


def _swap(rng: random.Random, cap: str, vocab: dict[str, list[str]]) -> Triplet | None:
    spots = []
    for m in _WORD.finditer(cap):
        w = m.group(0).lower()
        for cls, words in vocab.items():
            if w in words and len([x for x in words if not _same_meaning(x, w)]) > 0:
                spots.append((m, cls))
    if not spots:
        return None
    m, cls = rng.choice(spots)
    old = m.group(0).lower()
    new = rng.choice([x for x in vocab[cls] if not _same_meaning(x, old)])
    target = cap[: m.start()] + new + cap[m.end():]
    return Triplet(cap, rng.choice(_SWAP_PHRASES).format(old=old, new=new), target)


def _phrase(rng: random.Random, vocab: dict[str, list[str]]) -> str | None:
    nouns = vocab["shape"]
    if not nouns:
        return None
    words = [rng.choice(vocab[c]) for c in ("size", "colour", "material") if vocab[c] and rng.random() < 0.7]
    return _article(" ".join(words + [rng.choice(nouns)]))


def _add_or_remove(rng: random.Random, cap: str, vocab: dict[str, list[str]]) -> Triplet | None:
    p = _phrase(rng, vocab)
    if p is None:
        return None
    joined = f"{cap} {rng.choice(('and', 'with'))} {p}"
    if rng.random() < 0.5:
        return Triplet(cap, rng.choice(_ADD_PHRASES).format(p=p), joined)
    return Triplet(joined, rng.choice(_REMOVE_PHRASES).format(p="the " + p.split(" ", 1)[1]), cap)


def generate_triplets(captions: Sequence[str], per_caption: int = 2, seed: int = 0) -> list[Triplet]:
    """Rule-based triplets from a caption list: per caption up to `per_caption` edits, each either an attribute
    swap or an added/removed phrase (built from attribute words found in the corpus). Deterministic in seed."""
    caps = [" ".join(c.split()) for c in captions if isinstance(c, str) and c.strip()]
    if not caps:
        raise InputError("no captions to generate triplets from")
    rng = random.Random(seed)
    vocab = _corpus_vocab(caps)
    out: list[Triplet] = []
    seen: set[Triplet] = set()
    for cap in caps:
        for _ in range(per_caption):
            t = _swap(rng, cap, vocab) if rng.random() < 0.65 else _add_or_remove(rng, cap, vocab)
            t = t or _swap(rng, cap, vocab) or _add_or_remove(rng, cap, vocab)
            if t is not None and t not in seen and t.reference != t.target:
                seen.add(t)
                out.append(t)
    if not out:
        raise InputError("the captions contain no attribute words the generator knows (colours, sizes, shapes, "
                         "materials, positions, counts, patterns); supply a triplet JSONL instead")
    return out


# --- triplet sources -------------------------------------------------------------------------------------
def load_triplet_source(world: str = "", triplets: str = "", captions: str = "", per_caption: int = 2,
                        seed: int = 0, max_bad_fraction: float = 0.05,
                        caption_column: str = "") -> tuple[list[Triplet], str]:
    """(triplets, description) from exactly one of: a world folder, a JSONL file, captions (plain text one per
    line, a JSONL/CSV/TSV column, a JSON list, or WebDataset shards' .txt; read by the data layer)."""
    given = [x for x in (world, triplets, captions) if x]
    if len(given) != 1:
        raise InputError("give exactly one triplet source: --world DIR, --triplets FILE.jsonl or --captions FILE")
    if world:
        from zscir.world import load_world

        return triplets_from_dicts(load_world(world).text_triplets), f"world:{world}"
    if triplets:
        return read_triplets_jsonl(triplets, max_bad_fraction), f"jsonl:{triplets}"
    from zscir.data import iter_texts

    caps = list(dict.fromkeys(iter_texts(captions, caption_column or None)))
    if not caps:
        raise InputError(f"{captions}: no captions")
    return generate_triplets(caps, per_caption, seed), f"rules:{captions}"
