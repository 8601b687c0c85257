"""`zscir demo`: the whole pipeline on the embedded default, end to end.

Builds (or reuses) the synthetic world and the pre-trained default backbone under $ZSCIR_HOME, obtains
every method through its recipe (recipes.py), evaluates all of them on both held-out protocols, prints one
table and writes `results.json` and `report.html` into --out."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zscir.paths import models_dir, worlds_dir

if TYPE_CHECKING:  # the recipes import this package: the runtime import stays inside the functions
    from zscir.demo.recipes import DemoContext

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

    @property
    def world_size(self) -> str:
        return self.size or ("quick" if self.quick else "default")


def ensure_world(size: str, seed: int) -> Path:
    from zscir.world import generate_world

    from zscir.utils.io import read_json
    from zscir.world.generate import VERSION

    path = worlds_dir() / f"{size}-s{seed}"
    stale = (path / "world.json").is_file() and read_json(path / "world.json").get("version") != VERSION
    if not (path / "world.json").is_file() or stale:  # a world of an older version is regenerated
        log.info("generating the %s world (seed %d) -> %s", size, seed, path)
        generate_world(path, seed=seed, size=size)
    return path


def ensure_default_model(world_path: Path, size: str, seed: int, quick: bool,
                         init_temperature: float | None = None) -> Path:
    """The demo's pre-trained default for this world, trained if missing. `init_temperature` (None: the
    pre-training default) makes a variant pre-trained with that starting temperature, kept beside it as
    `default-<size>-s<seed>-T<t>`; a variant never becomes what `load_backbone("default")` loads."""
    from zscir.backbones import default_model_path
    from zscir.train.pretrain import PretrainConfig, pretrain

    suffix = _variant_suffix(init_temperature)
    path = models_dir() / f"default-{size}-s{seed}{suffix}"
    if not (path / "config.json").is_file() or _stale_recipe(path, init_temperature):
        log.info("pre-training the embedded default on %s -> %s", world_path, path)
        # 20 passes over the default world's 6,000 pairs (the quick world's 1,000 get 30): sized for `make demo`'s
        # time budget on 2 cores; `zscir pretrain --epochs` trains longer.
        extra = {} if init_temperature is None else {"init_temperature": init_temperature}
        pretrain(PretrainConfig(world=str(world_path), out=str(path), seed=seed, epochs=30 if quick else 20, **extra))
    if suffix:
        return path
    # `load_backbone("default")` uses models/default; give it the first (or the full-size) model made here.
    target = default_model_path()
    stale = (target / "config.json").is_file() and _stale_recipe(target, None)
    if not target.exists() or stale or (not quick and size == "default"):
        if target.resolve() != path.resolve():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(path, tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    return path


def _stale_recipe(path: Path, init_temperature: float | None) -> bool:
    """A model pre-trained by an older recipe (before world v2: no modality cones, temperature from 0.07)."""
    from zscir.train.pretrain import PretrainConfig
    from zscir.utils.io import read_json

    d = PretrainConfig()
    saved = read_json(path / "config.json")
    pre = saved.get("pretrain") or {}
    return (saved.get("config", {}).get("modality_cone", 0.0) != d.modality_cone
            or pre.get("init_temperature") != (d.init_temperature if init_temperature is None else init_temperature))


def _variant_suffix(init_temperature: float | None) -> str:
    return "" if init_temperature is None else f"-T{init_temperature:g}"


def build_context(size: str, seed: int, quick: bool, device: str = "", progress: bool = True,
                  init_temperature: float | None = None) -> DemoContext:
    """The world, the pre-trained default backbone and the evaluator that the recipes work in, built or reused
    under $ZSCIR_HOME: shared by `zscir demo` and the benchmark scripts so they train and cache the same things.
    `init_temperature` selects a pre-training variant (see `ensure_default_model`) with a workdir of its own."""
    from zscir.backbones.default import DefaultBackbone
    from zscir.demo.recipes import DemoContext
    from zscir.eval.world import WorldEvaluator
    from zscir.utils.runtime import pick_device
    from zscir.world import load_world

    dev = pick_device(device or None)
    world_path = ensure_world(size, seed)
    world = load_world(world_path)
    model = ensure_default_model(world_path, size, seed, quick, init_temperature)
    backbone = DefaultBackbone.load(model).to(dev).eval()
    workdir = models_dir() / f"demo-{size}-s{seed}{_variant_suffix(init_temperature)}"
    return DemoContext(world=world, backbone=backbone, evaluator=WorldEvaluator(world, progress=progress),
                       workdir=workdir, quick=quick, seed=seed, device=str(dev))


def _is_demo_output(path: Path) -> bool:
    """A previous `zscir demo` output: results.json (+ report.html) and nothing else of note."""
    names = {p.name for p in path.iterdir()}
    return "results.json" in names and names <= {"results.json", "report.html"}


def check_demo_out(out: str | Path) -> Path:
    """The shared --out rule for the demo's folder (zscir.utils.io.check_output_dir)."""
    from zscir.utils.io import check_output_dir

    return check_output_dir(out, _is_demo_output, "a zscir demo output (results.json, report.html)")


