"""Loaders on miniature copies of each benchmark in its official format."""

import json
import shutil

import pytest
from bench_fixtures import CIRCO_IDS, make_circo, make_cirr, make_fashioniq, make_genecis, real_circo_dir
from PIL import Image

from zscir.datasets import crop_instance, load_benchmark, load_circo, load_cirr, load_fashioniq, load_genecis
from zscir.datasets.circo import read_circo_annotations
from zscir.datasets.fashioniq import join_captions
from zscir.errors import InputError


def test_fashioniq_loader(tmp_path):
    root = make_fashioniq(tmp_path / "FashionIQ")
    for cat, ext in (("dress", ".png"), ("shirt", ".jpg")):
        s = load_fashioniq(root, cat, "val")
        assert len(s.queries) == 4 and len(s.gallery) == 8
        assert s.gallery[0].path.suffix == ext
        assert s.queries[0].reference == s.gallery[0].id and s.queries[0].targets == [s.gallery[1].id]
        assert s.queries[1].texts == ["is darker", "has a collar."]  # leading space stripped
        assert not s.complete  # a miniature is not the official 2,017 / 2,038 queries
    s = load_fashioniq(root, "dress", "val")
    assert [join_captions(q.texts, "forward")[0] for q in s.queries] == [
        "is shiny and silver with shorter sleeves and fit and flare", "is darker and has a collar", "is longer",
        "is red and short"]
    assert join_captions(s.queries[1].texts, "reverse") == ["has a collar and is darker"]
    assert join_captions(s.queries[1].texts, "both") == ["is darker and has a collar", "has a collar and is darker"]
    t = load_fashioniq(root, "dress", "test")
    assert t.queries[0].targets == [] and t.queries[0].texts == ["yello and more flowing", "short and black"]


def test_fashioniq_pic2word_layout_and_missing(tmp_path):
    root = make_fashioniq(tmp_path / "fiq")
    shutil.move(root / "captions", root / "json")
    for p in (root / "image_splits").iterdir():
        shutil.move(p, root / "json" / p.name)
    (root / "image_splits").rmdir()
    assert len(load_fashioniq(root, "toptee").queries) == 4
    (root / "images" / "B00TO0001.png").unlink()
    (root / "images" / "B00TO0005.png").unlink()
    with pytest.raises(InputError, match=r"2 image\(s\) missing.*images.*B00TO0001, B00TO0005"):
        load_fashioniq(root, "toptee")
    shutil.rmtree(root / "json")
    with pytest.raises(InputError, match="captions: not found under .*cap.toptee.val.json"):
        load_fashioniq(root, "toptee")


def test_cirr_loader(tmp_path):
    root = make_cirr(tmp_path / "CIRR")
    s = load_cirr(root, "val")
    assert len(s.gallery) == 10  # all keys, including dev-9 that no query mentions
    assert s.gallery[0].path == root / "dev" / "dev-0-0-img0.png"
    q = s.queries[0]
    assert (q.qid, q.reference, q.targets) == ("12060", "dev-0-0-img0", ["dev-2-2-img0"])
    assert len(q.members) == 6 and q.reference in q.members
    t = load_cirr(root, "test")  # "test" means test1
    assert t.split == "test1" and all(not q.targets for q in t.queries) and not t.has_targets
    (root / "dev" / "dev-9-0-img1.png").unlink()
    with pytest.raises(InputError, match=r"CIRR: 1 image\(s\) missing.*dev-9-0-img1.png"):
        load_cirr(root, "val")
    with pytest.raises(InputError, match="CIRR split"):
        load_cirr(root, "train2")


