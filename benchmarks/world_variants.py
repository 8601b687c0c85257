"""World variants, measured on trained runs: the CIRR-like protocol with more twins or with more queries.

    python benchmarks/world_variants.py --home H [--home H ...] --size quick --twins 4 [--out benchmarks/results]
    python benchmarks/world_variants.py --home H [--home H ...] --size quick --cirr-queries 600

Each H is the `$ZSCIR_HOME` of a finished `zscir demo --size SIZE --seed S` run (seed read from its world).
For each, the world is regenerated with the variant appended to the CIRR-like protocol *after* every other
image of the world (so every other image, id, query and training file is the shipped world's, byte for byte,
and the trained artefacts are reused), `zscir demo` is run on it, and the shipped world is put back, even on
failure. The variants:

- `--twins N`: N more re-drawings ("twins") of every CIRR-like reference in its gallery;
- `--cirr-queries N`: N more CIRR-like queries, built as the shipped ones are (new references, each with its
  near copies, twins and queries, and the same share of distractors), so the protocol keeps its shape and grows.

Writes world_{twins,queries}_<size>.{json,md}: per seed and column, the best method's margin over the best
baseline with its paired standard error, shipped world against variant. Why these variants and what they
showed: docs/world.md, "How sure is each cell"."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from zscir.eval.claims import within_noise
from zscir.utils.io import read_json

_PATCH = """
import sys
from zscir.world import generate as g

twins, more = int(sys.argv[3]), int(sys.argv[5])
cirr_of = g._Builder.cirr
circo_of = g._Builder.circo

def cirr(self):
    self._cirr = cirr_of(self)
    return self._cirr

def circo(self):
    out = circo_of(self)  # the variant's images get ids after every shipped image: nothing else moves
    shipped = self._cirr
    refs = list(dict.fromkeys(q["reference"] for q in shipped["queries"]))
    shipped["gallery"] += [self.new_id("e", self.scenes[r]) for r in refs for _ in range(twins)]
    if more:
        keys = {self.scenes[i].key() for i in shipped["gallery"]}
        counts, self.counts = self.counts, {**self.counts, "cirr_queries": more}
        extra = cirr_of(self, taken=keys)  # the same builder, continuing its random stream; no repeated scene
        self.counts = counts
        print(f"{len(extra['queries'])} more queries, {len(extra['gallery'])} more gallery images", file=sys.stderr)
        n = len(shipped["queries"])
        shipped["queries"] += [{**q, "id": q["id"] + n} for q in extra["queries"]]
        shipped["gallery"] += extra["gallery"]
    return out

