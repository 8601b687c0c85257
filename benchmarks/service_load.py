"""Load test of the HTTP service (`zscir serve`): throughput and latency of POST /search under a bounded
number of concurrent clients, on loopback.

    .venv/bin/python benchmarks/service_load.py --concurrency 1 4 16 --requests 200   # -> benchmarks/results/service_load.{json,md}

What it does: generates a gallery (--images PNGs of random coloured shapes) and indexes it with the product's
own path (`zscir index`, backbone --backbone; or reuses --index), starts `python -m zscir serve INDEX` as a real
server on 127.0.0.1 (a free port) and waits for GET /health, then for each concurrency level C sends
--requests POST /search requests from C client threads, each with its own keep-alive connection. Requests
are multipart forms as the web page sends them: a gallery id as the reference (or, for --upload-fraction of
them, an uploaded PNG), a modification text, method slerp, alpha 0.8, k 10. Latency is measured at the
client (send -> full response read). `server_p50_ms` is the service's own `took_ms`: compose + search, timed
around Searcher.search, so it includes the wait for the Searcher's one-model lock (under load it is mostly
that queue, not compute). The server is always terminated.

--backbone default needs the pre-trained embedded default ($ZSCIR_HOME/models/default). `--backbone fake`
(= py:zscir_fakes:make, the tests' tiny backbone, from tests/) checks the script in seconds; its numbers
measure the service's overhead, not a model."""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC, TESTS = ROOT / "src", ROOT / "tests"
sys.path.insert(0, str(SRC))

