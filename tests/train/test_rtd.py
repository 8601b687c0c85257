"""RTD: anchored contrastive loss, refined batches, training (full / LoRA), checkpoints, the method plug-in."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from zscir.errors import CheckpointError, InputError
from zscir.methods.rtd import RTDMethod, load_rtd_text_encoder, with_rtd
from zscir.objectives import info_nce
from zscir.train import rtd as rtd_mod
from zscir.train.rtd import (
    CONCAT_SCHEMES,
    RTDConfig,
    anchored_info_nce,
    load_rtd_start,
    random_batches,
    refined_batches,
    train_rtd,
)
from zscir.train.triplets import Triplet, generate_triplets

CAPS = ["a small red circle on a white background", "a big blue star at the top left",
        "a green square and a yellow triangle", "a tiny purple hexagon on the right",
        "a large orange diamond on a grey backdrop", "a pink cross in the centre"]


def _triplets(n_per=3, seed=0):
    return generate_triplets(CAPS, n_per, seed)


def test_loss_matches_info_nce_without_duplicates_and_masks_duplicates():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    ids = ["a", "b", "c", "d", "e"]
    assert anchored_info_nce(q, k, ids, 0.07).item() == pytest.approx(info_nce(q, k, 1 / 0.07).item(), rel=1e-5)
    # a key identical in text to another pair's key is not a negative of that pair's query
    k2 = k.clone()
    k2[1] = k2[0]
    masked = anchored_info_nce(q, k2, ["a", "a", "c", "d", "e"], 0.07)
    unmasked = anchored_info_nce(q, k2, ids, 0.07)
    assert masked.item() < unmasked.item()


def test_refined_batches_keep_shared_references_together():
    trip = [Triplet(f"ref{i % 4}", f"m{i}", f"t{i}") for i in range(20)]
    batches = refined_batches(trip, 8, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert all(len(b) <= 8 for b in batches)
    where = {}
    for bi, b in enumerate(batches):
        for i in b:
            where.setdefault(trip[i].reference, set()).add(bi)
    assert all(len(s) == 1 for s in where.values())  # groups of 5 fit in one batch
    # a group bigger than a batch is split, nothing lost
    big = [Triplet("same", f"m{i}", f"t{i}") for i in range(11)]
    assert sorted(i for b in refined_batches(big, 4, random.Random(0)) for i in b) == list(range(11))
    assert sorted(i for b in random_batches(20, 8, random.Random(0)) for i in b) == list(range(20))


def test_concat_schemes_and_template_override():
    assert RTDConfig().prompts() == CONCAT_SCHEMES["template"]
    assert RTDConfig(concat="prefix").prompts() == ("$ {text}", "$")
    tpl, ref = RTDConfig(template="a picture of $ which {text}").prompts()
    assert tpl == "a picture of $ which {text}" and ref == "a picture of $"
    with pytest.raises(InputError, match="concatenation"):
        RTDConfig(concat="nope").check()
    with pytest.raises(InputError, match="template"):
        RTDConfig(template="no slot").check()


def test_hard_negative_pairs_are_in_every_batch(tiny_backbone, tiny_mapper, monkeypatch):
    seen = []
    orig = rtd_mod.anchored_info_nce

    def spy(q, k, key_ids, t):
        seen.append(list(key_ids))
        return orig(q, k, key_ids, t)

    monkeypatch.setattr(rtd_mod, "anchored_info_nce", spy)
    trip = _triplets()
    train_rtd(RTDConfig(steps=2, batch_size=6, tune="lora", device="cpu"), tiny_backbone, tiny_mapper, trip,
              progress=False)
    refs = {t.reference for t in trip}
    for keys in seen:
        assert refs & set(keys)  # each query meets its own reference caption as a key (hard negative)
    seen.clear()
    train_rtd(RTDConfig(steps=2, batch_size=6, tune="lora", hard_negatives=False, device="cpu"), tiny_backbone,
              tiny_mapper, trip, progress=False)
    targets = {t.target for t in trip}
    assert all(set(keys) <= targets and len(keys) <= 6 for keys in seen)


def test_full_finetuning_learns_keeps_anchor_and_word_table(tiny_backbone, tiny_mapper, tmp_path):
    before = {k: v.clone() for k, v in tiny_backbone.text_tower.state_dict().items()}
    trip = _triplets(2)
    res = train_rtd(RTDConfig(out=str(tmp_path / "full"), steps=12, batch_size=8, lr=5e-3, noise=0.0, device="cpu"),
                    tiny_backbone, tiny_mapper, trip, progress=False)
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4  # it learns
    # the anchor (original tower) is untouched
    after = tiny_backbone.text_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the word table (pseudo-token space) is never tuned, the transformer is
    student = res.student
    table = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(student.text_tower.state_dict()[table], before[table])
    assert not torch.equal(student.text_tower.state_dict()["encoder.encoder.layer.0.attention.self.query.weight"],
                           before["encoder.encoder.layer.0.attention.self.query.weight"])
    # the checkpoint reproduces the tuned tower on load
    tuned = load_rtd_text_encoder(tmp_path / "full", tiny_backbone)
    with torch.no_grad():
        tok = tiny_mapper(tiny_backbone.encode_text(CAPS[:3]))
        texts = ["a photo of $ that make it blue"] * 3
        assert torch.allclose(tuned.encode_text_with_tokens(texts, tok), student.encode_text_with_tokens(texts, tok),
                              atol=1e-5)
        assert not torch.allclose(tuned.encode_text(CAPS[:2]), tiny_backbone.encode_text(CAPS[:2]), atol=1e-4)
    assert tuned.fingerprint() != tiny_backbone.fingerprint()


def test_lora_trains_only_adapters_and_round_trips(tiny_backbone, tiny_mapper, tmp_path):
    res = train_rtd(RTDConfig(out=str(tmp_path / "lora"), steps=6, batch_size=8, tune="lora", lr=1e-2, device="cpu"),
                    tiny_backbone, tiny_mapper, _triplets(2), progress=False)
    assert 0 < res.trainable < res.total * 0.5
    from zscir.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "lora")
    assert ck.config["tune"] == "lora" and all(".lora_" in k for k in ck.tensors)
    tuned = load_rtd_text_encoder(tmp_path / "lora", tiny_backbone)
    with torch.no_grad():
        tok = tiny_mapper(tiny_backbone.encode_text(CAPS[:2]))
        texts = ["a photo of $ that add a star"] * 2
        res.student.eval()
        assert torch.allclose(tuned.encode_text_with_tokens(texts, tok), res.student.encode_text_with_tokens(texts, tok),
                              atol=1e-5)


def test_no_anchor_ablation_runs(tiny_backbone, tiny_mapper):
    res = train_rtd(RTDConfig(steps=2, batch_size=6, anchor=False, tune="lora", device="cpu"), tiny_backbone,
                    tiny_mapper, _triplets(1), progress=False)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))


def test_other_backbone_is_refused(tiny_backbone, tiny_mapper, tiny_classes, tmp_path):
    TinyBackbone, _ = tiny_classes
    train_rtd(RTDConfig(out=str(tmp_path / "r"), steps=1, batch_size=4, tune="lora", device="cpu"), tiny_backbone,
              tiny_mapper, _triplets(1), progress=False)
    other = TinyBackbone(seed=7)
    with pytest.raises(CheckpointError, match="backbone"):
        load_rtd_text_encoder(tmp_path / "r", other)
    # a mapper checkpoint from another backbone is refused too (the pseudo-token mapper format)
    from zscir.nn.mappers import MapperConfig, TokenMapper, save_mapper

    mapper = TokenMapper(MapperConfig(embed_dim=16, word_dim=32, hidden=16))
    save_mapper(tmp_path / "m", mapper, tiny_backbone.fingerprint(), config={"method": "pic2word"})
    src = load_rtd_start(tmp_path / "m", tiny_backbone)
    assert isinstance(src.mapper, TokenMapper) and src.text_encoder is None and src.info["method"] == "pic2word"
    with pytest.raises(CheckpointError, match="backbone"):
        load_rtd_start(tmp_path / "m", other)
    with pytest.raises(CheckpointError, match="kind"):
        load_rtd_start(tmp_path / "r", tiny_backbone)  # an RTD checkpoint is not a mapper


def test_rtd_plugs_into_a_pseudo_token_method(tiny_backbone, tiny_mapper, tmp_path):
    from zscir.methods.pseudo_token import PseudoTokenMethod

    class Toy(PseudoTokenMethod):
        name = "toy"

        def __init__(self, backbone, mapper):
            super().__init__(backbone)
            self.mapper = mapper

        def pseudo_tokens(self, pixels):
            return self.mapper(self.backbone.encode_image(pixels))

    train_rtd(RTDConfig(out=str(tmp_path / "r"), steps=3, batch_size=6, lr=1e-2, tune="lora", device="cpu"),
              tiny_backbone, tiny_mapper, _triplets(1), progress=False)
    base = Toy(tiny_backbone, tiny_mapper)
    px = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = base.compose(px, ["make it red", "add a star"])
        m = with_rtd(Toy(tiny_backbone, tiny_mapper), tmp_path / "r")
        after = m.compose(px, ["make it red", "add a star"])
        assert torch.equal(m.encode_gallery(px), base.encode_gallery(px))
    assert isinstance(m, RTDMethod) and m.name == "toy+rtd"
    assert m.gallery_id == base.gallery_id and m.settings()["rtd"]["tune"] == "lora"
    assert not torch.allclose(before, after)
    assert torch.allclose(after.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(CheckpointError, match="pseudo-token"):
        from zscir.methods import get_method_class

        with_rtd(get_method_class("slerp")(tiny_backbone), tmp_path / "r")


def test_bad_settings_and_too_few_triplets(tiny_backbone, tiny_mapper):
    with pytest.raises(InputError):
        train_rtd(RTDConfig(tune="qlora"), tiny_backbone, tiny_mapper, _triplets(1), progress=False)
    with pytest.raises(InputError, match="at least 2"):
        train_rtd(RTDConfig(device="cpu"), tiny_backbone, tiny_mapper, _triplets(1)[:1], progress=False)


def test_lora_on_top_of_a_tuned_text_side_needs_that_side(tiny_backbone, tiny_mapper, tmp_path):
    import copy

    start = copy.deepcopy(tiny_backbone)  # stands for two-stage's stage-2 text encoder
    with torch.no_grad():
        start.text_tower.head.residual.weight.add_(0.05)
    res = train_rtd(RTDConfig(out=str(tmp_path / "r"), steps=2, batch_size=6, tune="lora", lr=1e-2, device="cpu"),
                    tiny_backbone, tiny_mapper, _triplets(1), progress=False, text_encoder=start)
    with pytest.raises(CheckpointError, match="tuned on top of"):
        load_rtd_text_encoder(tmp_path / "r", tiny_backbone)
    tuned = load_rtd_text_encoder(tmp_path / "r", tiny_backbone, base=start)
    with torch.no_grad():
        res.student.eval()
        assert torch.allclose(tuned.encode_text(CAPS[:2]), res.student.encode_text(CAPS[:2]), atol=1e-5)