def run_demo(cfg: DemoConfig) -> dict:
    from zscir.demo.recipes import list_recipes
    from zscir.eval.world import format_table
    from zscir.utils.io import write_json
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    check_demo_out(cfg.out)  # before any work: never write into someone else's folder
    configure_threads()
    seed_everything(cfg.seed)
    ctx = build_context(cfg.world_size, cfg.seed, cfg.quick, cfg.device)
    world, backbone, evaluator, device = ctx.world, ctx.backbone, ctx.evaluator, ctx.device
    recipes = list_recipes()
    wanted = [m.strip() for m in cfg.methods.split(",") if m.strip()] or list(recipes)
    unknown = [m for m in wanted if m not in recipes]
    if unknown:
        from zscir.errors import InputError

        raise InputError(f"unknown method(s) {unknown}; available: {', '.join(recipes)}")

    protocols: dict[str, dict[str, dict[str, float]]] = {"cirr": {}, "circo": {}}
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
        settings[name] = method.settings()
        outputs[name] = {p: (res[p].top, res[p].top_scores) for p in res}
        timings[name] = round(time.time() - t, 1)
        log.info("%s: CIRR-like R@1 %.1f, CIRCO-like mAP@10 %.1f (%.0f s)", name,
                 protocols["cirr"][name]["R@1"], protocols["circo"][name]["mAP@10"], timings[name])

    results = {
        "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint(),
        "world": {"path": str(world.root), "seed": world.meta.get("seed"), "size": world.meta.get("size"),
                  "counts": world.meta.get("counts")},
        "protocols": protocols,
        "settings": settings,
        **ctx.extras,
        "timings_s": {**timings, "total": round(time.time() - t0, 1)},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    _write_demo_report(out / "report.html", world, results, outputs, evaluator, cfg.examples)
    print(format_table(protocols))
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
                 examples)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded default: world, pre-training, every method, table + report",
        description="Build (or reuse) the synthetic world and the pre-trained default backbone under "
        "$ZSCIR_HOME (default ./data), evaluate every available method on the CIRR-like and CIRCO-like "
        "protocols, print the table, write results.json and report.html into --out.",
    )
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="CI-sized run (quick world, shorter training)")
    p.add_argument("--size", choices=("quick", "default", "large"), default="", help="world size (default: quick with --quick, else default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
    p.add_argument("--device", default="", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--examples", type=int, default=d.examples, help="example queries in the report")

    def run(args: argparse.Namespace) -> int:
        run_demo(DemoConfig(out=args.out, quick=args.quick, size=args.size, seed=args.seed,
                            methods=args.methods, device=args.device, examples=args.examples))
        return 0

    p.set_defaults(func=run)
