"""Query latency (compose + search, k=50), recall@50 against exact search, build time and memory per vector
for each index kind (flat, HNSW, IVF-PQ with exact re-scoring), on synthetic 512-d galleries.

    PYTHONPATH=src python benchmarks/index_latency.py --sizes 100000 1000000 --out benchmarks/results/index_latency.json

Each approximate kind is measured twice: with its fixed default parameters, and with the parameters the product's
tuner (`zscir.index.kinds.tune`, what `zscir index --target-recall` runs) picks for --target-recall on 200 composed
queries drawn from the gallery (kinds.composed_queries: a gallery item slerped towards another); the recall
reported is measured on the benchmark's own, held-out queries.

The gallery is clustered (2,000 Gaussian clusters on the sphere) so that approximate indexes face a realistic
neighbourhood structure; queries are Slerp compositions (alpha 0.8) of a perturbed gallery vector and a "text" direction
(`--text-model gallery`: another perturbed gallery item, as a text embedding lives in the same space;
`random`: a direction unrelated to the gallery, the worst case for approximate search), composed one at a time as the service does. Search goes through the product's own
search path (zscir.index.store.search_vectors, with the manifest's search parameters and re-scoring), one
query per call. Backbone encoding is not included (see benchmarks/embed_throughput.py)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from zscir.index import kinds
from zscir.index.store import search_vectors
from zscir.methods.slerp import slerp


def synthetic(n: int, d: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, d), np.float16)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        x = centers[rng.integers(0, clusters, m)] + 0.6 / np.sqrt(d) * rng.standard_normal((m, d)).astype(np.float32) * 1.5
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m] = x
    return out


def queries(gallery: np.ndarray, q: int, seed: int = 1, text_model: str = "gallery") -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    d = gallery.shape[1]
    img = gallery[rng.integers(0, len(gallery), q)].astype(np.float32) + 0.02 * rng.standard_normal((q, d)).astype(np.float32)
    if text_model == "random":
        # a direction unrelated to the gallery: the query lands far from every cluster (worst case for ANN)
        txt = rng.standard_normal((q, d)).astype(np.float32)
    else:
        # a text embedding lives in the same semantic space: another gallery item's direction, perturbed
        txt = gallery[rng.integers(0, len(gallery), q)].astype(np.float32) + 0.02 * rng.standard_normal((q, d)).astype(np.float32)
    return torch.from_numpy(img), torch.from_numpy(txt)


def bench(n: int, kinds_: list[str], n_queries: int, k: int, d: int, seed: int, text_model: str = "gallery",
          target: float = 0.95) -> list[dict]:
    t0 = time.perf_counter()
    gal = synthetic(n, d, seed)
    print(f"[{n}] synthetic gallery in {time.perf_counter() - t0:.1f}s", flush=True)
    img, txt = queries(gal, n_queries, text_model=text_model)
    composed = np.concatenate([slerp(img[i : i + 1], txt[i : i + 1], 0.8).numpy() for i in range(n_queries)])
    truth = kinds.exact_topk([gal], composed, k)
    # The product's tuning queries (kinds.composed_queries, other seed): what `zscir index --target-recall` uses
    # without a text tower; the recall reported below is measured on the benchmark's own held-out queries.
    tq = kinds.composed_queries(lambda pos: gal[pos].astype(np.float32), n, 200, None, seed=12345)
    rows = []
    for kind in kinds_:
        factory, params, rerank = kinds.factory_for(kind, n, d)
        sample = None
        if not faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT).is_trained:
            rng = np.random.default_rng(0)
            sample = gal[np.sort(rng.choice(n, size=min(n, 100_000), replace=False))].astype(np.float32)
        t0 = time.perf_counter()
        index = kinds.build(factory, d, (gal[s : s + 100_000] for s in range(0, n, 100_000)), n, sample)
        build_s = time.perf_counter() - t0
        index_bytes = len(faiss.serialize_index(index))
        settings = [("default", params, rerank, None, 0.0)]
        if factory != "Flat" and target > 0:
            t0 = time.perf_counter()
            res = kinds.tune(index, [gal], tq, k, target, params, rerank)
            settings.append(("tuned", res.search, res.rerank, res, time.perf_counter() - t0))
        for label, p, rr, res, tune_s in settings:
            kinds.apply_search_params(index, p)
            lat, found = [], []
            for i in range(n_queries):
                t = time.perf_counter()
                q = slerp(img[i : i + 1], txt[i : i + 1], 0.8).numpy()  # compose
                _, pos = search_vectors(index, [gal], q, k, rerank=rr)  # search (+ exact re-scoring)
                lat.append((time.perf_counter() - t) * 1000)
                found.append(pos[0])
            recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
            lat_a = np.array(lat[5:] if len(lat) > 10 else lat)  # drop warm-up
            row = {
                "n": n, "queries": text_model, "kind": kind, "setting": label, "factory": factory, "search_params": p,
                "rerank": rr, "build_s": round(build_s, 2), "p50_ms": round(float(np.percentile(lat_a, 50)), 3),
                "p99_ms": round(float(np.percentile(lat_a, 99)), 3), f"recall@{k}": round(recall, 4),
                "index_bytes_per_vector": round(index_bytes / n, 1),
                "bytes_per_vector_with_shards": round(index_bytes / n + (2 * d if rr else 0), 1),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
            if res is not None:
                row.update({"target_recall": target, "tuning_recall": res.recall, "tuning_reached": res.reached,
                            "tuning_s": round(tune_s, 1), "tuning_tried": len(res.tried)})
            print(json.dumps(row), flush=True)
            rows.append(row)
        del index
    return rows


def table(rows: list[dict], k: int) -> str:
    head = (f"| n | queries | kind | setting | factory | params | p50 ms | p99 ms | recall@{k} (held-out) | "
            f"recall@{k} (tuning queries) | B/vector (index) | B/vector (+shards for re-scoring) | build s | tune s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r.get('queries', 'random')} | {r['kind']} | {r.get('setting', 'default')} | "
                     f"`{r['factory']}` | `{r['search_params'] or '-'}`"
                     f"{' +rerank x' + str(r['rerank']) if r['rerank'] else ''} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r[f'recall@{k}']} | {r.get('tuning_recall', '-')} | {r['index_bytes_per_vector']} | "
                     f"{r['bytes_per_vector_with_shards']} | {r['build_s']} | {r.get('tuning_s', '-')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-model", choices=("gallery", "random"), default="gallery",
                    help="the query's text direction: another (perturbed) gallery item, or a random direction "
                         "unrelated to the gallery (the worst case for approximate search)")
    ap.add_argument("--target-recall", type=float, default=0.95,
                    help="tune each approximate kind with the product's tuner (kinds.tune) to this recall@k; 0: off")
    ap.add_argument("--out", default="benchmarks/results/index_latency.json")
    args = ap.parse_args()
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        rows += bench(n, args.kinds, args.queries, args.k, args.dim, args.seed, args.text_model, args.target_recall)
        doc = {"machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                           "platform": platform.platform(), "faiss": faiss.__version__},
               "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
               "k": args.k, "queries": args.queries, "dim": args.dim, "rows": rows}
        out.write_text(json.dumps(doc, indent=1) + "\n")
        out.with_suffix(".md").write_text(table(rows, args.k) + "\n")
    print(table(rows, args.k))


if __name__ == "__main__":
    main()