FAKE = "py:zscir_fakes:make"
TEXTS = ["make it red", "but blue", "a green one instead", "as a triangle", "make it a circle", "yellow and smaller",
         "the same shape in purple", "on a dark background", "but square", "make it white"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta"]


def shape_image(rng: random.Random, size: int):
    """A random coloured shape (circle, square or triangle) on a random background."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(rng.randrange(30, 230) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randrange(0, size // 2), rng.randrange(0, size // 2)
        x1, y1 = x0 + rng.randrange(size // 4, size // 2), y0 + rng.randrange(size // 4, size // 2)
        color = rng.choice(COLORS)
        kind = rng.choice(("circle", "square", "triangle"))
        if kind == "circle":
            d.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == "square":
            d.rectangle([x0, y0, x1, y1], fill=color)
        else:
            d.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=color)
    return im


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def build_gallery_index(work: Path, n: int, size: int, spec: str, seed: int) -> Path:
    from zscir.cli import main as zscir_main

    gallery, index = work / "gallery", work / "index"
    rng = random.Random(seed)
    for i in range(n):
        sub = gallery / f"part{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        shape_image(rng, size).save(sub / f"img{i:05d}.png")
    t0 = time.perf_counter()
    rc = zscir_main(["index", str(gallery), "--out", str(index), "--backbone", spec, "--no-progress"])
    if rc != 0:
        sys.exit(f"service_load: `zscir index` failed (exit {rc})")
    print(f"indexed {n} images in {time.perf_counter() - t0:.1f}s", flush=True)
    return index


def gallery_ids(index: Path) -> tuple[list[str], str]:
    from zscir.index.manifest import Manifest
    from zscir.index.writer import read_shard_items

    man = Manifest.load(index)
    ids = [r["id"] for rec in man.shards for r in read_shard_items(index, rec)]
    return ids, man.backbone_spec


def check_default_model(spec: str) -> None:
    if spec == "default":
        from zscir.backbones import default_model_path

        if not default_model_path().exists():
            sys.exit(f"service_load: no pre-trained default backbone at {default_model_path()}; run "
                     "`make demo-quick` or `zscir pretrain` first (or pass --backbone fake for a quick check)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, backbone: str | None, env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zscir", "serve", str(index), "--host", "127.0.0.1", "--port", str(port)]
    if backbone:
        cmd += ["--backbone", backbone]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_health(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            sys.exit(f"service_load: the server exited (code {proc.returncode}) before it was healthy:\n"
                     + "\n".join(tail))
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"service_load: no healthy server on port {port} after {timeout:.0f}s (log: {log})")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file is not None:
        fname, data = file
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{fname}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def make_requests(n: int, ids: list[str], uploads: list[bytes], upload_fraction: float, seed: int) -> list[tuple]:
    """(kind, body, content type) for n requests; exactly round(n * upload_fraction) of them upload a PNG."""
    rng = random.Random(seed)
    n_up = round(n * upload_fraction)
    kinds = ["upload"] * n_up + ["gallery"] * (n - n_up)
    rng.shuffle(kinds)
    out = []
    for kind in kinds:
        fields = {"text": rng.choice(TEXTS), "method": "slerp", "alpha": "0.8", "k": "10"}
        if kind == "upload":
            body, ctype = multipart(fields, ("ref.png", rng.choice(uploads)))
        else:
            body, ctype = multipart({"gallery_id": rng.choice(ids), **fields}, None)
        out.append((kind, body, ctype))
    return out


def run_level(port: int, concurrency: int, reqs: list[tuple], timeout: float) -> dict:
    results: list[tuple | None] = [None] * len(reqs)
    nxt = iter(range(len(reqs)))
    take = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        start.wait()
        while True:
            with take:
                i = next(nxt, None)
            if i is None:
                break
            kind, body, ctype = reqs[i]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/search", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                ms = (time.perf_counter() - t0) * 1000
                server_ms, err = None, None
                if 200 <= r.status < 300:
                    doc = json.loads(data)
                    server_ms = doc.get("took_ms")
                    if len(doc.get("results", [])) != 10:
                        err = f"{len(doc.get('results', []))} results"
                else:
                    err = f"HTTP {r.status}: {data[:200].decode(errors='replace')}"
                results[i] = (kind, ms, server_ms, err)
            except (OSError, http.client.HTTPException, ValueError) as e:
                results[i] = (kind, (time.perf_counter() - t0) * 1000, None, f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    ok = [r for r in results if r is not None and r[3] is None]
    errors = [r for r in results if r is None or r[3] is not None]

    def pct(xs, q):
        return round(float(np.percentile(xs, q)), 2) if xs else None

    lat = [r[1] for r in ok]
    row = {
        "concurrency": concurrency, "requests": len(reqs), "errors": len(errors),
        "uploads": sum(1 for r in reqs if r[0] == "upload"), "wall_s": round(wall, 3),
        "rps": round(len(ok) / wall, 2) if wall > 0 else None,
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": round(max(lat), 2) if lat else None,
        "p50_gallery_ms": pct([r[1] for r in ok if r[0] == "gallery"], 50),
        "p50_upload_ms": pct([r[1] for r in ok if r[0] == "upload"], 50),
        "server_p50_ms": pct([r[2] for r in ok if r[2] is not None], 50),
        "error_samples": sorted({(r[3] if r else "no result") for r in errors})[:5],
    }
    return row


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests (uploads) | errors | req/s | p50 ms | p99 ms | max ms | p50 gallery-id ms | "
             "p50 upload ms | server took_ms p50 (incl. model-lock wait) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} ({r['uploads']}) | {r['errors']} | {r['rps']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['p50_gallery_ms']} | "
                     f"{r['p50_upload_ms']} | {r['server_p50_ms']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=None,
                    help="backbone spec for the generated index (default: 'default'; 'fake' = py:zscir_fakes:make "
                    "from tests/); with --index, overrides the index's own spec")
    ap.add_argument("--index", default=None, help="reuse this index folder instead of generating one")
    ap.add_argument("--images", type=int, default=300, help="generated gallery size")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4], help="client threads, one level each")
    ap.add_argument("--requests", type=int, default=200, help="requests per level")
    ap.add_argument("--upload-fraction", type=float, default=0.25, help="share of requests that upload a PNG")
    ap.add_argument("--warmup", type=int, default=5, help="sequential requests before the first level (not counted)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout, s")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the server (default: inherit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary gallery, index and server log")
    ap.add_argument("--out", default="benchmarks/results/service_load.json")
    args = ap.parse_args()
    if not 0 <= args.upload_fraction <= 1:
        ap.error("--upload-fraction must be in [0, 1]")

    user_spec = args.backbone or (None if args.index else "default")
    if user_spec == "fake":
        user_spec = FAKE
    # The tests' fake backbone lives in tests/: make it importable here and in the server process.
    paths = [str(SRC)] + ([str(TESTS)] if TESTS.is_dir() else [])
    sys.path[:0] = [p for p in paths if p not in sys.path]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)

    work = Path(tempfile.mkdtemp(prefix="zscir_service_load_"))
    proc = None
    try:
        if args.index:
            index = Path(args.index)
            ids, index_spec = gallery_ids(index)
            check_default_model(user_spec or index_spec)
        else:
            check_default_model(user_spec)
            index = build_gallery_index(work, args.images, args.image_size, user_spec, args.seed)
            ids, index_spec = gallery_ids(index)
        rng = random.Random(args.seed + 1)
        uploads = [png_bytes(shape_image(rng, args.image_size)) for _ in range(16)]

        port = free_port()
        log = work / "serve.log"
        t0 = time.perf_counter()
        # a py: spec is code: the server never takes it from the manifest, it is passed on its command line
        spec = user_spec if args.index else (user_spec if user_spec.startswith("py:") else None)
        proc = start_server(index, port, spec, env, log)
        health = wait_health(proc, port, args.startup_timeout, log)
        startup_s = time.perf_counter() - t0
        print(f"server up on port {port} in {startup_s:.1f}s: {health['images']} images, {health['kind']}, "
              f"{health['backbone']}", flush=True)

        if args.warmup:
            run_level(port, 1, make_requests(args.warmup, ids, uploads, args.upload_fraction, args.seed + 99),
                      args.timeout)
        import torch

        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                   "torch": torch.__version__,
                   "server_torch_threads": int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS")
                   else torch.get_num_threads()}
        rows = []
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for level, c in enumerate(args.concurrency):
            reqs = make_requests(args.requests, ids, uploads, args.upload_fraction, args.seed + level)
            row = run_level(port, c, reqs, args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
            doc = {"machine": machine, "backbone": health["backbone"], "index": {"images": health["images"],
                   "kind": health["kind"], "dim": health["dim"]}, "server_startup_s": round(startup_s, 2),
                   "request": {"method": "slerp", "alpha": 0.8, "k": 10, "upload_fraction": args.upload_fraction,
                               "image_size": args.image_size}, "rows": rows}
            out.write_text(json.dumps(doc, indent=1) + "\n")
            out.with_suffix(".md").write_text(table(rows) + "\n")
        if proc.poll() is not None:
            print(f"warning: the server exited during the run (code {proc.returncode})", file=sys.stderr)
        print(f"\n{len(ids)} images ({health['kind']}, {health['backbone']}), {machine['cpus']} cpus, "
              f"server torch threads {machine['server_torch_threads']}\n")
        print(table(rows))
    finally:
        if proc is not None:
            stop_server(proc)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
