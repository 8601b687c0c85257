"""Routes. The service is thin: it validates and limits requests, then composes and searches through the
micro-batcher (zscir.serve.batching: concurrent requests share model calls; with batching off, each request
runs Searcher.search's path on its own, as `zscir search` does). Images are served by gallery id only: no
client-supplied path ever reaches the file system."""

from __future__ import annotations

import contextlib
import io
import time
from importlib import resources
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from zscir.errors import CheckpointError, InputError
from zscir.index.search import Searcher
from zscir.serve.batching import BatchingConfig, MicroBatcher
from zscir.serve.limits import Limits

_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
          ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}


def create_app(searcher: Searcher, limits: Limits = Limits(), batching: BatchingConfig = BatchingConfig()) -> FastAPI:
    batcher = MicroBatcher(searcher, batching)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="zscir", version="1", lifespan=lifespan,
                  description="Composed image retrieval: a reference image + a text saying what should differ.")
    app.state.batcher = batcher
    page = resources.files("zscir.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse an oversized upload before it is parsed or spooled.
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > limits.max_upload_bytes + 65536:
            return JSONResponse(status_code=413, content={
                "detail": f"request body is {int(length)} bytes; the upload limit is {limits.max_upload_bytes} bytes"})
        return await call_next(request)

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(_request: Request, exc: CheckpointError):
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        man = searcher.index.manifest
        return {"status": "ok", "images": len(searcher.index), "dim": man.dim, "kind": searcher.index.kind,
                "backbone": man.backbone_spec, "fingerprint": man.backbone_fingerprint,
                "limits": limits.__dict__, "search": {"params": searcher.index.search_params,
                                                      "rerank": searcher.index.rerank},
                "batching": batcher.info()}

    @app.get("/images/{image_id:path}", responses={404: {"description": "no image with this id"}})
    def image(image_id: str):
        pos = searcher.index.position.get(image_id)
        if pos is None:
            raise HTTPException(404, f"no image with id {image_id!r} in the index")
        path = Path(searcher.index.items[pos]["path"])
        if not path.is_file():
            raise HTTPException(410, f"image {image_id!r} is indexed but its file is gone")
        return FileResponse(path, media_type=_MEDIA.get(path.suffix.lower(), "application/octet-stream"))

    @app.post("/search")
    async def search(
        text: Annotated[str, Form(description="what should differ from the reference")] = "",
        image: Annotated[UploadFile | None, File(description="reference image file")] = None,
        gallery_id: Annotated[str | None, Form(description="a gallery image id as the reference")] = None,
        method: Annotated[str, Form()] = "slerp",
        alpha: Annotated[float | None, Form(description="method weight, 0..1 (slerp: 0 = image, 1 = text)")] = None,
        k: Annotated[int, Form()] = 10,
    ) -> dict:
        if len(text) > limits.max_text_chars:
            raise HTTPException(422, f"text is {len(text)} characters; the limit is {limits.max_text_chars}")
        if not 1 <= k <= limits.max_k:
            raise HTTPException(422, f"k={k}: must be between 1 and {limits.max_k}")
        if image is not None and gallery_id:
            raise HTTPException(422, "send either an image file or a gallery_id, not both")
        pixels, ref = None, None
        with batcher.active():
            if image is not None:
                # decoding and preprocessing run in the bounded decode pool, never on the event loop
                pixels = await batcher.run_decode(_decode_upload, image, limits, batcher)
            elif gallery_id:
                if searcher.index.position.get(gallery_id) is None:
                    raise HTTPException(404, f"no image with id {gallery_id!r} in the index")
                ref = gallery_id  # composed from its stored embedding, and never listed in the answer
            t0 = time.perf_counter()
            hits = await batcher.search(text, method, alpha, k, pixels=pixels, ref=ref)
            took = (time.perf_counter() - t0) * 1000
        results = []
        for h in hits:
            d = h.to_json()
            del d["path"]  # the client gets ids and URLs, never server paths
            d["url"] = "/images/" + quote(h.id)
            results.append(d)
        return {"results": results, "method": method, "alpha": alpha, "k": k, "took_ms": round(took, 2)}

    return app


def _decode_upload(upload: UploadFile, limits: Limits, batcher: MicroBatcher):
    """Upload -> checked, decoded image -> the backbone's pixels (runs in the decode pool)."""
    return batcher.preprocess(_read_upload(upload, limits))


def _read_upload(upload: UploadFile, limits: Limits) -> Image.Image:
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image upload exceeds the limit of {limits.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size  # from the header: nothing is decoded yet
        if w * h > limits.max_pixels:
            raise HTTPException(413, f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} pixels")
        im.load()
    except HTTPException:
        raise
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"image too large ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise HTTPException(422, f"the upload is not a readable image ({type(e).__name__})") from e
    return im.convert("RGB")
