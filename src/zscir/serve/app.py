"""Routes. The service is thin: it validates and limits requests, then calls Searcher.search (the same
function as `zscir search`). Images are served by gallery id only: no client-supplied path ever reaches
the file system, and a gallery file is served (or used as a reference) only while it is the file that was
indexed. No `detail` ever carries a server path. The API docs at /docs are a self-contained page (no CDN)."""

from __future__ import annotations

import html
import os
import stat
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.convertors import Convertor, register_url_convertor

from zscir.errors import CheckpointError, ImageTooLargeError, InputError
from zscir.index.search import Searcher
from zscir.serve.limits import BodyLimitMiddleware, Limits
from zscir.utils.io import load_image_bytes, release_memory

_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
          ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}


class _AnyPathConvertor(Convertor):
    """Like Starlette's `path`, but also matches newlines: every gallery id gets a working URL."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPathConvertor())

MAX_SERVED_IMAGE_BYTES = 64 * 1024 * 1024  # /images never reads more than this into memory


def image_url(image_id: str) -> str:
    """The URL of a gallery image: the id percent-encoded (slashes kept), newlines and all."""
    return "/images/" + quote(image_id, safe="/")


def create_app(searcher: Searcher, limits: Limits = Limits()) -> FastAPI:
    # Swagger UI and ReDoc load their scripts from a CDN (a blank page offline): /docs is our own page
    app = FastAPI(title="zscir", version="1", docs_url=None, redoc_url=None,
                  description="Composed image retrieval: a reference image + a text saying what should differ.")
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    page = resources.files("zscir.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    scrub = _scrubber(searcher)

    @app.exception_handler(ImageTooLargeError)
    async def too_large(_request: Request, exc: ImageTooLargeError):
        return JSONResponse(status_code=413, content={"detail": scrub(str(exc))})

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError):
        return JSONResponse(status_code=422, content={"detail": scrub(str(exc))})

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(_request: Request, exc: CheckpointError):
        return JSONResponse(status_code=409, content={"detail": scrub(str(exc))})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        return _docs_page(app.openapi())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        man = searcher.index.manifest
        return {"status": "ok", "images": len(searcher.index), "dim": man.dim, "kind": searcher.index.kind,
                "backbone": man.backbone_spec, "fingerprint": man.backbone_fingerprint,
                "limits": limits.__dict__}

    @app.get("/images/{image_id:anypath}", responses={
        404: {"description": "no image with this id"}, 409: {"description": "the file changed since indexing"},
        410: {"description": "the file is gone"}})
    def image(image_id: str):
        item = _item(searcher, image_id)
        data = read_indexed_file(item)
        path = Path(item["path"])
        return Response(data, media_type=_MEDIA.get(path.suffix.lower(), "application/octet-stream"))

    @app.post("/search")
    def search(
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
        images: list[Image.Image] = []
        exclude = []
        if image is not None:
            images.append(_read_upload(image, limits))
        elif gallery_id:
            item = _item(searcher, gallery_id)
            # an indexed file was accepted under the files' limit (80 MP), not the uploads'
            images.append(load_image_bytes(read_indexed_file(item), f"gallery image {gallery_id!r}"))
            exclude.append(gallery_id)
        large = any(im.width * im.height > 4_000_000 for im in images)
        t0 = time.perf_counter()
        try:
            hits = searcher.search(images, text, method, alpha, k, exclude_ids=exclude)
        finally:
            if large:
                images.clear()
                release_memory()  # a burst of large uploads must not leave the service at its peak
        took = (time.perf_counter() - t0) * 1000
        results = []
        for h in hits:
            d = h.to_json()
            del d["path"]  # the client gets ids and URLs, never server paths
            d["url"] = image_url(h.id)
            results.append(d)
        return {"results": results, "method": method, "alpha": alpha, "k": k, "took_ms": round(took, 2)}

    return app


def _read_upload(upload: UploadFile, limits: Limits) -> Image.Image:
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image upload exceeds the limit of {limits.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    try:
        return load_image_bytes(data, "the upload", limits.max_pixels)
    except ImageTooLargeError as e:
        raise HTTPException(413, str(e)) from None
    except InputError as e:
        raise HTTPException(422, f"the upload is not a readable image: {e}") from None


def _item(searcher: Searcher, image_id: str) -> dict[str, Any]:
    pos = searcher.index.position.get(image_id)
    if pos is None:
        raise HTTPException(404, f"no image with id {image_id!r} in the index")
    return searcher.index.items[pos]


def read_indexed_file(item: dict[str, Any]) -> bytes:
    """The bytes of a gallery file, only while it is the file that was indexed: the index records each
    file's size, mtime and inode, so a file replaced, edited, or swapped for a symlink to elsewhere since
    indexing is refused (409); without a record (older indexes) a symlink is refused. The file is checked
    through the descriptor it is read from, so it cannot be swapped between the check and the read."""
    image_id, path = item["id"], item["path"]
    recorded = item.get("file")
    try:
        if recorded is None and os.path.islink(path):
            raise HTTPException(409, f"image {image_id!r}: its file is now a symbolic link; not served")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the worker
    except FileNotFoundError:
        raise HTTPException(410, f"image {image_id!r} is indexed but its file is gone") from None
    except OSError:
        raise HTTPException(410, f"image {image_id!r} is indexed but its file cannot be read") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HTTPException(409, f"image {image_id!r}: its path no longer holds a regular file; not served")
        if recorded is not None and not file_matches(recorded, st):
            raise HTTPException(409, f"image {image_id!r}: its file changed since it was indexed; "
                                     "re-index it (`zscir index --add`) to serve it")
        if st.st_size > MAX_SERVED_IMAGE_BYTES:
            raise HTTPException(409, f"image {image_id!r}: its file is larger than {MAX_SERVED_IMAGE_BYTES} bytes")
        return f.read(MAX_SERVED_IMAGE_BYTES + 1)


def file_matches(recorded: dict[str, Any], st: os.stat_result) -> bool:
    return (recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns
            and recorded.get("ino") in (None, st.st_ino))


def _scrubber(searcher: Searcher):
    """Replace the index folder's path (as given and resolved) in a message by "the index"."""
    folder = Path(searcher.index.folder)
    names = sorted({str(folder), str(folder.resolve()), str(folder.absolute())}, key=len, reverse=True)

    def scrub(msg: str) -> str:
        for n in names:
            if n and n != ".":
                msg = msg.replace(n, "<index>")
        return msg

    return scrub


def _docs_page(spec: dict[str, Any]) -> str:
    """A self-contained API reference built from the OpenAPI schema (no scripts, no external assets)."""
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for verb, op in ops.items():
            params = [p.get("name", "") for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            for media in body.values():
                ref = media.get("schema", {}).get("$ref", "")
                schema = spec.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
                params += [f"{name} (form)" for name in schema.get("properties", {})]
            codes = ", ".join(sorted(op.get("responses", {})))
            rows.append(f"<tr><td><code>{html.escape(verb.upper())} {html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(', '.join(params))}</td>"
                        f"<td>{html.escape(codes)}</td></tr>")
    info = spec.get("info", {})
    return ("<!doctype html><html><head><meta charset='utf-8'><title>zscir API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>{html.escape(info.get('title', 'API'))} API</h1><p>{html.escape(info.get('description', ''))}</p>"
            "<p>The machine-readable schema is at <a href='/openapi.json'>/openapi.json</a>.</p>"
            "<table><tr><th>route</th><th>summary</th><th>parameters</th><th>responses</th></tr>"
            + "".join(rows) + "</table></body></html>")