g._Builder.cirr, g._Builder.circo = cirr, circo
g.generate_world(sys.argv[1], seed=int(sys.argv[2]), size=sys.argv[4], progress=False)
"""


def _margins(results: dict) -> dict[str, dict]:
    """Per CIRR-like column: the best method, the best baseline, margin and its paired SE (the run's calibration)."""
    row = next(r for r in results["calibration"] if r["check"] == "no baseline is the best of any cirr column")
    noisy = set(row.get("within_noise", []))
    return {c: {**v, **({"within_noise": True} if c in noisy else {})} for c, v in row["columns"].items()}


def _quiet(cmd: list[str], env: dict[str, str]) -> None:
    """Run a step with its progress bars captured; on failure, stop with the end of what it printed."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed ({r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")


@dataclass(frozen=True)
class Variant:
    """What is appended to the CIRR-like protocol: `twins` per reference, `queries` more queries."""

    twins: int = 0
    queries: int = 0

    @property
    def name(self) -> str:
        return "twins" if self.twins else "queries"

    @property
    def label(self) -> str:
        return f"+{self.twins} twins" if self.twins else f"+{self.queries} queries"


def run(home: Path, size: str, variant: Variant, work: Path, demo_args: list[str]) -> dict:
    """The shipped world and the variant on one run's home, each evaluated by `zscir demo` (artefacts reused)."""
    worlds = sorted((home / "worlds").glob(f"{size}-s*"))
    worlds = [w for w in worlds if (w / "world.json").is_file()]
    if len(worlds) != 1:
        raise SystemExit(f"error: {home} should hold one finished {size} world, found {len(worlds)}")
    world = worlds[0]
    seed = int(read_json(world / "world.json")["seed"])
    keep = work / "world-as-shipped"
    shutil.copytree(world, keep)
    env = {**os.environ, "ZSCIR_HOME": str(home)}
    runs = {}
    try:
        for tag, v in (("shipped", Variant()), ("variant", variant)):
            out = work / f"{tag}-{size}-s{seed}"
            print(f"{home}: {tag} world ({v.label if tag == 'variant' else 'as shipped'}), zscir demo -> {out}",
                  flush=True)
            _quiet([sys.executable, "-c", _PATCH, str(world), str(seed), str(v.twins), size, str(v.queries)], env)
            t0 = time.perf_counter()
            _quiet([sys.executable, "-m", "zscir", "demo", "--size", size, "--seed", str(seed), "--out", str(out),
                    *demo_args], env)
            r = json.loads((out / "results.json").read_text())
            r["_wall_s"] = round(time.perf_counter() - t0, 1)
            runs[tag] = r
    finally:  # the shipped world goes back whatever happened (the variant shares its version and path)
        shutil.rmtree(world, ignore_errors=True)
        shutil.copytree(keep, world)
    return {"seed": seed, **{tag: {"cirr_queries": r["world"]["counts"]["cirr_queries"],
                                   "cirr_gallery": r["world"]["counts"]["cirr_gallery"],
                                   "slerp_alpha": r["alpha_selection"]["slerp"]["chosen"],
                                   "calibration_held": f"{sum(x['holds'] for x in r['calibration'])}/{len(r['calibration'])}",
                                   "failed": [x["check"] for x in r["calibration"] if not x["holds"]],
                                   "cached_demo_s": r["_wall_s"],
                                   "margins": _margins(r)} for tag, r in runs.items()}}


def pooled(rows: list[dict], tag: str) -> dict[str, dict]:
    """Per column, the mean margin over the seeds and its standard error: the seeds' worlds are drawn
    independently, so the SE of the mean is sqrt(sum of SE^2) / seeds."""
    out = {}
    for c in rows[0][tag]["margins"]:
        ms = [r[tag]["margins"][c] for r in rows]
        out[c] = {"margin": round(sum(m["margin"] for m in ms) / len(ms), 2),
                  "se": round(math.sqrt(sum(m["se"] ** 2 for m in ms)) / len(ms), 2)}
    return out


def _cell(m: dict) -> str:
    return f"{m['margin']:+.1f} ± {m['se']:.1f}{'*' if within_noise(m['margin'], m['se']) else ''}"


def table(size: str, variant: Variant, rows: list[dict]) -> str:
    cols = list(rows[0]["shipped"]["margins"])
    lines = [f"CIRR-like margins of the best method over the best baseline, ± the standard error of the paired "
             f"difference (points; * = within two standard errors), {size} world, shipped vs {variant.label}"
             f"{' per reference' if variant.twins else ''} (`zscir demo` on the run's trained artefacts: "
             "evaluation and alpha selection only):", "",
             "| seed | world | queries | gallery | cached demo | calibration held | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 6) + "|"]
    for r in rows:
        for tag in ("shipped", "variant"):
            v = r[tag]
            lines.append(f"| {r['seed']} | {tag if tag == 'shipped' else variant.label} | {v['cirr_queries']} | "
                         f"{v['cirr_gallery']} | {v['cached_demo_s']:.0f} s | "
                         f"{v['calibration_held']}{' (' + '; '.join(v['failed']) + ')' if v['failed'] else ''} | "
                         + " | ".join(_cell(m) for m in v["margins"].values()) + " |")
    if len(rows) > 1:
        for tag in ("shipped", "variant"):
            pool = pooled(rows, tag)
            lines.append(f"| mean of {len(rows)} | {tag if tag == 'shipped' else variant.label} | | | | | "
                         + " | ".join(_cell(pool[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", action="append", required=True, help="$ZSCIR_HOME of a finished demo run (repeat)")
    ap.add_argument("--size", default="quick", choices=("quick", "default", "large"))
    kind = ap.add_mutually_exclusive_group(required=True)
    kind.add_argument("--twins", type=int, default=0, help="extra twins per CIRR-like reference")
    kind.add_argument("--cirr-queries", type=int, default=0, help="extra CIRR-like queries (with their references)")
    ap.add_argument("--settings", help="a settings TOML for both runs (`zscir demo --settings`; default the size's)")
    ap.add_argument("--methods", help="the methods to run (`zscir demo --methods`; default all)")
    ap.add_argument("--suffix", default="", help="appended to the output files' names (world_<variant>_<size><suffix>)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    variant = Variant(twins=args.twins, queries=args.cirr_queries)
    if variant.twins <= 0 and variant.queries <= 0:
        ap.error("--twins or --cirr-queries must be a positive number")
    with tempfile.TemporaryDirectory(prefix="zscir-variant-") as tmp:
        demo_args = [*(["--settings", str(Path(args.settings).resolve())] if args.settings else []),
                     *(["--methods", args.methods] if args.methods else [])]
        rows = [run(Path(h), args.size, variant, Path(tmp) / str(i), demo_args) for i, h in enumerate(args.home)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(args.size, variant, rows)
    stem = f"world_{variant.name}_{args.size}{args.suffix}"
    (out / f"{stem}.json").write_text(json.dumps({"benchmark": f"world_{variant.name}", "size": args.size,
                                                  "twins": variant.twins, "cirr_queries": variant.queries,
                                                  "settings": args.settings, "methods": args.methods,
                                                  "runs": rows, "pooled": {t: pooled(rows, t) for t in ("shipped", "variant")}},
                                                 indent=1))
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
