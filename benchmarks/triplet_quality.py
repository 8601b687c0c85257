"""How good are the synthetic CIR triplets `zscir data make-triplets` makes from image-caption pairs? Measured on
a synthetic world, whose scenes say what each image holds.

    python benchmarks/triplet_quality.py --world W --backbone M [--floors ...] [--margins ...] [--out benchmarks/results]

The world's pairs are written as a JSONL listing (what a user has); for each similarity floor the command's
function makes triplets, and each kept triplet is checked against the target's scene: every (colour, shape)
named together in the edited caption ("a red star", "a large red star") must be an object of the target
scene. `precision` is the fraction of checkable triplets that pass; `ceiling` the fraction for which some
image of the pool (the pairs' images) would pass at all; `random target` is the same check for a random image
(chance). Writes triplet_quality.json and .md."""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

from zscir.world.scene import COLOURS, SHAPES

_TOKEN = re.compile(r"[a-z]+")


def named_combos(caption: str) -> set[tuple[str, str]]:
    """(shape, colour) pairs named together: a colour word at most 2 words before a shape word."""
    words = _TOKEN.findall(caption.lower())
    out = set()
    for i, w in enumerate(words):
        if w in SHAPES:
            for c in words[max(0, i - 2) : i]:
                if c in COLOURS:
                    out.add((w, c))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--backbone", required=True, help="a pre-trained backbone (zscir pretrain --world W --out M)")
    ap.add_argument("--floors", type=float, nargs="+", default=[-1.0, 0.5, 0.6, 0.7, 0.75])
    ap.add_argument("--margins", type=float, nargs="+", default=[-1.0, 0.0, 0.05],
                    help="--min-margin values (negative: no margin check)")
    ap.add_argument("--per-caption", type=int, default=2)
    ap.add_argument("--unlabelled-targets", action="store_true",
                    help="also offer the world's unlabelled images as targets (make-triplets --targets)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    from zscir.backbones import load_backbone
    from zscir.data import make_cir_triplets, open_source, read_cir_triplets
    from zscir.train.triplets import generate_triplets
    from zscir.world import load_world

    world = load_world(args.world)
    backbone = load_backbone(args.backbone)
    scene_of = {str(world.image_path(i).resolve()): world.scene(i) for i in world.scenes_raw}
    rng = random.Random(0)
    locations = list(scene_of)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "pairs.jsonl"
        listing.write_text("".join(json.dumps({"image": str(world.image_path(p["image"]).resolve()),
                                               "caption": p["caption"]}) + "\n" for p in world.pairs))
        src = open_source(str(listing))
        pool = [world.scene(p["image"]).combos() for p in world.pairs]  # what the targets are chosen from
        targets = None
        if args.unlabelled_targets:
            from zscir.data import PathsSource

            targets = PathsSource([world.image_path(i).resolve() for i in world.unlabelled])
            pool += [world.scene(i).combos() for i in world.unlabelled]
        for margin, floor in [(m, f) for m in args.margins for f in args.floors]:
            out = Path(tmp) / f"t{floor}-{margin}.jsonl"
            try:
                rep = make_cir_triplets(backbone, src, out, lambda c, k, s: generate_triplets(c, per_caption=k, seed=s),
                                        per_caption=args.per_caption, min_similarity=floor,
                                        min_margin=None if margin < 0 else margin, cache=Path(tmp) / "cache",
                                        targets=targets)
            except Exception as e:  # noqa: BLE001 - a floor nothing clears is a row too
                rows.append({"floor": floor, "margin": margin, "kept": 0, "error": str(e)})
                continue
            raw = [json.loads(line) for line in out.read_text().splitlines()]
            trips = read_cir_triplets(out)
            checked = ok = chance = possible = 0
            for t, r in zip(trips, raw):
                combos = named_combos(r["target_caption"])
                if not combos:
                    continue
                checked += 1
                ok += combos <= scene_of[str(Path(t.target).resolve())].combos()
                chance += combos <= scene_of[rng.choice(locations)].combos()
                possible += any(combos <= c for c in pool)  # some image of the pool could be a right target
            rows.append({"floor": floor, "margin": margin, "candidates": rep.candidates, "kept": rep.kept,
                         "kept_fraction": round(rep.kept_fraction, 4), "checked": checked,
                         "precision": round(ok / checked, 4) if checked else None,
                         "random_target_precision": round(chance / checked, 4) if checked else None,
                         "ceiling": round(possible / checked, 4) if checked else None,
                         "mean_similarity_kept": rep.mean_similarity_kept})
            print(rows[-1], file=sys.stderr)
    doc = {"benchmark": "triplet_quality", "world": world.meta.get("size"), "seed": world.meta.get("seed"),
           "pairs": len(world.pairs), "backbone": args.backbone, "unlabelled_targets": args.unlabelled_targets,
           "per_caption": args.per_caption, "rows": rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "triplet_quality" + ("_unlabelled_targets" if args.unlabelled_targets else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["| min margin | floor | kept / edits | kept fraction | precision (checked) | ceiling | random target |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = "none" if r["margin"] < 0 else f"{r['margin']:g}"
        if "error" in r:
            lines.append(f"| {m} | {r['floor']:g} | 0 | 0 | - | - | - |")
            continue
        lines.append(f"| {m} | {r['floor']:g} | {r['kept']} / {r['candidates']} | {r['kept_fraction']:.1%} | "
                     f"{r['precision']:.1%} ({r['checked']}) | {r['ceiling']:.1%} | {r['random_target_precision']:.1%} |")
    table = "\n".join(lines) + "\n"
    (out_dir / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