def test_circo_loader(tmp_path):
    root = make_circo(tmp_path / "CIRCO")
    s = load_circo(root, "val")
    assert [g.id for g in s.gallery] == [str(i) for i in CIRCO_IDS]
    q = s.queries[0]
    assert q.reference == "9" and q.targets == ["30", "34", "61"]
    assert q.fields["shared_concept"] == "a girl with an umbrella"
    t = load_circo(root, "test")
    assert len(t.queries) == 3 and not t.has_targets
    (root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000030.jpg").unlink()
    with pytest.raises(InputError, match="000000000030.jpg"):
        load_circo(root, "val")
    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").unlink()
    with pytest.raises(InputError, match="gallery list: not found .*image_info_unlabeled2017.json"):
        load_circo(root, "val")


def test_real_circo_annotations():
    d = real_circo_dir()
    if d is None:
        pytest.skip("real CIRCO annotations not found (expected ../shared/data/circo beside the repo)")
    val = read_circo_annotations(d / "val.json", "val")
    test = read_circo_annotations(d / "test.json", "test")
    assert len(val) == 220 and len(test) == 800  # the official counts
    assert sum(len(q.targets) for q in val) == 916
    assert all(q.reference not in q.targets for q in val)
    assert val[0].fields["shared_concept"] == "a girl with a traditional Chinese umbrella"
    aspects = {}
    for q in val:
        for a in q.fields["semantic_aspects"]:
            aspects[a] = aspects.get(a, 0) + 1
    assert aspects["statement_with_conjunction"] == 164 and aspects["negation"] == 21


def test_real_circo_val_through_the_loader(tmp_path):
    d = real_circo_dir()
    if d is None:
        pytest.skip("real CIRCO annotations not found (expected ../shared/data/circo beside the repo)")
    root = tmp_path / "CIRCO"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(d / "val.json", root / "annotations" / "val.json")
    val = json.loads((d / "val.json").read_text())
    ids = sorted({e["reference_img_id"] for e in val} | {g for e in val for g in e["gt_img_ids"]})
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    (root / "COCO2017_unlabeled" / "unlabeled2017").mkdir()
    s = load_circo(root, "val", check_images=False)
    assert len(s.queries) == 220 and len(s.gallery) == len(ids)
    assert not s.complete and "123,403" in s.notes[0]  # the gallery is not the full 123,403 images
    assert s.queries[0].targets == ["355099", "528417", "534704"] and s.queries[0].reference == "271520"
    with pytest.raises(InputError, match="123,403"):
        load_circo(root, "val", strict_counts=True, check_images=False)
    with pytest.raises(InputError, match=r"CIRCO: \d+ image\(s\) missing.*unlabeled2017"):
        load_circo(root, "val")


def test_genecis_loader(tmp_path):
    root = make_genecis(tmp_path / "genecis_root")
    s = load_genecis(root, "change_object")
    assert len(s.queries) == 3  # the template with a non-modal gallery length is left out, and noted
    assert any("non-modal" in n or "not the modal" in n for n in s.notes)
    q = s.queries[0]
    assert q.candidates[0] == q.targets[0] == "coco:285" and len(q.candidates) == 4
    a = load_genecis(root, "focus_attribute")
    assert a.queries[0].candidates[0].startswith("vg:2:")
    im = a.images()[a.queries[0].reference].load()
    assert im.size[0] == im.size[1]  # padded to a square
    with pytest.raises(InputError, match="GeneCIS task"):
        load_genecis(root, "focus_colour")
    shutil.rmtree(root / "Visual_Genome")
    with pytest.raises(InputError, match="Visual Genome images"):
        load_genecis(root, "change_attribute")


def test_crop_instance_matches_genecis():
    im = Image.new("RGB", (100, 80), (255, 255, 255))
    # x=50,y=40,w=20,h=10: left=50-14=36, top=40-7=33, right=36+34=70, bottom=33+17=50 -> 34x17, padded to 34x34
    out = crop_instance(im, (50, 40, 20, 10), 0.7, True)
    assert out.size == (34, 34)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((17, 17)) == (255, 255, 255)
    # clamped at the image border: left=max(0, 5-7)=0, right=min(100, 0+17)=17
    assert crop_instance(im, (5, 5, 10, 10), 0.7, False).size == (17, 17)


def test_load_benchmark_and_root_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_benchmark("cirr", tmp_path / "nope")
    with pytest.raises(InputError, match="unknown benchmark"):
        load_benchmark("mscoco", tmp_path)
    root = make_cirr(tmp_path / "c")
    (root / "cirr" / "captions" / "cap.rc2.val.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_benchmark("cirr", root)


def test_official_counts_checked(tmp_path, monkeypatch, caplog):
    import zscir.datasets.fashioniq as fiq

    root = make_fashioniq(tmp_path / "F")
    with pytest.raises(InputError, match=r"queries 4 \(official 2,017\).*not comparable"):
        load_fashioniq(root, "dress", strict_counts=True)
    # a copy whose counts match the official ones loads as complete, without a warning
    monkeypatch.setitem(fiq.EXPECTED, ("dress", "val"), {"queries": 4, "gallery": 8})
    caplog.clear()
    s = load_fashioniq(root, "dress", strict_counts=True)
    assert s.complete and not s.notes and "official" not in caplog.text
