"""Text-triplet sources: JSONL with bad lines, the rule-based generator, caption files."""

from __future__ import annotations

import json
import logging

import pytest

from zscir.errors import InputError
from zscir.train.triplets import (
    ATTRIBUTE_WORDS,
    generate_triplets,
    load_triplet_source,
    read_captions,
    read_triplets_jsonl,
    write_triplets_jsonl,
)

GOOD = {"reference": "a red circle", "modification": "make it blue", "target": "a blue circle"}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_skips_malformed_lines_with_line_numbers(tmp_path, caplog):
    lines = [json.dumps(GOOD)] * 40 + ["{not json", json.dumps({"reference": "x", "target": "y"}), "",
                                       json.dumps({**GOOD, "target": "  "})]
    with caplog.at_level(logging.WARNING):
        got = read_triplets_jsonl(_write(tmp_path / "t.jsonl", lines), max_bad_fraction=0.1)
    assert len(got) == 40
    msg = caplog.text
    assert "line 41" in msg and "line 42" in msg and "missing modification" in msg and "line 44" in msg
    assert "line 43" not in msg  # blank lines are ignored


def test_jsonl_refused_past_the_bad_fraction(tmp_path):
    lines = [json.dumps(GOOD)] * 3 + ["nope", "[1, 2]"]
    with pytest.raises(InputError, match=r"2 of 5 lines are malformed.*line 4.*line 5"):
        read_triplets_jsonl(_write(tmp_path / "t.jsonl", lines), max_bad_fraction=0.1)
    with pytest.raises(InputError, match="not found"):
        read_triplets_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="no triplets"):
        read_triplets_jsonl(_write(tmp_path / "e.jsonl", ["", ""]))


def test_generator_is_deterministic_and_edits_are_consistent():
    caps = ["a small red circle on a white background", "a big blue star at the top left", "a green square"]
    a, b = generate_triplets(caps, 4, seed=3), generate_triplets(caps, 4, seed=3)
    assert a == b and len(a) >= len(caps)
    kinds = set()
    for t in a:
        assert t.reference != t.target and t.modification
        ref_words, tgt_words = t.reference.split(), t.target.split()
        if len(ref_words) == len(tgt_words):  # an attribute swap: exactly one word differs, both of one class
            diff = [(x, y) for x, y in zip(ref_words, tgt_words) if x != y]
            assert len(diff) == 1
            old, new = diff[0]
            assert any(old in ws and new in ws for ws in ATTRIBUTE_WORDS.values())
            assert new in t.modification
            kinds.add("swap")
        elif len(tgt_words) > len(ref_words):
            assert t.target.startswith(t.reference)
            kinds.add("add")
        else:
            assert t.reference.startswith(t.target)
            kinds.add("remove")
    assert kinds == {"swap", "add", "remove"}
    with pytest.raises(InputError, match="attribute words"):
        generate_triplets(["hello world", "nothing here"], 2)


def test_caption_files_and_sources(tmp_path):
    (tmp_path / "c.txt").write_text("a red circle\n\n a blue  star \n", encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps([{"caption": "a red circle"}, "a green cube"]), encoding="utf-8")
    assert read_captions(tmp_path / "c.txt") == ["a red circle", "a blue star"]
    assert read_captions(tmp_path / "c.json") == ["a red circle", "a green cube"]
    trips, desc = load_triplet_source(captions=str(tmp_path / "c.txt"))
    assert trips and desc.startswith("rules:")
    write_triplets_jsonl(tmp_path / "out.jsonl", trips)
    back, desc = load_triplet_source(triplets=str(tmp_path / "out.jsonl"))
    assert back == trips and desc.startswith("jsonl:")
    with pytest.raises(InputError, match="exactly one"):
        load_triplet_source()
    with pytest.raises(InputError, match="exactly one"):
        load_triplet_source(triplets="a", captions="b")
