"""The experiments layer's pieces: one artefact cache, settings as data, recipe discovery, and the demo never
writing over the user's own default model."""

import json

import pytest

from zscir.errors import InputError
from zscir.experiments import artifact_key, cached_artifact, list_recipes, load_settings, recipe
from zscir.experiments.settings import SETTINGS_DIR


def _build_counter():
    calls = []

    def build(out):
        calls.append(out)
        out.mkdir()
        (out / "weights.txt").write_text("w")

    return calls, build


def test_artifact_is_built_once_per_key_and_rebuilt_when_settings_change(tmp_path):
    calls, build = _build_counter()
    a = cached_artifact(tmp_path, "thing", {"steps": 3}, {"backbone": "fp"}, build)
    b = cached_artifact(tmp_path, "thing", {"steps": 3}, {"backbone": "fp"}, build)
    assert a == b and len(calls) == 1 and (a / "weights.txt").is_file()
    assert json.loads((a / "artifact.json").read_text())["key"] == artifact_key("thing", {"steps": 3}, {"backbone": "fp"})
    c = cached_artifact(tmp_path, "thing", {"steps": 4}, {"backbone": "fp"}, build)
    d = cached_artifact(tmp_path, "thing", {"steps": 3}, {"backbone": "other"}, build)
    assert len({a, c, d}) == 3 and len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folders left


def test_unkeyed_artifact_is_rebuilt_in_place_and_a_foreign_folder_is_never_touched(tmp_path):
    calls, build = _build_counter()
    a = cached_artifact(tmp_path, "model", {"epochs": 1}, {}, build, keyed_folder=False)
    b = cached_artifact(tmp_path, "model", {"epochs": 2}, {}, build, keyed_folder=False)
    assert a == b == tmp_path / "model" and len(calls) == 2
    assert json.loads((b / "artifact.json").read_text())["settings"] == {"epochs": 2}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(InputError, match="is never overwritten"):
        cached_artifact(tmp_path, "mine", {}, {}, build, keyed_folder=False)
    assert (mine / "thesis.txt").read_text() == "precious"


def test_a_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def broken(out):
        out.mkdir()
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_artifact(tmp_path, "thing", {}, {}, broken)
    assert list(tmp_path.iterdir()) == []
    calls, build = _build_counter()
    cached_artifact(tmp_path, "thing", {}, {}, build)
    assert len(calls) == 1


def test_settings_files_build_trainer_configs_and_refuse_typos(tmp_path):
    from zscir.train.pseudo_token import MapperTrainConfig

    assert {"quick", "default", "large", "tiny"} <= {p.stem for p in SETTINGS_DIR.glob("*.toml")}
    s = load_settings("quick", seed=3, device="cpu")
    cfg = s.config("pic2word", MapperTrainConfig)
    assert (cfg.steps, cfg.seed, cfg.device) == (40, 3, "cpu")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pic2word]\nstepz = 4\n")
    with pytest.raises(InputError, match=r"bad.toml \[pic2word\]: unknown setting\(s\) \['stepz'\]"):
        load_settings("quick", path=bad).config("pic2word", MapperTrainConfig)
    with pytest.raises(InputError, match="no such settings file"):
        load_settings("enormous")
    (tmp_path / "broken.toml").write_text("[pic2word\n")
    with pytest.raises(InputError, match="not a valid TOML"):
        load_settings("quick", path=tmp_path / "broken.toml")


