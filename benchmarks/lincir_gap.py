"""LinCIR against the modality gap: why LinCIR trails pic2word on the synthetic world.

    python benchmarks/lincir_gap.py [--size default] [--seed 0] [--noise 0,1,2,4,8] [--out benchmarks/results]

LinCIR trains its mapper on *text* embeddings (plus noise) and applies it to *image* embeddings; its noise is
meant to cover the difference. On the demo's world and pre-trained default backbone (built or reused under
$ZSCIR_HOME, as `zscir demo`), with the demo's settings for the size, this measures:

  gap        matched image-caption cosine and centroid distance on 1,500 of the world's pairs, and the matched
             cosine once every image embedding is moved by the centroid offset (text centroid - image centroid)
  noise      LinCIR trained with each --noise scale (norm of the noise on the unit caption embedding is
             u * scale, u ~ U(0, 1); the demo uses 1.0), everything else as the demo (cached under
             models/experiments-<size>-s<seed>/lincir-*)
  shifted    the shipped LinCIR (and noise 0) applied to image embeddings moved by the centroid offset
  caption    LinCIR and pic2word fed the text embedding of a caption of the reference scene instead of the
             reference image: LinCIR's own input distribution (pic2word: the control)
  token      how well the shipped LinCIR's token stands for its caption (500 of the world's captions): cosine
             to the caption's embedding in its training prompt (keyword spans masked) and in `a photo of $`,
             and how often `a photo of $` retrieves its own caption among the 500; keyword spans per caption
  clauses    LinCIR trained on the world's captions cut into clauses at "with", "and" and commas (fewer
             keyword spans per caption, as in short web captions), the demo's settings otherwise
  ceiling    a caption of the *target* scene, as a plain text query: what a composed query on the text side of
             the gap could reach at best
  query      the shipped LinCIR's composed queries moved by minus the centroid offset (from the text side of
             the gap towards the image gallery's side): LinCIR's token is trained to reproduce a *caption's*
             embedding, pic2word's an *image's*

Both protocols of the world; writes lincir_gap_<size>.json and .md into --out and prints the table."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.eval.engine import embed_images
from zscir.experiments import build_context
from zscir.experiments.recipes import method_from_recipe
from zscir.methods import build_method
from zscir.methods.mapped import MappedTokenMethod
from zscir.train.lincir import LinCIRConfig, encode_masked, mask_keywords, masked_prompts, train_lincir
from zscir.utils.runtime import autocast, configure_threads
from zscir.world.language import caption

COLUMNS = (("cirr", "R@1"), ("cirr", "R@10"), ("cirr", "R@50"), ("cirr", "Rs@1"), ("circo", "mAP@10"))


def _queries(ctx, method: MappedTokenMethod, split: str, inputs: Callable[[list[dict]], torch.Tensor]) -> torch.Tensor:
    """Composed queries of `split` with the mapper fed `inputs(queries)` (unit vectors) instead of the image."""
    queries = ctx.evaluator.splits[split].queries
    texts = [q["modification"] for q in queries]
    x = inputs(queries)
    with autocast(torch.device(method.backbone.device), ctx.evaluator.precision), torch.inference_mode():
        return torch.cat([method.compose_tokens(method.mapper(x[i : i + 128].to(method.backbone.device)),
                                                texts[i : i + 128]).float().cpu() for i in range(0, len(texts), 128)])


def _row(ctx, name: str, method: MappedTokenMethod, inputs: Callable[[str, list[dict]], torch.Tensor] | None,
         move: torch.Tensor | None = None) -> dict:
    """Both protocols' metrics; `inputs` replaces the mapper's input, `move` is added to every composed query."""
    ev = ctx.evaluator
    if inputs is None and move is None:
        res = ev.evaluate(method)
    else:
        res = {}
        for s in ("cirr", "circo"):
            if inputs is None:
                q = ev.query_embeddings(method, s)
            else:
                q = _queries(ctx, method, s, functools.partial(inputs, s))
            if move is not None:
                q = F.normalize(F.normalize(q.float(), dim=-1) + move, dim=-1)
            res[s] = (ev.evaluate_cirr if s == "cirr" else ev.evaluate_circo)(method, q)
    row = {"variant": name, **{f"{s}:{k}": round(res[s].metrics[k], 2) for s, k in COLUMNS}}
    print(json.dumps(row), flush=True)
    return row


def _ceiling(ctx, rng: random.Random) -> dict:
    """A caption of each query's target scene (CIRCO-like: its `target`, one of its ground truths) as a text query."""
    bb, ev = ctx.backbone, ctx.evaluator
    text = build_method("text", bb)
    res = {}
    for split in ("cirr", "circo"):
        caps = [caption(rng, ctx.world.scene(q["target"])) for q in ev.splits[split].queries]
        with autocast(torch.device(bb.device), ev.precision), torch.inference_mode():
            q = torch.cat([bb.encode_text(caps[i : i + 256]).float().cpu() for i in range(0, len(caps), 256)])
        res[split] = (ev.evaluate_cirr if split == "cirr" else ev.evaluate_circo)(text, q).metrics
    row = {"variant": "ceiling: a caption of the target as the query (text only)",
           **{f"{s}:{k}": round(res[s][k], 2) for s, k in COLUMNS}}
    print(json.dumps(row), flush=True)
    return row


