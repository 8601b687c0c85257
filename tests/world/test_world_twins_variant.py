"""benchmarks/world_twins.py's variant world: only the CIRR-like gallery grows (by re-drawings of its references,
appended after every other image), so every other file of the world, and so every trained artefact, is the
shipped world's."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _patch() -> str:
    spec = importlib.util.spec_from_file_location("world_twins", ROOT / "benchmarks" / "world_twins.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._PATCH


def test_more_twins_change_only_the_cirr_gallery(tmp_path):
    for name, n in (("shipped", "0"), ("variant", "2")):
        subprocess.run([sys.executable, "-c", _patch(), str(tmp_path / name), "5", n, "tiny"], check=True)
    a, b = tmp_path / "shipped", tmp_path / "variant"
    for f in ("pairs.json", "unlabelled.json", "text_triplets.json", "cir_train.json", "eval_circo.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ca, cb = (json.loads((w / "eval_cirr.json").read_text()) for w in (a, b))
    assert ca["queries"] == cb["queries"] and cb["gallery"][: len(ca["gallery"])] == ca["gallery"]
    refs = list(dict.fromkeys(q["reference"] for q in ca["queries"]))
    extra = cb["gallery"][len(ca["gallery"]):]
    assert len(extra) == 2 * len(refs)
    sa, sb = (json.loads((w / "scenes.json").read_text()) for w in (a, b))
    assert all(sb[i] == sa[i] for i in sa)  # every shipped image is the same scene under the same id
    assert [sb[i] for i in extra] == [sa[r] for r in refs for _ in range(2)]  # the twins: each reference again
    for i in sa:  # and drawn the same (same id, same jitter)
        assert (a / "images" / f"{i}.png").read_bytes() == (b / "images" / f"{i}.png").read_bytes()
