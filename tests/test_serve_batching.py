"""Micro-batched service: a batched answer equals the unbatched one for the same request; gallery-id
references use the stored embedding; POST /search keeps its form fields."""

import asyncio
import io
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from index_helpers import SPEC
from zscir.errors import InputError
from zscir.index.runner import build_index
from zscir.index.search import Searcher
from zscir.methods.base import CompositionMethod, register_method
from zscir.serve.app import create_app
from zscir.serve.batching import BatchingConfig, MicroBatcher, TextCache
from zscir_fakes import make_image, write_gallery


@register_method("test/joint-pixels")
class _JointPixels(CompositionMethod):
    """A method with no fast path at all (like pseudo-token methods with local features): it needs pixels."""

    def compose(self, pixels, texts):
        v = self.backbone.encode_image(pixels)
        w = self.backbone.encode_text(list(texts))
        return torch.nn.functional.normalize(v + 0.5 * w, dim=-1)


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    write_gallery(root / "g", 24)
    build_index(root / "g", root / "idx", SPEC, shard_size=8, progress=False)
    return Searcher.open(root / "idx", backbone=SPEC)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _requests(searcher):
    ids = [it["id"] for it in searcher.index.items]
    out = []
    for i in range(24):
        method, alpha = [("slerp", 0.7), ("slerp", None), ("sum", None), ("image", None), ("text", None),
                         ("test/joint-pixels", None)][i % 6]
        text = ["make it red", "a blue square", "smaller", "green circle"][i % 4]
        k = 3 if i % 2 else 5
        if i % 3 == 0:
            out.append(dict(text=text, method=method, alpha=alpha, k=k, image=make_image(100 + i)))
        else:
            out.append(dict(text=text, method=method, alpha=alpha, k=k, ref=ids[i % len(ids)]))
    return out


def test_batched_answers_equal_unbatched(searcher):
    reqs = _requests(searcher)
    expected = [searcher.search([r["image"]] if "image" in r else [], r["text"], r["method"], r["alpha"], r["k"],
                                refs=[r["ref"]] if "ref" in r else []) for r in reqs]

    async def run_all():
        b = MicroBatcher(searcher, BatchingConfig(max_wait_ms=50, max_batch=64, max_image_batch=3, max_text_batch=2))
        px = [b.preprocess(r["image"]) if "image" in r else None for r in reqs]
        got = await asyncio.gather(*[b.search(r["text"], r["method"], r["alpha"], r["k"], pixels=p, ref=r.get("ref"))
                                     for r, p in zip(reqs, px)])
        return got, b.info()

    got, info = asyncio.run(run_all())
    assert info["max_batch_seen"] == len(reqs), info  # all of them went through one micro-batch
    assert info["text_encoded"] < len(reqs)  # texts shared across requests were encoded once per method
    for r, e, g in zip(reqs, expected, got):
        assert [h.id for h in g] == [h.id for h in e], r
        assert np.allclose([h.score for h in g], [h.score for h in e], atol=1e-5), r
        if "ref" in r:
            assert r["ref"] not in [h.id for h in g]


def test_a_bad_request_fails_alone_in_its_batch(searcher):
    ids = [it["id"] for it in searcher.index.items]

    async def run():
        b = MicroBatcher(searcher, BatchingConfig(max_wait_ms=50))
        return await asyncio.gather(b.search("red", "slerp", None, 3, ref=ids[0]),
                                    b.search("", "slerp", None, 3, ref=ids[1]),  # slerp needs a text
                                    b.search("red", "nope", None, 3, ref=ids[2]),  # unknown method
                                    b.search("blue", "slerp", None, 3, ref=ids[3]), return_exceptions=True)

    ok1, bad_text, bad_method, ok2 = asyncio.run(run())
    assert isinstance(bad_text, InputError) and "needs a modification text" in str(bad_text)
    assert isinstance(bad_method, InputError) and "unknown method" in str(bad_method)
    assert len(ok1) == 3 and len(ok2) == 3


def test_text_cache_is_an_lru():
    c = TextCache(2)
    c.put("a", torch.zeros(1))
    c.put("b", torch.ones(1))
    assert c.get("a") is not None  # a is now the most recent
    c.put("c", torch.ones(1))
    assert c.get("b") is None and c.get("a") is not None and c.get("c") is not None and len(c) == 2


