"""The frozen-trunk pass is computed once per world split and shared: pre-training caches the pairs' trunk
features (keyed by the trunk, not by the heads it trains), stage 1 reads them; pic2word caches the unlabelled
images' features, ISA reads them. A trunk with other weights never gets those entries."""

import pytest
import torch

from zscir.backbones.default import DefaultBackbone
from zscir.train.isa import ISATrainConfig, train_isa
from zscir.train.pretrain import PretrainConfig, pretrain
from zscir.train.pseudo_token import mapping_config, pic2word_config, train_mapping, train_pic2word
from zscir.world import generate_world, load_world

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    generate_world(root / "world", seed=0, size="tiny")
    return root


def _count_trunk_calls(monkeypatch, backbone) -> list[int]:
    calls = [0]
    real = backbone.image_tokens

    def counting(pixels):
        if pixels.abs().sum() > 0:  # not the one blank image that sizes a mapper or an ISA grid
            calls[0] += len(pixels)
        return real(pixels)

    monkeypatch.setattr(backbone, "image_tokens", counting)
    return calls


def test_one_trunk_pass_per_split_across_trainers(tiny, tmp_path, monkeypatch):
    cache = str(tiny / "features")
    world_dir = str(tiny / "world")
    pretrain(PretrainConfig(world=world_dir, out=str(tmp_path / "model"), epochs=1, batch_size=16,
                            feature_cache=cache, progress=False))
    model = DefaultBackbone.load(tmp_path / "model")
    world = load_world(world_dir)
    calls = _count_trunk_calls(monkeypatch, model)

    # stage 1 reads the pairs, which pre-training already passed through the same trunk
    train_mapping(mapping_config(out=str(tmp_path / "s1"), steps=1, batch_size=8, hidden=32, feature_cache=cache,
                                 progress=False), backbone=model, world=world)
    assert calls[0] == 0

    # pic2word computes the unlabelled images once; ISA (both variants) reuses them
    train_pic2word(pic2word_config(out=str(tmp_path / "p2w"), steps=1, batch_size=8, hidden=32, feature_cache=cache,
                                   progress=False), backbone=model, world=world)
    assert calls[0] == len(world.unlabelled)
    calls[0] = 0
    train_isa(ISATrainConfig(out=str(tmp_path / "isa"), mode="symmetric", n_tokens=2, steps=1, batch_size=8,
                             feature_cache=cache, progress=False), backbone=model, world=world)
    assert calls[0] == 0


def test_a_changed_trunk_never_reads_the_plain_trunks_entry():
    torch.manual_seed(0)
    a = DefaultBackbone()
    key = a.feature_fingerprint("image_tokens")
    torch.manual_seed(1)
    b = DefaultBackbone()  # other heads, same trunk: same trunk key, other model fingerprint
    assert b.feature_fingerprint("image_tokens") == key and b.fingerprint() != a.fingerprint()
    with torch.no_grad():
        next(b.image_tower.trunk.parameters()).add_(1e-3)  # a tuned trunk
    assert b.feature_fingerprint("image_tokens") != key
    assert a.feature_fingerprint("text_trunk") != key


def test_text_embeddings_are_the_head_on_the_cached_trunk_pass(tmp_path, monkeypatch):
    from zscir.data import text_features
    from zscir.train.data import frozen_text_embeddings

    torch.manual_seed(0)
    model = DefaultBackbone().eval()
    # more than 10 texts: their keys ("0", "1", ..., "10") sort otherwise as strings than as rows
    texts = ["a red cube", "two blue spheres", "a red cube", "a green cone on grass"] + \
        [f"{n} yellow rings" for n in ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    with torch.no_grad():
        want = model.encode_text(texts)
    calls = [0]
    real = model.text_trunk

    def counting(batch, *a, **k):
        calls[0] += len(batch)
        return real(batch, *a, **k)

    monkeypatch.setattr(model, "text_trunk", counting)
    cache = str(tmp_path / "features")
    trunk = text_features(model, texts, "text_trunk", cache=cache)
    assert calls[0] == len(texts) and len(trunk) == len(texts)
    emb = text_features(model, texts, "text_embedding", cache=cache, batch_size=4).tensor().float()
    assert calls[0] == len(texts)  # the trunk's entry was read, not recomputed
    assert torch.allclose(emb, want, atol=1e-5)
    # LinCIR keeps the distinct captions; it reads the entry of the captions as read (pre-training's key)
    kept = list(dict.fromkeys(texts))
    got = frozen_text_embeddings(model, kept, cache, within=texts)
    assert calls[0] == len(texts) and torch.allclose(got, want[[0, 1] + list(range(3, len(texts)))], atol=1e-5)
    # captions that are not the source's verbatim (cleaned) are their own list
    frozen_text_embeddings(model, ["a red  cube!"], cache, within=texts)
    assert calls[0] == len(texts) + 1


def test_features_computed_under_autocast_are_their_own_entry(tmp_path):
    from zscir.data import text_features

    torch.manual_seed(0)
    model = DefaultBackbone().eval()
    texts = ["a red cube", "two blue spheres on sand"]
    cache = str(tmp_path / "features")
    fp32 = text_features(model, texts, "text_trunk", cache=cache)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a trainer in bf16: its frozen pass is not the fp32 one
        bf16 = text_features(model, texts, "text_trunk", cache=cache)
        emb = text_features(model, texts, "text_embedding", cache=cache)
    assert fp32.key != bf16.key and bf16.key.extra == "float32|autocast-bfloat16"
    assert emb.key.extra == "float32|autocast-bfloat16"
    assert not torch.equal(fp32.tensor(), bf16.tensor())
    assert text_features(model, texts, "text_trunk", cache=cache).key == fp32.key  # fp32 again: its own entry
