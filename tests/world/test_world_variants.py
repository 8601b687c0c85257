"""benchmarks/world_variants.py's variant worlds: only the CIRR-like protocol grows (twins of its references, or
more queries with their own references), appended after every other image, so every other file of the world,
and so every trained artefact, is the shipped world's."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("world_variants", ROOT / "benchmarks" / "world_variants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass resolves its module by name
    spec.loader.exec_module(mod)
    return mod


def _patch() -> str:
    return _module()._PATCH


def _worlds(tmp_path: Path, twins: str, queries: str) -> tuple[Path, Path]:
    for name, t, q in (("shipped", "0", "0"), ("variant", twins, queries)):
        subprocess.run([sys.executable, "-c", _patch(), str(tmp_path / name), "5", t, "tiny", q], check=True)
    a, b = tmp_path / "shipped", tmp_path / "variant"
    for f in ("pairs.json", "unlabelled.json", "text_triplets.json", "cir_train.json", "eval_circo.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    sa, sb = (json.loads((w / "scenes.json").read_text()) for w in (a, b))
    assert all(sb[i] == sa[i] for i in sa)  # every shipped image is the same scene under the same id
    for i in sa:  # and drawn the same (same id, same jitter)
        assert (a / "images" / f"{i}.png").read_bytes() == (b / "images" / f"{i}.png").read_bytes()
    return a, b


def test_more_twins_change_only_the_cirr_gallery(tmp_path):
    a, b = _worlds(tmp_path, "2", "0")
    ca, cb = (json.loads((w / "eval_cirr.json").read_text()) for w in (a, b))
    assert ca["queries"] == cb["queries"] and cb["gallery"][: len(ca["gallery"])] == ca["gallery"]
    refs = list(dict.fromkeys(q["reference"] for q in ca["queries"]))
    extra = cb["gallery"][len(ca["gallery"]):]
    assert len(extra) == 2 * len(refs)
    sa, sb = (json.loads((w / "scenes.json").read_text()) for w in (a, b))
    assert [sb[i] for i in extra] == [sa[r] for r in refs for _ in range(2)]  # the twins: each reference again


def test_more_queries_append_whole_reference_groups(tmp_path):
    a, b = _worlds(tmp_path, "0", "30")
    ca, cb = (json.loads((w / "eval_cirr.json").read_text()) for w in (a, b))
    n = len(ca["queries"])
    assert cb["queries"][:n] == ca["queries"] and cb["gallery"][: len(ca["gallery"])] == ca["gallery"]
    extra_q, extra_g = cb["queries"][n:], set(cb["gallery"][len(ca["gallery"]):])
    assert len(extra_q) == 30 and [q["id"] for q in cb["queries"]] == list(range(n + 30))
    for q in extra_q:  # each new query is a whole new one: its reference, target and subset are new images
        assert {q["reference"], q["target"], *q["members"]} <= extra_g
    assert json.loads((b / "world.json").read_text())["counts"]["cirr_queries"] == n + 30
    scenes = json.loads((b / "scenes.json").read_text())
    shipped = {json.dumps(scenes[i], sort_keys=True) for i in ca["gallery"]}
    # no new image repeats a shipped one (an identical image would be a second right answer to some query)
    assert not {json.dumps(scenes[i], sort_keys=True) for i in extra_g} & shipped


def test_pooled_margins_average_the_seeds_independent_errors():
    def run(margin: float, se: float) -> dict:
        cell = {"best": "slerp", "baseline": "sum", "margin": margin, "se": se}
        return {"seed": 0, "shipped": {"margins": {"R@10": cell}}, "variant": {"margins": {"R@10": cell}}}

    pool = _module().pooled([run(-1.0, 3.0), run(-3.0, 4.0)], "variant")["R@10"]
    assert pool == {"margin": -2.0, "se": 2.5}  # sqrt(9 + 16) / 2
