"""The published claims and the world's calibration over several seeds, from `zscir demo` results files.

    python benchmarks/claims_table.py RESULTS.json [RESULTS.json ...] [--name quick] [--out benchmarks/results]

Each RESULTS.json is the `results.json` of one `zscir demo --seed S` run (same size, different seeds). Writes
claims_<name>.json and claims_<name>.md: the headline metrics of every method per seed (CIRR-like R@1 /
CIRCO-like mAP@10) with their mean, every claim (`zscir.eval.claims.claims`) and calibration check
(`zscir.eval.claims.calibration`) per seed, the modality gap before and after TAT, and the run times. Nothing is
recomputed: the rows are the demo's own, so the table says exactly what the runs measured, including which
comparisons were within noise (under two standard errors of the paired difference, where the run recorded them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean


def _yes(row: dict) -> str:
    return "yes" if row["holds"] else "**no**"


def _noise_note(per: list[dict]) -> str:
    """How many seeds' comparisons were within noise (two paired standard errors; runs that recorded them)."""
    if any("within_noise" in p for p in per):
        return " (columns within noise per seed: " + ", ".join(str(len(p.get("within_noise", []))) for p in per) + ")"
    noisy = sum("within noise" in p["measured"] for p in per)
    return f" ({noisy} within noise)" if noisy else ""


def table(runs: list[dict]) -> str:
    seeds = [r["world"]["seed"] for r in runs]
    head = "| " + " | ".join(f"seed {s}" for s in seeds)
    lines = [f"Worlds: {runs[0]['world']['size']}, seeds {', '.join(map(str, seeds))}; "
             f"backbone {runs[0]['backbone'].split(':')[0]} (pre-trained per seed).", "",
             "**Headline metrics** (CIRR-like R@1 / CIRCO-like mAP@10):", "",
             "| method " + head + " | mean |", "|---" * (len(runs) + 2) + "|"]
    for m in runs[0]["protocols"]["cirr"]:
        cells = [(r["protocols"]["cirr"][m]["R@1"], r["protocols"]["circo"][m]["mAP@10"]) for r in runs
                 if m in r["protocols"]["cirr"]]
        if len(cells) != len(runs):
            continue
        lines.append(f"| {m} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in cells)
                     + f" | {mean(a for a, _ in cells):.1f} / {mean(b for _, b in cells):.1f} |")
    for key, title in (("claims", "claim"), ("calibration", "check")):
        lines += ["", f"**{'Published claims' if key == 'claims' else 'World calibration'}** (holds per seed):", "",
                  f"| {title} {head} | held |", "|---" * (len(runs) + 2) + "|"]
        for i, row in enumerate(runs[0][key]):
            per = [r[key][i] for r in runs]
            assert all(p[title] == row[title] for p in per), "runs with different check lists"
            lines.append(f"| {row[title]} | " + " | ".join(f"{_yes(p)}: {p['measured']}" for p in per)
                         + f" | {sum(p['holds'] for p in per)}/{len(per)}{_noise_note(per)} |")
    lines += ["", "| seed | pre-training: held-out t2i R@1 | matched cosine before -> after TAT | "
              "centroid distance before -> after | total time |", "|---|---|---|---|---|"]
    for r in runs:
        g = r.get("modality_gap", {})
        b, a = g.get("before", {}), g.get("after", {})
        t2i = (r.get("pretrain_val") or {}).get("t2i_R@1")
        lines.append(f"| {r['world']['seed']} | {'-' if t2i is None else f'{t2i:.1f}'} | "
                     f"{b.get('matched_cosine', float('nan')):.3f} -> "
                     f"{a.get('matched_cosine', float('nan')):.3f} | {b.get('centroid_distance', float('nan')):.3f} -> "
                     f"{a.get('centroid_distance', float('nan')):.3f} | {r['timings_s']['total']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json of `zscir demo` runs (one per seed)")
    ap.add_argument("--name", default=None, help="suffix of the output files (default: the world size)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    runs = [json.loads(Path(p).read_text()) for p in args.results]
    sizes = {r["world"]["size"] for r in runs}
    if len(sizes) != 1:
        raise SystemExit(f"error: the runs are of different world sizes ({', '.join(sorted(sizes))})")
    name = args.name or sizes.pop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(runs)
    summary = {"benchmark": "claims", "runs": [{"seed": r["world"]["seed"], "protocols": r["protocols"],
                                                "claims": r["claims"], "calibration": r["calibration"], "modality_gap": r.get("modality_gap"), "pretrain_val": r.get("pretrain_val"),
                                                "timings_s": r["timings_s"]} for r in runs]}
    (out / f"claims_{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"claims_{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