def test_the_engine_table_reaches_every_trainer_and_auto_precision_is_resolved(tmp_path, monkeypatch):
    import zscir.utils.runtime as runtime
    from zscir.train.composing import ComposingConfig
    from zscir.train.pretrain import PretrainConfig
    from zscir.train.pseudo_token import MapperTrainConfig

    f = tmp_path / "s.toml"
    f.write_text('[engine]\nprecision = "auto"\ngrad_clip = 2.0\n[pic2word]\nsteps = 3\n'
                 '[composing]\nprecision = "fp32"\n')
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, native=native: native)
        s = load_settings("quick", device="cpu", path=f)
        p2w = s.config("pic2word", MapperTrainConfig)
        assert (p2w.precision, p2w.grad_clip, p2w.steps) == (want, 2.0, 3)
        assert s.config("pretrain", PretrainConfig).precision == want  # no table of its own: [engine] alone
        assert s.config("composing", ComposingConfig).precision == "fp32"  # its own table wins
    # the shipped sizes train in "auto"; the tests' tiny world keeps fp32 (exact comparisons)
    assert load_settings("quick").table("engine") == {"precision": "auto"}
    assert load_settings("tiny").table("engine") == {}
    f.write_text("[engine]\nstepz = 3\n")
    with pytest.raises(InputError, match=r"s.toml \[engine\]: unknown setting\(s\) \['stepz'\]"):
        load_settings("quick", path=f)
    for bad in ('precision = "fp64"', "batch = 3"):  # the evaluation's table takes one known precision
        f.write_text(f"[evaluation]\n{bad}\n")
        with pytest.raises(InputError, match=r"s.toml \[evaluation\]: only precision"):
            load_settings("quick", path=f)


def test_recipes_are_discovered_in_table_order_and_a_new_one_needs_no_list():
    names = list(list_recipes())
    assert names[:4] == ["image", "text", "sum", "slerp"]
    assert names.index("pic2word") < names.index("two-stage") < names.index("pic2word+rtd") < names.index("isa")

    @recipe("test/new-method", order=15)
    def _new(ctx):
        return None

    try:
        names = list(list_recipes())
        assert names.index("test/new-method") == 1
    finally:
        from zscir.experiments import recipes as r

        r._RECIPES.pop("test/new-method")


def test_default_backbone_falls_back_to_the_demos_model_and_prefers_the_users(tmp_path, monkeypatch):
    from zscir.backbones import default_model_path, own_default_path

    monkeypatch.setenv("ZSCIR_HOME", str(tmp_path))
    models = tmp_path / "models"
    (models / "default-quick-s0").mkdir(parents=True)
    (models / "default-quick-s0" / "config.json").write_text("{}")
    assert default_model_path() == models / "default-quick-s0"
    (models / "default-default-s0").mkdir()
    (models / "default-default-s0" / "config.json").write_text("{}")
    assert default_model_path() == models / "default-default-s0"
    own_default_path().mkdir()
    assert default_model_path() == models / "default"


def test_a_world_of_an_older_version_is_regenerated(tmp_path, monkeypatch):
    """`zscir demo` reuses its world, unless the generator's version changed: then the world is made again
    (an old world's protocols are not the current ones, and load_world refuses it)."""
    import json

    from zscir.experiments.context import ensure_world
    from zscir.world.generate import VERSION

    monkeypatch.setenv("ZSCIR_HOME", str(tmp_path))
    path = ensure_world("tiny", 3)
    meta = path / "world.json"
    first = meta.stat().st_mtime_ns
    assert ensure_world("tiny", 3) == path and meta.stat().st_mtime_ns == first  # reused
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "version": VERSION - 1}))
    ensure_world("tiny", 3)
    assert json.loads(meta.read_text())["version"] == VERSION


def test_an_artefact_key_sees_a_world_edited_in_place_but_not_a_grown_evaluation(tmp_path, monkeypatch):
    """The world's part of an artefact key digests its training files: a world rebuilt or edited at the same
    path (same seed, size and version) must not reuse what was trained on the old one, while one whose
    evaluation only grew keeps its artefacts."""
    from types import SimpleNamespace

    from zscir.experiments.context import ensure_world, world_fingerprint

    monkeypatch.setenv("ZSCIR_HOME", str(tmp_path))
    path = ensure_world("tiny", 4)
    world = SimpleNamespace(root=path, meta=json.loads((path / "world.json").read_text()))
    before = world_fingerprint(world)
    assert world_fingerprint(world) == before  # stable
    cirr = json.loads((path / "eval_cirr.json").read_text())
    (path / "eval_cirr.json").write_text(json.dumps({**cirr, "queries": cirr["queries"][:3]}))
    assert world_fingerprint(world) == before  # the evaluation is not what was trained on
    pairs = json.loads((path / "pairs.json").read_text())
    (path / "pairs.json").write_text(json.dumps(pairs[1:]))
    assert world_fingerprint(world) != before
