"""Memory of `zscir serve` under near-limit uploads (issue 15, item 6): small files that declare a large image.

    .venv/bin/python benchmarks/upload_memory.py                    # -> benchmarks/results/upload_memory.{json,md}
    .venv/bin/python benchmarks/upload_memory.py --src /tmp/old/src --tag before   # another source tree

What it does: indexes a small gallery, starts `python -m zscir serve` as a real server on 127.0.0.1, warms it
up with a few ordinary searches and records its resident memory (VmRSS of the server process) as `idle`.
Then, --rounds times, --concurrency clients each POST /search one PNG that is a few hundred kB on the wire
but declares --side x --side pixels (6300 x 6300 = 39.7 MP, just under the service's 40 MP limit); the
server's RSS is sampled every 10 ms during each burst (`peak`), and read again --settle seconds after the
last answer (`after`). The requirement is `after` within 20% of `idle`.

--backbone untrained-default (the default) saves the embedded default with seeded, untrained heads (real
EfficientNet-Lite0 + MiniLM towers, so the server's idle memory is that of a real deployment) and serves it;
`fake` uses the tests' tiny backbone (seconds; the model is then negligible)."""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC, TESTS = ROOT / "src", ROOT / "tests"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict[str, str], image: bytes | None) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="u.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def post(port: int, image: bytes | None, fields: dict[str, str], timeout: float = 600) -> tuple[int, float]:
    body, ctype = multipart(fields, image)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/search", body=body, headers={"Content-Type": ctype})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, time.perf_counter() - t0


def make_backbone(kind: str, work: Path, env: dict) -> str:
    if kind == "fake":
        return "py:zscir_fakes:make"
    code = ("import torch; from zscir.backbones.default import DefaultBackbone; torch.manual_seed(0); "
            f"DefaultBackbone().save({str(work / 'model')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return f"default:{work / 'model'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=("untrained-default", "fake"), default="untrained-default")
    ap.add_argument("--side", type=int, default=6300, help="declared width = height of each upload")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after a burst before `after` is read")
    ap.add_argument("--src", default=str(SRC), help="the zscir source tree the server runs (default: this one)")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. 'before')")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    from PIL import Image

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([args.src, str(TESTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    work = Path(tempfile.mkdtemp(prefix="zscir_upload_memory_"))
    env["ZSCIR_HOME"] = str(work / "home")
    proc = None
    try:
        spec = make_backbone(args.backbone, work, env)
        gallery = work / "g"
        gallery.mkdir()
        for i in range(24):
            Image.new("RGB", (64, 64), ((i * 37) % 255, (i * 91) % 255, (i * 53) % 255)).save(gallery / f"{i:03d}.png")
        subprocess.run([sys.executable, "-m", "zscir", "index", str(gallery), "--out", str(work / "idx"),
                        "--backbone", spec, "--no-progress"], check=True, env=env, capture_output=True)
        big = io.BytesIO()
        Image.new("RGB", (args.side, args.side), (180, 40, 40)).save(big, "PNG", optimize=True)
        upload = big.getvalue()
        small = io.BytesIO()
        Image.new("RGB", (64, 64), (180, 40, 40)).save(small, "PNG")

        port = free_port()
        log = open(work / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "zscir", "serve", str(work / "idx"), "--port", str(port),
                                 "--backbone", spec], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start:\n{(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for _ in range(5):  # warm-up: first requests allocate the model's buffers
            post(port, small.getvalue(), {"text": "make it blue", "k": "5"})
        time.sleep(1.0)
        idle = rss_mb(proc.pid)

        rounds = []
        for r in range(args.rounds):
            peak, stop = [idle], threading.Event()

            def sample(stop: threading.Event = stop, peak: list[float] = peak) -> None:
                while not stop.is_set():
                    peak.append(rss_mb(proc.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results: list[tuple[int, float]] = []
            lock = threading.Lock()

            def client(lock: threading.Lock = lock, results: list[tuple[int, float]] = results) -> None:
                res = post(port, upload, {"text": "make it blue", "k": "5"})
                with lock:
                    results.append(res)

            t0 = time.perf_counter()
            clients = [threading.Thread(target=client) for _ in range(args.concurrency)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            burst_s = time.perf_counter() - t0
            time.sleep(args.settle)
            stop.set()
            sampler.join()
            after = rss_mb(proc.pid)
            statuses = sorted({s for s, _ in results})
            rounds.append({"round": r + 1, "peak_mb": round(max(peak), 1), "after_mb": round(after, 1),
                           "burst_s": round(burst_s, 2), "statuses": statuses,
                           "max_latency_s": round(max(t for _, t in results), 2)})
            print(f"round {r + 1}: peak {max(peak):.0f} MB, after {after:.0f} MB, statuses {statuses}, "
                  f"{burst_s:.1f} s", flush=True)

        final = rounds[-1]["after_mb"]
        doc = {
            "benchmark": "upload_memory", "src": "this tree" if Path(args.src) == SRC else args.src,
            "tag": args.tag, "backbone": args.backbone,
            "upload": {"declared": f"{args.side}x{args.side}", "pixels": args.side * args.side,
                       "file_bytes": len(upload), "format": "PNG RGB"},
            "concurrency": args.concurrency, "idle_mb": round(idle, 1), "rounds": rounds,
            "peak_mb": max(r["peak_mb"] for r in rounds), "after_mb": final,
            "after_over_idle": round(final / idle, 3), "within_20_percent": final <= 1.2 * idle,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = "upload_memory" + (f"_{args.tag}" if args.tag else "")
        (out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        lines = [f"# zscir serve: {args.concurrency} concurrent uploads of a {len(upload) // 1024} kB PNG declaring "
                 f"{args.side}x{args.side} ({args.backbone} backbone)", "",
                 "| round | idle MB | peak MB | after MB | after / idle | statuses | burst s |", "|---|---|---|---|---|---|---|"]
        for r in rounds:
            lines.append(f"| {r['round']} | {idle:.0f} | {r['peak_mb']:.0f} | {r['after_mb']:.0f} | "
                         f"{r['after_mb'] / idle:.2f} | {','.join(map(str, r['statuses']))} | {r['burst_s']} |")
        (out / f"{name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"-> {out / name}.json")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
