"""A world variant, measured on trained runs: more re-drawings ("twins") of each CIRR-like reference in the gallery.

    python benchmarks/world_twins.py --home H [--home H ...] --size quick --twins 4 [--out benchmarks/results]

Each H is the `$ZSCIR_HOME` of a finished `zscir demo --size SIZE --seed S` run (seed read from its world).
For each, the world is regenerated with TWINS more twins of every CIRR-like reference appended to the CIRR-like
gallery *after* every other image of the world (so every other image, id, query and training file is the
shipped world's, byte for byte, and the trained artefacts are reused), `zscir demo` is run on it, and the
shipped world is put back, even on failure. Writes world_twins_<size>.{json,md}: per seed and column, the best
method's margin over the best baseline with its paired standard error, shipped world against variant. Why this
variant and what it showed: docs/world.md, "How sure is each cell"."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zscir.utils.io import read_json

_PATCH = """
import sys
from zscir.world import generate as g

n = int(sys.argv[3])
cirr_of = g._Builder.cirr
circo_of = g._Builder.circo

def cirr(self):
    self._cirr = cirr_of(self)
    return self._cirr

def circo(self):
    out = circo_of(self)  # the twins get ids after every shipped image: nothing else moves
    for r in dict.fromkeys(q["reference"] for q in self._cirr["queries"]):
        self._cirr["gallery"] += [self.new_id("e", self.scenes[r]) for _ in range(n)]
    return out

g._Builder.cirr, g._Builder.circo = cirr, circo
g.generate_world(sys.argv[1], seed=int(sys.argv[2]), size=sys.argv[4], progress=False)
"""


def _margins(results: dict) -> dict[str, dict]:
    """Per CIRR-like column: the best method, the best baseline, margin, paired SE (from the run's calibration)."""
    p = results["protocols"]["cirr"]
    base = [b for b in ("image", "text", "sum") if b in p]
    out = {}
    for c in p["sum"]:
        best = max((m for m in p if m not in base), key=lambda m: p[m][c])
        b = max(base, key=lambda m: p[m][c])
        out[c] = {"best": best, "baseline": b, "margin": round(p[best][c] - p[b][c], 2)}
    row = next(r for r in results["calibration"] if r["check"] == "no baseline is the best of any cirr column")
    for c in row.get("within_noise", []):
        out[c]["within_noise"] = True
    return out


def _quiet(cmd: list[str], env: dict[str, str]) -> None:
    """Run a step with its progress bars captured; on failure, stop with the end of what it printed."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed ({r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")


def run(home: Path, size: str, twins: int, work: Path) -> dict:
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
        for tag, n in (("shipped", 0), ("variant", twins)):
            out = work / f"{tag}-{size}-s{seed}"
            print(f"{home}: {tag} world ({n} more twins per reference), zscir demo -> {out}", flush=True)
            _quiet([sys.executable, "-c", _PATCH, str(world), str(seed), str(n), size], env)
            _quiet([sys.executable, "-m", "zscir", "demo", "--size", size, "--seed", str(seed), "--out", str(out)], env)
            runs[tag] = json.loads((out / "results.json").read_text())
    finally:  # the shipped world goes back whatever happened (the variant shares its version and path)
        shutil.rmtree(world, ignore_errors=True)
        shutil.copytree(keep, world)
    return {"seed": seed, **{tag: {"cirr_gallery": r["world"]["counts"]["cirr_gallery"],
                                   "slerp_alpha": r["alpha_selection"]["slerp"]["chosen"],
                                   "calibration_held": f"{sum(x['holds'] for x in r['calibration'])}/{len(r['calibration'])}",
                                   "failed": [x["check"] for x in r["calibration"] if not x["holds"]],
                                   "margins": _margins(r)} for tag, r in runs.items()}}


def table(size: str, twins: int, rows: list[dict]) -> str:
    cols = list(rows[0]["shipped"]["margins"])
    lines = [f"CIRR-like margins of the best method over the best baseline (points; * = within two paired standard "
             f"errors), {size} world, shipped vs +{twins} twins per reference:", "",
             "| seed | world | gallery | calibration held | " + " | ".join(cols) + " |", "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        for tag in ("shipped", "variant"):
            v = r[tag]
            cells = [f"{m['margin']:+.1f}{'*' if m.get('within_noise') else ''}" for m in v["margins"].values()]
            lines.append(f"| {r['seed']} | {tag if tag == 'shipped' else f'+{twins} twins'} | {v['cirr_gallery']} | "
                         f"{v['calibration_held']}{' (' + '; '.join(v['failed']) + ')' if v['failed'] else ''} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", action="append", required=True, help="$ZSCIR_HOME of a finished demo run (repeat)")
    ap.add_argument("--size", default="quick", choices=("quick", "default", "large"))
    ap.add_argument("--twins", type=int, default=4, help="extra twins per CIRR-like reference (default 4)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zscir-twins-") as tmp:
        rows = [run(Path(h), args.size, args.twins, Path(tmp) / str(i)) for i, h in enumerate(args.home)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(args.size, args.twins, rows)
    (out / f"world_twins_{args.size}.json").write_text(json.dumps({"benchmark": "world_twins", "size": args.size,
                                                                     "twins": args.twins, "runs": rows}, indent=1))
    (out / f"world_twins_{args.size}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
