import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from index_helpers import SPEC
from zscir.index.runner import build_index
from zscir.index.search import Searcher
from zscir.serve.app import create_app
from zscir.serve.limits import Limits
from zscir_fakes import make_image, write_gallery

LIMITS = Limits(max_upload_bytes=200_000, max_pixels=1_000_000, max_text_chars=50, max_k=20)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    write_gallery(root / "g", 20)
    build_index(root / "g", root / "idx", SPEC, shard_size=8, progress=False)
    return TestClient(create_app(Searcher.open(root / "idx", backbone=SPEC), LIMITS))


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_health_page_and_docs(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["images"] == 20 and h["kind"] == "Flat" and h["backbone"] == SPEC
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text
    spec = client.get("/openapi.json").json()
    assert "/search" in spec["paths"] and "/images/{image_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_search_with_upload(client):
    r = client.post("/search", files={"image": ("ref.png", png(make_image(3)), "image/png")},
                    data={"text": "a red circle", "method": "slerp", "alpha": "0.7", "k": "5"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 5 and [x["rank"] for x in res] == [1, 2, 3, 4, 5]
    assert all("path" not in x for x in res)  # no server path leaves the service
    scores = [x["score"] for x in res]
    assert scores == sorted(scores, reverse=True)
    img = client.get(res[0]["url"])
    assert img.status_code == 200 and img.headers["content-type"].startswith("image/")


def test_search_by_gallery_id_excludes_the_reference(client):
    first = client.post("/search", files={"image": ("r.png", png(make_image(1)), "image/png")},
                        data={"text": "blue", "k": "3"}).json()["results"]
    gid = first[0]["id"]
    r = client.post("/search", data={"gallery_id": gid, "text": "make it green", "k": "4"})
    assert r.status_code == 200, r.text
    assert gid not in [x["id"] for x in r.json()["results"]] and len(r.json()["results"]) == 4
    # image-only retrieval with the same method interface
    r = client.post("/search", data={"gallery_id": gid, "method": "image", "k": "1"})
    assert r.status_code == 200 and r.json()["results"][0]["id"] != gid


def test_images_are_served_by_id_only(client):
    assert client.get("/images/nope.png").status_code == 404
    assert client.get("/images/../../../etc/passwd").status_code == 404
    assert client.get("/images/%2Fetc%2Fpasswd").status_code == 404


@pytest.mark.parametrize(
    "data,files,status,message",
    [
        ({"text": "x" * 51}, True, 422, "text is 51 characters; the limit is 50"),
        ({"text": "red", "k": "21"}, True, 422, "k=21: must be between 1 and 20"),
        ({"text": "red", "k": "0"}, True, 422, "k=0"),
        ({"text": "red", "method": "nope"}, True, 422, "unknown method 'nope'"),
        ({"text": "red", "alpha": "1.5"}, True, 422, "outside [0, 1]"),
        ({"text": "red"}, False, 422, "needs a reference image"),
        ({"text": "red", "gallery_id": "missing"}, False, 404, "no image with id 'missing'"),
        ({"text": "", "method": "slerp"}, True, 422, "needs a modification text"),
    ],
)
def test_bad_requests_are_4xx_with_a_clear_message(client, data, files, status, message):
    f = {"image": ("r.png", png(make_image(2)), "image/png")} if files else None
    r = client.post("/search", data=data, files=f)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_upload_limits(client):
    big = Image.effect_noise((400, 400), 80).convert("RGB")  # noise does not compress: > 200 kB
    r = client.post("/search", files={"image": ("big.png", png(big), "image/png")}, data={"text": "red"})
    assert r.status_code == 413 and "200000 bytes" in r.json()["detail"]
    bomb = png(Image.new("RGB", (2000, 1000), "white"))  # tiny file, 2 MP > 1 MP limit
    assert len(bomb) < LIMITS.max_upload_bytes
    r = client.post("/search", files={"image": ("bomb.png", bomb, "image/png")}, data={"text": "red"})
    assert r.status_code == 413 and "2000x1000" in r.json()["detail"]
    r = client.post("/search", files={"image": ("x.png", b"not an image", "image/png")}, data={"text": "red"})
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    r = client.post("/search", files={"image": ("r.png", png(make_image(1)), "image/png")},
                    data={"text": "red", "gallery_id": "part0/img0000.jpg"})
    assert r.status_code == 422 and "not both" in r.json()["detail"]
