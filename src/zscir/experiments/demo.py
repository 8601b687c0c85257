"""`zscir demo`: every method on the synthetic world, end to end, on the embedded default.

A thin composition of the experiments layer: build (or reuse) the context (world, pre-trained default, settings),
obtain each method through its recipe, evaluate all of them on both held-out protocols, print one table and
write `results.json` and `report.html` into --out."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zscir.utils.cli import add_device_arg, add_seed_arg

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    quick: bool = False
    size: str = ""  # world size; default: quick -> "quick", else "default"
    seed: int = 0
    methods: str = ""  # comma-separated subset; empty = every recipe
    device: str = ""
    examples: int = 6
    settings: str = ""  # a settings TOML replacing experiments/settings/<size>.toml

    @property
    def world_size(self) -> str:
        return self.size or ("quick" if self.quick else "default")


def _pretrain_record(spec: str) -> dict | None:
    """The default backbone's own pre-training record (held-out text-to-image R@1, matched cosine, centroid
    distance), as saved in its checkpoint; None for other backbones."""
    from zscir.utils.io import read_json

    kind, _, path = spec.partition(":")
    config = Path(path) / "config.json"
    return read_json(config).get("val") if kind == "default" and config.is_file() else None


def _is_demo_output(path: Path) -> bool:
    """A previous `zscir demo` output: results.json (+ report.html) and nothing else of note."""
    names = {p.name for p in path.iterdir()}
    return "results.json" in names and names <= {"results.json", "report.html"}


def check_demo_out(out: str | Path) -> Path:
    """The shared --out rule for the demo's folder (zscir.utils.io.check_output_dir)."""
    from zscir.utils.io import check_output_dir

    return check_output_dir(out, _is_demo_output, "a zscir demo output (results.json, report.html)")


def isa_check(protocols: dict[str, dict[str, dict[str, float]]], extras: dict[str, Any]) -> dict[str, Any] | None:
    """ISA's claim, from the measured rows: the asymmetric variant keeps >= 90% of the symmetric one's CIRR-like
    R@10 at <= 1/5 of its query-side FLOPs (None unless both variants were evaluated)."""
    flops = extras.get("isa", {}).get("query_flops", {})
    cirr = protocols["cirr"]
    if not {"isa", "isa/symmetric"} <= set(cirr) or not {"isa", "isa/symmetric"} <= set(flops):
        return None
    r_a, r_s = cirr["isa"]["R@10"], cirr["isa/symmetric"]["R@10"]
    check = {"cirr_R@10_isa": r_a, "cirr_R@10_isa_symmetric": r_s, "r10_ratio": round(r_a / max(r_s, 1e-9), 3),
             "query_flops_isa": flops["isa"], "query_flops_isa_symmetric": flops["isa/symmetric"],
             "flops_ratio": round(flops["isa"] / max(flops["isa/symmetric"], 1), 3)}
    check["passed"] = bool(check["r10_ratio"] >= 0.9 and check["flops_ratio"] <= 0.2)
    return check


