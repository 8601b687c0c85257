"""Evaluate composition methods on the synthetic world's two held-out protocols.

`WorldEvaluator` embeds each gallery once per gallery encoder (methods sharing a backbone share it) and,
for methods that compose from the reference's embedding, reuses the reference's gallery embedding instead
of decoding it again. Its `precision` ("fp32" by default; "auto" is bf16 where the device computes it
natively) is the autocast of the towers' forward passes; embeddings are scored in fp32."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zscir.eval.engine import compose_queries, embed_images
from zscir.eval.protocols import ProtocolResult, circo_protocol, cirr_protocol
from zscir.utils.runtime import autocast

log = logging.getLogger(__name__)

CIRR_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3")
CIRCO_COLUMNS = ("mAP@5", "mAP@10", "mAP@25", "mAP@50")


@dataclass
class _Split:
    name: str
    gallery: list[str]
    queries: list[dict]

    def __post_init__(self) -> None:
        self.index = {g: i for i, g in enumerate(self.gallery)}


class WorldEvaluator:
    """Runs the CIRR-like and CIRCO-like protocols of one world for any number of methods."""

    def __init__(self, world, batch_size: int = 64, progress: bool = True, precision: str = "fp32") -> None:
        self.world = world
        self.batch_size = batch_size
        self.progress = progress
        self.precision = precision
        self.splits = {
            "cirr": _Split("cirr", list(world.cirr["gallery"]), list(world.cirr["queries"])),
            "circo": _Split("circo", list(world.circo["gallery"]), list(world.circo["queries"])),
        }
        self._galleries: dict[tuple[str, str], torch.Tensor] = {}

    def gallery_embeddings(self, method, split: str) -> torch.Tensor:
        key = (method.gallery_id, split)
        if key not in self._galleries:
            s = self.splits[split]
            paths = [self.world.image_path(i) for i in s.gallery]
            with autocast(torch.device(method.backbone.device), self.precision):
                self._galleries[key] = embed_images(
                    method.encode_gallery, paths, method.backbone.preprocess_config, method.backbone.device,
                    self.batch_size, desc=f"{split} gallery", progress=self.progress,
                )
        return self._galleries[key]

    def query_embeddings(self, method, split: str, texts: Sequence[str] | None = None) -> torch.Tensor:
        gallery = self.gallery_embeddings(method, split)  # outside: its own autocast, cached
        with autocast(torch.device(method.backbone.device), self.precision):
            return self._query_embeddings(method, split, gallery, texts)

    def _query_embeddings(self, method, split: str, gallery: torch.Tensor,
                          texts: Sequence[str] | None) -> torch.Tensor:
        s = self.splits[split]
        texts = list(texts) if texts is not None else [q["modification"] for q in s.queries]
        refs = [q["reference"] for q in s.queries]
        if method.uses_image and all(r in s.index for r in refs):
            ref_emb = gallery[[s.index[r] for r in refs]]
            with torch.inference_mode():
                fast = method.compose_embedded(ref_emb[:1].to(method.backbone.device), texts[:1])
            if fast is not None:
                with torch.inference_mode():
                    out = [method.compose_embedded(ref_emb[i : i + self.batch_size].to(method.backbone.device),
                                                   texts[i : i + self.batch_size]).float().cpu()
                           for i in range(0, len(texts), self.batch_size)]
                return torch.cat(out)
        ref_paths = [self.world.image_path(r) for r in refs] if method.uses_image else None
        return compose_queries(method, ref_paths, texts, self.batch_size, desc=f"{split} queries", progress=self.progress)

    def evaluate(self, method) -> dict[str, ProtocolResult]:
        """{"cirr": ProtocolResult, "circo": ProtocolResult} for one method."""
        return {"cirr": self.evaluate_cirr(method), "circo": self.evaluate_circo(method)}

    def evaluate_cirr(self, method, queries: torch.Tensor | None = None) -> ProtocolResult:
        s = self.splits["cirr"]
        q = self.query_embeddings(method, "cirr") if queries is None else queries
        return cirr_protocol(
            q, self.gallery_embeddings(method, "cirr"),
            reference_idx=[s.index[x["reference"]] for x in s.queries],
            target_idx=[s.index[x["target"]] for x in s.queries],
            members_idx=[[s.index[m] for m in x["members"]] for x in s.queries],
        )

    def evaluate_circo(self, method, queries: torch.Tensor | None = None) -> ProtocolResult:
        s = self.splits["circo"]
        q = self.query_embeddings(method, "circo") if queries is None else queries
        return circo_protocol(
            q, self.gallery_embeddings(method, "circo"), s.gallery,
            ground_truths=[x["gt"] for x in s.queries], target_ids=[x["target"] for x in s.queries],
        )


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A fixed-width table: one row per method, CIRR-like columns then CIRCO-like columns."""
    methods = list(dict.fromkeys(list(results.get("cirr", {})) + list(results.get("circo", {}))))
    width = max([len("method")] + [len(m) for m in methods]) + 2
    head = "method".ljust(width) + "".join(c.rjust(7) for c in CIRR_COLUMNS) + "  |" + "".join(c.rjust(8) for c in CIRCO_COLUMNS)
    lines = ["CIRR-like (reference removed)".ljust(width + 7 * len(CIRR_COLUMNS)) + "  | CIRCO-like", head, "-" * len(head)]
    for m in methods:
        a = results.get("cirr", {}).get(m, {})
        b = results.get("circo", {}).get(m, {})
        lines.append(
            m.ljust(width)
            + "".join((f"{a[c]:7.1f}" if c in a else "      -") for c in CIRR_COLUMNS)
            + "  |"
            + "".join((f"{b[c]:8.1f}" if c in b else "       -") for c in CIRCO_COLUMNS)
        )
    return "\n".join(lines)