def test_gallery_id_reference_uses_the_stored_embedding(tmp_path):
    write_gallery(tmp_path / "g", 12)
    build_index(tmp_path / "g", tmp_path / "idx", SPEC, progress=False)
    s = Searcher.open(tmp_path / "idx", backbone=SPEC)
    first = s.index.items[0]
    with_file = s.search([], "make it red", "slerp", None, 4, refs=[first["id"]])
    shutil.rmtree(tmp_path / "g")  # the stored images are gone: the embedding is enough for slerp
    again = s.search([], "make it red", "slerp", None, 4, refs=[first["id"]])
    assert [h.id for h in again] == [h.id for h in with_file] and first["id"] not in [h.id for h in again]
    # ... and it is exactly the composition of the stored vector
    m = s.method("slerp")
    stored = torch.from_numpy(s.index.vectors([0]))
    with torch.no_grad():
        q = m.compose_embedded(stored, ["make it red"]).numpy()
    assert np.allclose(s.query_vector(m, [], "make it red", [0]), q / np.linalg.norm(q), atol=1e-6)
    # a method that needs pixels reads the stored image, which is now gone: a clear error, not a wrong answer
    with pytest.raises(InputError, match="image not found"):
        s.search([], "red", "test/joint-pixels", None, 3, refs=[first["id"]])


@pytest.fixture(scope="module")
def clients(searcher):
    batched = TestClient(create_app(searcher, batching=BatchingConfig(max_wait_ms=20)))
    unbatched = TestClient(create_app(searcher, batching=BatchingConfig(enabled=False)))
    with batched, unbatched:
        yield batched, unbatched


def test_concurrent_http_requests_batched_equal_unbatched(searcher, clients):
    batched, unbatched = clients
    reqs = [r for r in _requests(searcher) if r["method"] != "test/joint-pixels"]

    def form(r):
        data = {"text": r["text"], "method": r["method"], "k": str(r["k"])}
        if r["alpha"] is not None:
            data["alpha"] = str(r["alpha"])
        if "ref" in r:
            data["gallery_id"] = r["ref"]
            return data, None
        return data, {"image": ("r.png", png(r["image"]), "image/png")}

    results = [None] * len(reqs)

    def send(i):
        data, files = form(reqs[i])
        results[i] = batched.post("/search", data=data, files=files)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, got in zip(reqs, results):
        data, files = form(r)
        want = unbatched.post("/search", data=data, files=files)
        assert got.status_code == want.status_code == 200, (got.text, want.text)
        g, w = got.json(), want.json()
        assert [x["id"] for x in g["results"]] == [x["id"] for x in w["results"]]
        assert np.allclose([x["score"] for x in g["results"]], [x["score"] for x in w["results"]], atol=1e-5)
        assert set(g) == set(w) == {"results", "method", "alpha", "k", "took_ms"}
    h = batched.get("/health").json()
    assert h["batching"]["enabled"] and h["batching"]["requests"] >= len(reqs)


def test_post_search_keeps_its_form_fields(clients):
    batched, _ = clients
    spec = batched.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].split("/")[-1]
    fields = spec["components"]["schemas"][ref]["properties"]
    assert set(fields) == {"text", "image", "gallery_id", "method", "alpha", "k"}


def test_serve_settings_are_checked_before_serving(searcher, capsys):
    from zscir.cli import main

    folder = str(searcher.index.folder)
    assert main(["serve", folder, "--workers", "0"]) == 2
    assert "--workers 0: must be at least 1" in capsys.readouterr().err
    assert main(["serve", folder, "--ef-search", "64"]) == 2  # a flat index has no efSearch
    assert "--ef-search applies to a graph" in capsys.readouterr().err
    assert main(["serve", folder, "--max-batch", "0"]) == 2
    assert "invalid batching settings" in capsys.readouterr().err


def test_workers_build_their_app_from_the_environment(searcher, monkeypatch):
    """`--workers N`: each uvicorn worker builds the app from the settings the command put in the environment."""
    import json as _json

    from zscir.cli import build_parser
    from zscir.serve.cli import ENV, _config, app_from_env

    args = build_parser(["zscir.serve.cli"]).parse_args(
        ["serve", str(searcher.index.folder), "--backbone", SPEC, "--workers", "2", "--no-batching", "--max-k", "7", "--rerank", "0"])
    monkeypatch.setenv(ENV, _json.dumps(_config(args)))
    threads = torch.get_num_threads()
    try:
        app = app_from_env()
    finally:  # the worker set-up sets 1 thread per worker and freezes the GC: undo both in this test process
        import gc

        gc.unfreeze()
        assert torch.get_num_threads() == max(1, (__import__("os").cpu_count() or 1) // 2)
        torch.set_num_threads(threads)
    with TestClient(app) as c:
        h = c.get("/health").json()
        assert h["batching"]["enabled"] is False and h["limits"]["max_k"] == 7 and h["search"]["rerank"] == 0
        assert c.post("/search", data={"gallery_id": searcher.index.items[0]["id"], "text": "red", "k": "8"}).status_code == 422