def run_demo(cfg: DemoConfig) -> dict:
    from zscir.errors import InputError
    from zscir.eval.world import format_table
    from zscir.experiments.context import build_context
    from zscir.experiments.recipes import list_recipes
    from zscir.utils.io import write_json
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    check_demo_out(cfg.out)  # before any work: never write into someone else's folder
    configure_threads()
    seed_everything(cfg.seed)
    recipes = list_recipes()
    wanted = [m.strip() for m in cfg.methods.split(",") if m.strip()] or list(recipes)
    unknown = [m for m in wanted if m not in recipes]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; available: {', '.join(recipes)}")
    ctx = build_context(cfg.world_size, cfg.seed, cfg.device, settings_file=cfg.settings or None)
    world, backbone, evaluator = ctx.world, ctx.backbone, ctx.evaluator

    protocols: dict[str, dict[str, dict[str, float]]] = {"cirr": {}, "circo": {}}
    per_query: dict[str, dict[str, dict[str, list[float]]]] = {"cirr": {}, "circo": {}}  # for paired SEs
    settings: dict[str, dict] = {}
    timings: dict[str, float] = {}
    outputs: dict[str, dict] = {}
    for name in wanted:
        t = time.time()
        method = recipes[name](ctx)
        if method is None:
            log.info("method %s not available, skipped", name)
            continue
        method.eval()
        res = evaluator.evaluate(method)
        for p in protocols:
            protocols[p][name] = {k: round(v, 2) for k, v in res[p].metrics.items() if p != "circo" or k.startswith("mAP")}
            per_query[p][name] = {k: res[p].per_query[k] for k in protocols[p][name]}
        settings[name] = method.settings()
        outputs[name] = {p: (res[p].top, res[p].top_scores) for p in res}
        timings[name] = round(time.time() - t, 1)
        log.info("%s: CIRR-like R@1 %.1f, CIRCO-like mAP@10 %.1f (%.0f s)", name,
                 protocols["cirr"][name]["R@1"], protocols["circo"][name]["mAP@10"], timings[name])
    check = isa_check(protocols, ctx.extras)
    if check is not None:
        ctx.extras["isa"]["asymmetric_vs_symmetric"] = check
        log.info("ISA: asymmetric keeps %.0f%% of symmetric R@10 at %.0f%% of its query-side FLOPs",
                 100 * check["r10_ratio"], 100 * check["flops_ratio"])

    from zscir.eval.claims import calibration, claims, format_checks

    checks = {"claims": claims(protocols, ctx.extras, per_query), "calibration": calibration(protocols, per_query)}
    results = {
        "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint(),
        "pretrain_val": _pretrain_record(backbone.spec),
        "world": {"path": str(world.root), "seed": world.meta.get("seed"), "size": world.meta.get("size"),
                  "version": world.meta.get("version"), "counts": world.meta.get("counts")},
        "settings_file": ctx.settings.source,
        "protocols": protocols,
        "settings": settings,
        **ctx.extras,
        **checks,
        "timings_s": {**timings, "total": round(time.time() - t0, 1)},
        "device": str(ctx.device),
        "evaluation_precision": evaluator.precision,
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    _write_demo_report(out / "report.html", world, results, outputs, evaluator, cfg.examples)
    print(format_table(protocols))
    for name, key in (("claims", "claim"), ("calibration", "check")):
        if checks[name]:
            print(f"\n{name} (measured on this run):\n" + format_checks(checks[name], key))
    print(f"\nwrote {out / 'results.json'} and {out / 'report.html'} ({time.time() - t0:.0f} s)")
    return results
def _write_demo_report(path: Path, world, results: dict, outputs: dict, evaluator, n_examples: int) -> None:
    from zscir.eval.report import Example, Hit, write_report

    examples: list[Example] = []
    for protocol, n in (("cirr", n_examples), ("circo", max(1, n_examples // 2))):
        split = evaluator.splits[protocol]
        step = max(1, len(split.queries) // n)
        for qi in range(0, len(split.queries), step)[:n]:
            q = split.queries[qi]
            right = {q["target"]} if protocol == "cirr" else set(q["gt"])
            ex = Example(
                protocol="CIRR-like" if protocol == "cirr" else "CIRCO-like",
                reference_id=q["reference"], reference_path=world.image_path(q["reference"]), text=q["modification"],
                answers=f"target {q['target']}" if protocol == "cirr" else f"{len(right)} ground truth(s)",
            )
            for name, tops in outputs.items():
                top, scores = tops[protocol]
                ex.per_method[name] = [
                    Hit(split.gallery[j], world.image_path(split.gallery[j]), sc, split.gallery[j] in right)
                    for j, sc in zip(top[qi][:5], scores[qi][:5])
                ]
            examples.append(ex)
    meta = {"backbone": f"{results['backbone']} ({results['backbone_fingerprint']})",
            "world": f"{results['world']['size']} world, seed {results['world']['seed']}",
            "queries": f"CIRR-like {len(evaluator.splits['cirr'].queries)}, CIRCO-like {len(evaluator.splits['circo'].queries)}",
            "total time": f"{results['timings_s']['total']} s"}
    write_report(path, "zscir demo: zero-shot composed image retrieval on the synthetic world", meta,
                 {"CIRR-like (reference removed)": results["protocols"]["cirr"], "CIRCO-like": results["protocols"]["circo"]},
                 {"CIRR-like R@1": ("CIRR-like (reference removed)", "R@1"), "CIRR-like R@10": ("CIRR-like (reference removed)", "R@10"),
                  "CIRCO-like mAP@10": ("CIRCO-like", "mAP@10")},
                 examples,
                 {"Published claims, checked on this run": results.get("claims", []),
                  "World calibration on this run": results.get("calibration", [])})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded default: world, pre-training, every method, table + report",
        description="Build (or reuse) the synthetic world and the pre-trained default backbone under "
        "$ZSCIR_HOME (default ./data; trained artefacts are cached under models/experiments-<size>-s<seed>), "
        "evaluate every available method on the CIRR-like and CIRCO-like "
        "protocols, print the table, write results.json and report.html into --out.",
    )
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="CI-sized run (quick world, shorter training)")
    p.add_argument("--size", choices=("quick", "default", "large"), default="", help="world size (default: quick with --quick, else default)")
    add_seed_arg(p, "world and training seed")
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
    add_device_arg(p)
    p.add_argument("--examples", type=int, default=d.examples, help="example queries in the report")
    p.add_argument("--settings", default="", metavar="FILE",
                   help="a settings TOML replacing the size's (src/zscir/experiments/settings/<size>.toml): "
                        "one table per trainer, e.g. [pic2word] steps = 400")

    def run(args: argparse.Namespace) -> int:
        run_demo(DemoConfig(out=args.out, quick=args.quick, size=args.size, seed=args.seed,
                            methods=args.methods, device=args.device, examples=args.examples,
                            settings=args.settings))
        return 0

    p.set_defaults(func=run)
