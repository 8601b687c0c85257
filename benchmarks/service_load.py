"""Load test of the HTTP service (`zscir serve`): throughput, latency and memory of POST /search under a
bounded number of concurrent clients on loopback, with micro-batching on and off side by side in one run.

    .venv/bin/python benchmarks/service_load.py --modes unbatched batched --concurrency 1 4 16 64 \
        --images 2000 --requests 300   # -> benchmarks/results/service_load.{json,md}

What it does: generates a gallery (--images PNGs of random coloured shapes) and indexes it with the product's
own path (`zscir index`, backbone --backbone; or reuses --index). Then, for each mode (`unbatched`:
`zscir serve --no-batching`; `batched`: the default micro-batcher; `batched-w2`: batched with --workers 2),
it starts `python -m zscir serve INDEX` as a real server on 127.0.0.1 (a free port), waits for GET /health,
and for each workload (`gallery`: the reference is a gallery id; `upload`: an uploaded PNG) and each
concurrency level C sends --requests POST /search requests (--upload-requests for uploads) from C client
threads, each with its own keep-alive connection, as multipart forms like the web page sends them: a
modification text drawn from --texts distinct texts, method slerp, alpha 0.8, k 10. Latency is measured at
the client (send -> full response read); `server_p50_ms` is the service's own `took_ms` (compose + search,
including the wait for a batch or for the model). After each mode the memory of the service (every process
of it: RSS, PSS = proportional set size, which splits shared pages such as the memory-mapped index among
the workers, and peak RSS) is read from /proc, and the server's batching statistics from /health. The server
is always terminated. The client threads run on the same cores as the server (they compete with it).

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
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta"]
SHAPES = ["circle", "square", "triangle", "star", "ring"]
TEMPLATES = ["make it {c}", "but {c}", "a {c} {s} instead", "as a {s}", "the same {s} in {c}", "{c} and smaller",
             "on a {c} background", "but a {s}"]
MODES = {"unbatched": ["--no-batching"], "batched": [], "batched-w2": ["--workers", "2"]}


def texts(n: int, seed: int = 7) -> list[str]:
    """n distinct modification texts (the text cache sees repeats only as often as clients repeat them)."""
    all_ = sorted({t.format(c=c, s=sh) for t in TEMPLATES for c in COLORS for sh in SHAPES})
    random.Random(seed).shuffle(all_)
    return all_[: max(1, min(n, len(all_)))]


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


def start_server(index: Path, port: int, backbone: str | None, env: dict, log: Path,
                 extra: list[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zscir", "serve", str(index), "--host", "127.0.0.1", "--port", str(port), *extra]
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


def process_memory(pid: int) -> dict:
    """RSS, PSS and peak RSS (MiB) summed over the process and its descendants (uvicorn workers)."""
    pids, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(c) for c in children]
        frontier += [int(c) for c in children]
    tot = {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0, "peak_rss_mib": 0.0}
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        field_kb = lambda text, key: int(text.split(key + ":")[1].split()[0]) if key + ":" in text else 0  # noqa: E731
        tot["processes"] += 1
        tot["rss_mib"] += field_kb(status, "VmRSS") / 1024
        tot["peak_rss_mib"] += field_kb(status, "VmHWM") / 1024
        tot["pss_mib"] += field_kb(rollup, "Pss") / 1024
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in tot.items()}


def make_requests(n: int, ids: list[str], uploads: list[bytes], upload_fraction: float, seed: int,
                  text_pool: list[str]) -> list[tuple]:
    """(kind, body, content type) for n requests; exactly round(n * upload_fraction) of them upload a PNG."""
    rng = random.Random(seed)
    n_up = round(n * upload_fraction)
    kinds = ["upload"] * n_up + ["gallery"] * (n - n_up)
    rng.shuffle(kinds)
    out = []
    for kind in kinds:
        fields = {"text": rng.choice(text_pool), "method": "slerp", "alpha": "0.8", "k": "10"}
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
    lines = ["| mode | workload | clients | requests | errors | req/s | p50 ms | p99 ms | max ms | "
             "server took_ms p50 |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['workload']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['server_p50_ms']} |")
    return "\n".join(lines)


def memory_table(servers: list[dict]) -> str:
    lines = ["| mode | processes | RSS MiB | PSS MiB | peak RSS MiB | start-up s | batches | mean batch | "
             "max batch | texts encoded | images encoded |", "|" + "---|" * 11]
    for s in servers:
        m, b = s["memory"], s.get("batching") or {}
        lines.append(f"| {s['mode']} | {m['processes']} | {m['rss_mib']} | {m['pss_mib']} | {m['peak_rss_mib']} | "
                     f"{s['startup_s']} | {b.get('batches', '-')} | {b.get('mean_batch', '-')} | "
                     f"{b.get('max_batch_seen', '-')} | {b.get('text_encoded', '-')} | {b.get('images_encoded', '-')} |")
    return "\n".join(lines)


def hottest(profile: Path, top: int = 25) -> str:
    """Share of samples per function (inclusive, by innermost-first frame names) from py-spy's raw output."""
    from collections import Counter

    total, own, incl = 0, Counter(), Counter()
    if not profile.is_file():
        return "(no profile written)"
    for line in profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} samples; self time:"] + [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    lines += ["inclusive:"] + [f"  {100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    return "\n".join(lines)


def health(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/health")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=None,
                    help="backbone spec for the generated index (default: 'default'; 'fake' = py:zscir_fakes:make "
                    "from tests/); with --index, overrides the index's own spec")
    ap.add_argument("--index", default=None, help="reuse this index folder instead of generating one")
    ap.add_argument("--images", type=int, default=300, help="generated gallery size")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["unbatched", "batched"], choices=list(MODES),
                    help="server configurations, measured one after the other in this run")
    ap.add_argument("--workloads", nargs="+", default=["gallery", "upload"], choices=["gallery", "upload", "mixed"],
                    help="gallery: gallery-id references; upload: uploaded PNGs; mixed: --upload-fraction uploads")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client threads, one level each")
    ap.add_argument("--requests", type=int, default=300, help="requests per level (gallery and mixed workloads)")
    ap.add_argument("--upload-requests", type=int, default=150, help="requests per level (upload workload)")
    ap.add_argument("--upload-fraction", type=float, default=0.25, help="share of uploads in the mixed workload")
    ap.add_argument("--texts", type=int, default=100, help="distinct modification texts the clients draw from")
    ap.add_argument("--warmup", type=int, default=10, help="sequential requests before the first level (not counted)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout, s")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the server (default: inherit)")
    ap.add_argument("--py-spy", default=None, metavar="PY_SPY",
                    help="profile each server with this py-spy binary while it is loaded: "
                    "<out>-<mode>.profile.txt (collapsed stacks) and a summary of the hottest frames")
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
        pool = texts(args.texts)
        import torch

        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                   "torch": torch.__version__,
                   "server_torch_threads": int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS")
                   else torch.get_num_threads(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
        rows, servers = [], []
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        info = {}
        for mode in args.modes:
            port = free_port()
            log = work / f"serve-{mode}.log"
            t0 = time.perf_counter()
            # a py: spec is code: the server never takes it from the manifest, it is passed on its command line
            spec = user_spec if args.index else (user_spec if user_spec and user_spec.startswith("py:") else None)
            proc = start_server(index, port, spec, env, log, MODES[mode])
            info = wait_health(proc, port, args.startup_timeout, log)
            startup_s = round(time.perf_counter() - t0, 2)
            print(f"[{mode}] server up on port {port} in {startup_s:.1f}s: {info['images']} images, {info['kind']}, "
                  f"{info['backbone']}", flush=True)
            if args.warmup:
                run_level(port, 1, make_requests(args.warmup, ids, uploads, 0.5, args.seed + 99, pool), args.timeout)
            spy = None
            if args.py_spy:
                prof = out.with_name(f"{out.stem}-{mode}.profile.txt")
                spy = subprocess.Popen([args.py_spy, "record", "-p", str(proc.pid), "--subprocesses", "-r", "50",
                                        "-f", "raw", "-o", str(prof), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            for level, c in enumerate(args.concurrency):
                for workload in args.workloads:
                    frac = {"gallery": 0.0, "upload": 1.0, "mixed": args.upload_fraction}[workload]
                    n = args.upload_requests if workload == "upload" else args.requests
                    # the same requests for every mode: the comparison is side by side
                    reqs = make_requests(n, ids, uploads, frac, args.seed + 1000 * level + len(workload), pool)
                    row = {"mode": mode, "workload": workload, **run_level(port, c, reqs, args.timeout)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            if spy is not None:
                import signal

                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                print(f"[{mode}] profile: {prof}\n" + hottest(prof), flush=True)
            mem = process_memory(proc.pid)
            batching = health(port).get("batching")
            servers.append({"mode": mode, "flags": MODES[mode], "startup_s": startup_s, "memory": mem,
                            "batching": batching})
            print(f"[{mode}] memory {mem}; batching {batching}", flush=True)
            if proc.poll() is not None:
                print(f"warning: the server exited during the run (code {proc.returncode})", file=sys.stderr)
            stop_server(proc)
            proc = None
            machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            doc = {"machine": machine, "backbone": info["backbone"], "index": {"images": info["images"],
                   "kind": info["kind"], "dim": info["dim"]},
                   "request": {"method": "slerp", "alpha": 0.8, "k": 10, "distinct_texts": len(pool),
                               "upload_fraction_mixed": args.upload_fraction, "image_size": args.image_size},
                   "servers": servers, "rows": rows}
            out.write_text(json.dumps(doc, indent=1) + "\n")
            out.with_suffix(".md").write_text(table(rows) + "\n\n" + memory_table(servers) + "\n")
        print(f"\n{len(ids)} images ({info.get('kind')}, {info.get('backbone')}), {machine['cpus']} cpus, "
              f"server torch threads {machine['server_torch_threads']}\n")
        print(table(rows))
        print()
        print(memory_table(servers))
    finally:
        if proc is not None:
            stop_server(proc)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
