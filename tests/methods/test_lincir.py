"""LinCIR: a token mapper trained on captions alone (zscir/methods/lincir.py, zscir/train/lincir.py), on a tiny
random HF CLIP: the keyword rule, the noise, `zscir train lincir` on a captions file / a world / a pairs listing,
the checkpoint served as "lincir" (and never as pic2word, nor a pic2word one as lincir), `zscir compose` and
`zscir eval` on it, and bad input refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from zscir.cli import main
from zscir.errors import CheckpointError, InputError
from zscir.methods import build_method, methods_for_checkpoint
from zscir.methods.lincir import LinCIR
from zscir.methods.mapped import Pic2Word
from zscir.train.lincir import (
    LinCIRConfig,
    clean_captions,
    encode_masked,
    mask_keywords,
    self_masking_noise,
    train_lincir,
)

CAPTIONS = ["a red cat on the mat", "a big dog on the mat", "the red dog", "a photo of a big cat",
            "a cat on the big red mat", "the dog of the cat", "a big red dog on a mat", "a photo of the mat"]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hf_tiny import tiny_clip
    from zscir.backbones import load_backbone
    from zscir.world import generate_world

    root = tmp_path_factory.mktemp("lincir")
    spec = f"hf:{tiny_clip(root / 'clip', image_size=64, patch=32)}"
    caps = root / "captions.txt"
    caps.write_text("\n".join(CAPTIONS + CAPTIONS[:2]) + "\n")  # duplicates are dropped
    world = generate_world(root / "world", seed=3, size="tiny", progress=False)
    return {"root": root, "spec": spec, "backbone": load_backbone(spec), "captions": caps, "world": world}


@pytest.fixture(scope="module")
def trained(setup):
    """`zscir train lincir --captions FILE` (and a pic2word checkpoint on the same backbone, to tell apart)."""
    from zscir.train.pseudo_token import pic2word_config, train_pic2word
    from zscir.world import load_world

    out = setup["root"] / "lincir-captions"
    rc = main(["train", "lincir", "--captions", str(setup["captions"]), "--backbone", setup["spec"], "--out", str(out),
               "--steps", "3", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    p2w = train_pic2word(pic2word_config(world="w", out=str(setup["root"] / "p2w"), steps=1, batch_size=4, hidden=16,
                                        progress=False), backbone=setup["backbone"], world=load_world(setup["world"]))
    return out, p2w.path


def test_keyword_masking():
    assert mask_keywords("a picture of a big orange star at the bottom right, a striped background") == \
        ("$ of $ at $, $", 4)
    assert mask_keywords("on a gray backdrop there is a big yellow cross") == ("on $ there is $", 2)
    assert mask_keywords("a dog sitting on the red mat.") == ("$ sitting on $.", 2)  # common verbs stay text
    assert mask_keywords("(the red car) is here") == ("($) is here", 1)  # punctuation kept around the token
    assert mask_keywords("it is on the") == ("it is on $", 1)  # no content word: the last word
    assert mask_keywords("a $ red cat") == ("$", 1)  # a placeholder already in the caption is dropped first
    assert mask_keywords("two cats, and a dog", placeholder="#") == ("two #, and #", 2)
    with pytest.raises(InputError):
        mask_keywords("   ")
    assert clean_captions(["a  cat", "a cat", " ", "a $ dog"]) == ["a cat", "a dog"]
    with pytest.raises(InputError, match="at least 2"):
        clean_captions(["one caption", "one  caption"])


def test_noise_changes_the_mapper_input(setup, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    noise = self_masking_noise(2000, 64, 0.8, g)
    norms = noise.norm(dim=-1)
    assert norms.min() < 0.1 and 0.3 < norms.mean() < 0.5 and norms.max() < 1.2  # u * 0.8, u ~ U(0, 1)
    assert torch.equal(noise, self_masking_noise(2000, 64, 0.8, torch.Generator().manual_seed(0)))
    # what the mapper sees during training: the unit caption embedding, moved by the noise unless --noise 0
    import zscir.train.lincir as T
    from zscir.nn.mappers import TokenMapper

    seen: list[torch.Tensor] = []

    class Spy(TokenMapper):
        def forward(self, embedding, local=None):
            seen.append(embedding.detach().clone())
            return super().forward(embedding, local)

    monkeypatch.setattr(T, "TokenMapper", Spy)
    b = setup["backbone"]
    for noise_scale in (0.0, 1.0):
        train_lincir(LinCIRConfig(out=str(tmp_path / f"n{noise_scale}"), steps=1, batch_size=8, noise=noise_scale,
                                  progress=False, feature_cache=str(tmp_path / "cache")), backbone=b, captions=CAPTIONS)
    clean, noisy = seen
    assert torch.allclose(clean.norm(dim=-1), torch.ones(8), atol=1e-5)  # the normalised text embeddings
    assert not torch.allclose(noisy, clean) and (noisy - clean).norm(dim=-1).max() > 0.05


def test_masked_prompts_take_one_token_at_every_placeholder(setup):
    b = setup["backbone"]
    tok = torch.randn(3, 1, b.word_dim)
    prompts = ["$ on $", "a photo of $", "$ of $ on $"]
    got = encode_masked(b, prompts, [2, 1, 3], tok)
    for i, (p, k) in enumerate(zip(prompts, [2, 1, 3])):
        one = b.encode_text_with_tokens([p], tok[i : i + 1].expand(-1, k, -1))
        assert torch.allclose(got[i], one[0], atol=1e-5)


def test_trained_from_a_captions_file_composes_and_is_lincir_only(setup, trained, capsys):
    out, p2w = trained
    b = setup["backbone"]
    doc = json.loads((out / "config.json").read_text())
    assert doc["kind"] == "zscir.token-mapper" and doc["config"]["method"] == "lincir"
    assert doc["trained_on"]["captions"] == len(CAPTIONS) and doc["steps"] == 3
    assert methods_for_checkpoint(out) == ["lincir"] and methods_for_checkpoint(p2w) == ["pic2word"]
    m = build_method(None, b, [out])
    assert isinstance(m, LinCIR) and m.mapper.cfg.hidden == 4 * b.embed_dim and m.mapper.cfg.n_tokens == 1
    assert isinstance(build_method(None, b, [p2w]), Pic2Word) and not isinstance(build_method(None, b, [p2w]), LinCIR)
    with pytest.raises(CheckpointError, match="lincir"):
        build_method("pic2word", b, [out])
    with pytest.raises(CheckpointError, match="pic2word"):
        build_method("lincir", b, [p2w])
    with pytest.raises(InputError, match="zscir train lincir"):
        build_method("lincir", b)
    px = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        q = m.compose(px, ["make it red", "on the mat"])
        fast = m.compose_embedded(b.encode_image(px), ["make it red", "on the mat"])
    assert q.shape == (2, b.embed_dim) and torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert torch.allclose(q, fast, atol=1e-5)
    # the CLI, the method inferred from the checkpoint
    img = next((setup["world"] / "images").glob("*.png"))
    rc, stdout, err = run(capsys, "compose", "--backbone", setup["spec"], "--checkpoint", out, "--image", img,
                          "--text", "make it red", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["method"] == "lincir"


def test_eval_index_search_serve_on_the_checkpoint(setup, trained, capsys, tmp_path, monkeypatch):
    from bench_fixtures import make_cirr

    out, _ = trained
    spec = setup["spec"]
    cirr = make_cirr(tmp_path / "CIRR", n_images=12)
    rc, stdout, err = run(capsys, "eval", "--benchmark", "cirr", "--root", cirr, "--backbone", spec,
                          "--checkpoint", out, "--no-cache", "--out", tmp_path / "r.json")
    assert rc == 0, err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["method"]["name"] == "lincir" and {"R@1", "R@5"} <= set(doc["summary"])
    # index (the backbone's own gallery tower) + search + serve, as for pic2word
    idx = tmp_path / "idx"
    rc, _, err = run(capsys, "index", cirr / "dev", "--out", idx, "--backbone", spec, "--method", "lincir",
                     "--checkpoint", out, "--no-progress")
    assert rc == 0, err
    ref = cirr / "dev" / "dev-0-0-img0.png"
    rc, stdout, err = run(capsys, "search", idx, "--image", ref, "--text", "make it red", "--checkpoint", out, "-k", "3",
                          "--json")
    assert rc == 0, err
    found = json.loads(stdout)
    assert found["method"] == "lincir" and len(found["results"]) == 3
    fastapi = pytest.importorskip("fastapi.testclient")
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    rc, stdout, err = run(capsys, "serve", idx, "--checkpoint", out)
    assert rc == 0, err
    client = fastapi.TestClient(apps[0])
    assert "lincir" in [m["name"] for m in client.get("/methods").json()["methods"]]
    r = client.post("/search", data={"text": "make it red", "method": "lincir", "k": "3"},
                    files={"image": ("ref.png", ref.read_bytes(), "image/png")})
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == [h["id"] for h in found["results"]]


def test_trains_on_a_world_and_on_pairs(setup, capsys):
    from zscir.world import load_world

    root, spec = setup["root"], setup["spec"]
    rc, stdout, err = run(capsys, "train", "lincir", "--world", setup["world"], "--backbone", spec, "--out",
                          root / "lincir-world", "--steps", "2", "--batch-size", "8", "--loss", "infonce",
                          "--no-progress")
    assert rc == 0, err
    w = load_world(setup["world"])
    doc = json.loads((root / "lincir-world" / "config.json").read_text())
    assert doc["trained_on"]["captions"] == len({p["caption"] for p in w.pairs}) and "world:" in stdout
    assert isinstance(build_method(None, setup["backbone"], [root / "lincir-world"]), LinCIR)
    listing = root / "pairs.jsonl"
    listing.write_text("".join(json.dumps({"image": str(w.image_path(p["image"])), "caption": p["caption"]}) + "\n"
                               for p in w.pairs[:10]))
    rc, stdout, err = run(capsys, "train", "lincir", "--pairs", listing, "--backbone", spec, "--out",
                          root / "lincir-pairs", "--steps", "1", "--batch-size", "4", "--no-progress")
    assert rc == 0, err
    assert json.loads((root / "lincir-pairs" / "config.json").read_text())["trained_on"]["captions"] == 10


def test_bad_input_is_refused_before_any_work(setup, tmp_path, capsys):
    spec = setup["spec"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    common = ["--backbone", spec, "--no-progress"]
    rc, _, err = run(capsys, "train", "lincir", "--captions", empty, "--out", tmp_path / "o", *common)
    assert rc == 2 and "at least 2" in err and not (tmp_path / "o").exists()
    for bad in (["--steps", "0"], ["--steps", "-3"], ["--epochs", "0"], ["--batch-size", "0"], ["--noise", "-1"],
                ["--dropout", "1.5"]):
        rc, _, err = run(capsys, "train", "lincir", "--captions", setup["captions"], "--out", tmp_path / "o", *common,
                         *bad)
        assert rc == 2 and err.strip(), bad
    rc, _, err = run(capsys, "train", "lincir", "--captions", setup["captions"], "--world", setup["world"], "--out",
                     tmp_path / "o", *common)
    assert rc == 2 and "exactly one" in err
    rc, _, err = run(capsys, "train", "lincir", "--out", tmp_path / "o", *common)
    assert rc == 2 and "exactly one" in err
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    rc, _, err = run(capsys, "train", "lincir", "--captions", setup["captions"], "--out", victim, *common)
    assert rc == 2 and (victim / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError):
        train_lincir(LinCIRConfig(out=str(tmp_path / "o"), steps=0, epochs=0.0), backbone=setup["backbone"],
                     captions=CAPTIONS)
    with pytest.raises(InputError, match="loss"):
        train_lincir(LinCIRConfig(out=str(tmp_path / "o"), steps=1, loss="mse"), backbone=setup["backbone"],
                     captions=CAPTIONS)


def test_resume_after_a_crash_reaches_the_uninterrupted_weights(setup, tmp_path):
    """--save-every: a run killed after its first resume state, restarted, ends with the weights of one run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    args = ["train", "lincir", "--captions", str(setup["captions"]), "--backbone", setup["spec"], "--steps", "3",
            "--batch-size", "4", "--save-every", "1", "--no-progress", "--feature-cache", str(tmp_path / "cache")]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    code = "import sys, zscir.train.lincir; from zscir.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "ZSCIR_TRAIN_CRASH_AFTER_SAVE": "1"}
    crashed = subprocess.run([sys.executable, "-c", code, *args, "--out", str(tmp_path / "resumed")], env=env,
                             capture_output=True, text=True)
    assert crashed.returncode == 137, crashed.stderr
    assert (tmp_path / "resumed.partial" / "state.pt").is_file() and not (tmp_path / "resumed").exists()
    assert main(args + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