@torch.inference_mode()
def _token_fidelity(bb, method: MappedTokenMethod, captions: list[str]) -> dict:
    """How well the mapper's token, fed a caption's embedding, stands for that caption."""
    t = F.normalize(bb.encode_text(captions).float(), dim=-1)
    tokens = method.mapper(t)
    prompts, counts, _ = masked_prompts(bb, captions)
    in_training = F.normalize(encode_masked(bb, prompts, counts, tokens).float(), dim=-1)
    photo = F.normalize(bb.encode_text_with_tokens(["a photo of $"] * len(captions), tokens).float(), dim=-1)
    own = (photo @ t.T).argmax(1) == torch.arange(len(captions), device=t.device)
    return {"captions": len(captions), "cosine_training_prompt": round(float((in_training * t).sum(-1).mean()), 3),
            "cosine_photo_of": round(float((photo * t).sum(-1).mean()), 3),
            "photo_of_retrieves_own_caption": round(100 * float(own.float().mean()), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default", choices=("quick", "default", "large"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", default="0,1,2,4,8", help="LinCIR noise scales to train and evaluate")
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    configure_threads()
    t0 = time.time()
    ctx = build_context(args.size, args.seed, args.device, progress=False)
    bb, world = ctx.backbone, ctx.world
    dev = torch.device(bb.device)

    # the gap, on the world's image-caption pairs
    pairs = json.loads((Path(world.root) / "pairs.json").read_text())[:1500]
    with autocast(dev, ctx.evaluator.precision), torch.inference_mode():
        img = embed_images(bb.encode_image, [world.image_path(p["image"]) for p in pairs], bb.preprocess_config,
                           bb.device, progress=False)
        txt = torch.cat([bb.encode_text([p["caption"] for p in pairs[i : i + 256]]).float().cpu()
                         for i in range(0, len(pairs), 256)])
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt, dim=-1)
    offset = txt.mean(0) - img.mean(0)
    gap = {"pairs": len(pairs), "matched_cosine": round(float((img * txt).sum(-1).mean()), 3),
           "centroid_distance": round(float(offset.norm()), 3),
           "matched_cosine_after_offset": round(float((F.normalize(img + offset, dim=-1) * txt).sum(-1).mean()), 3)}
    print(json.dumps(gap), flush=True)

    def shifted(split: str, queries: list[dict]) -> torch.Tensor:
        s = ctx.evaluator.splits[split]
        g = ctx.evaluator.gallery_embeddings(pic2word, split)  # the backbone's own gallery, as every mapper's
        refs = F.normalize(g[[s.index[q["reference"]] for q in queries]].float(), dim=-1)
        return F.normalize(refs + offset, dim=-1)

    rng = random.Random(args.seed)
    captions = {s: [caption(rng, world.scene(q["reference"])) for q in ctx.evaluator.splits[s].queries]
                for s in ("cirr", "circo")}

    def captioned(split: str, queries: list[dict]) -> torch.Tensor:
        with autocast(dev, ctx.evaluator.precision), torch.inference_mode():
            t = torch.cat([bb.encode_text(captions[split][i : i + 256]).float().cpu()
                           for i in range(0, len(queries), 256)])
        return F.normalize(t, dim=-1)

    rows = []
    token: dict = {}  # measured on the demo's noise, when --noise holds it
    pic2word = method_from_recipe(ctx, "pic2word")
    assert isinstance(pic2word, MappedTokenMethod)
    rows.append(_row(ctx, "pic2word", pic2word, None))
    rows.append(_row(ctx, "pic2word, fed a caption of the reference", pic2word, captioned))
    base = ctx.settings.config("lincir", LinCIRConfig, world=str(world.root))
    for noise in (float(x) for x in args.noise.split(",")):
        cfg = replace(base, noise=noise)
        path = ctx.artifact("lincir", cfg, lambda out, cfg=cfg: train_lincir(replace(cfg, out=str(out)), backbone=bb))
        method = build_method("lincir", bb, [path])
        assert isinstance(method, MappedTokenMethod)
        shipped = " (the demo's)" if noise == base.noise else ""
        rows.append(_row(ctx, f"lincir, noise {noise:g}{shipped}", method, None))
        if noise in (0.0, base.noise):
            rows.append(_row(ctx, f"lincir, noise {noise:g}, image moved by the centroid offset", method, shifted))
        if noise == base.noise:
            with autocast(dev, ctx.evaluator.precision):
                token = _token_fidelity(bb, method, [p["caption"] for p in pairs[-500:]])
            print(json.dumps(token), flush=True)
            rows.append(_row(ctx, f"lincir, noise {noise:g}, fed a caption of the reference", method, captioned))
            rows.append(_row(ctx, f"lincir, noise {noise:g}, composed query moved by minus the centroid offset",
                             method, None, move=-offset))

    # shorter captions: the world's captions cut into clauses (`a big red square with a small blue circle` ->
    # `a big red square`, `a small blue circle`), duplicates dropped
    all_pairs = json.loads((Path(world.root) / "pairs.json").read_text())
    clauses = list(dict.fromkeys(c.strip() for p in all_pairs for c in re.split(r"\b(?:with|and)\b|,", p["caption"])
                                 if c.strip()))
    cfg = replace(base, world="", captions="")
    path = ctx.artifact("lincir-clauses", cfg, lambda out: train_lincir(replace(cfg, out=str(out)), backbone=bb,
                                                                        captions=clauses),
                        inputs={"captions": hashlib.sha256("\n".join(clauses).encode()).hexdigest()[:16]})
    method = build_method("lincir", bb, [path])
    assert isinstance(method, MappedTokenMethod)
    spans_c = [mask_keywords(c)[1] for c in clauses]
    rows.append(_row(ctx, f"lincir, noise {base.noise:g}, trained on {len(clauses)} caption clauses "
                          f"({sum(spans_c) / len(spans_c):.1f} keyword spans each)", method, None))
    rows.append(_ceiling(ctx, rng))

    spans = [mask_keywords(p["caption"])[1] for p in pairs]
    token["keyword_spans_per_caption"] = round(sum(spans) / len(spans), 2)
    doc = {"benchmark": "lincir_gap", "size": args.size, "seed": args.seed, "gap": gap, "token": token,
           "evaluation_precision": ctx.evaluator.precision, "rows": rows, "seconds": round(time.time() - t0)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lincir_gap_{args.size}.json").write_text(json.dumps(doc, indent=1) + "\n")
    head = "| variant | " + " | ".join(f"{s.upper()}-like {k}" for s, k in COLUMNS) + " |"
    lines = [f"# LinCIR against the modality gap ({args.size} world, seed {args.seed})", "",
             f"Gap on {gap['pairs']} pairs: matched cosine {gap['matched_cosine']}, centroid distance "
             f"{gap['centroid_distance']}; matched cosine after moving the images by the centroid offset "
             f"{gap['matched_cosine_after_offset']}.", ""]
    if "captions" in token:
        lines += [f"The demo's LinCIR token on {token['captions']} of the world's captions (which have "
                  f"{token['keyword_spans_per_caption']} keyword spans each): cosine to the caption {token['cosine_training_prompt']} in its training prompt, "
                  f"{token['cosine_photo_of']} in `a photo of $`, which retrieves its own caption among them "
                  f"{token['photo_of_retrieves_own_caption']}% of the time.", ""]
    lines += [head, "|---" * (len(COLUMNS) + 1) + "|"]
    lines += ["| " + r["variant"] + " | " + " | ".join(f"{r[f'{s}:{k}']:.1f}" for s, k in COLUMNS) + " |" for r in rows]
    (out / f"lincir_gap_{args.size}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / f'lincir_gap_{args.size}.json'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
