"""The one JSONL reader behind gallery listings and caption files: errors name the file and the line."""

import pytest

from zscir.errors import InputError
from zscir.index.reader import _read_jsonl
from zscir.utils.io import read_jsonl_objects


def test_rows_with_line_numbers_blank_lines_skipped(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"path": "a.png"}\n\n{"path": "b.png", "id": "x"}\n')
    assert read_jsonl_objects(f, "with a 'path'") == [(1, {"path": "a.png"}), (3, {"path": "b.png", "id": "x"})]


@pytest.mark.parametrize("bad, message", [("{oops", r"rows.jsonl:2: not valid JSON"),
                                          ('["a.png"]', r"rows.jsonl:2: expected an object with a 'path'")])
def test_bad_line_is_named(tmp_path, bad, message):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"path": "a.png"}\n' + bad + "\n")
    with pytest.raises(InputError, match=message):
        read_jsonl_objects(f, "with a 'path'")
    with pytest.raises(InputError, match=message):  # the gallery listing goes through it
        _read_jsonl(f)
