"""search(): the one query path shared by `zscir search` and `zscir serve`.

Reference images (one or several; several are composed one by one and their queries averaged) + a
modification text -> the method's query embedding -> top-k of the gallery index."""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.errors import InputError
from zscir.index.store import GalleryIndex
from zscir.methods import get_method_class


METHOD_CACHE_SIZE = 32  # distinct (method, settings) kept ready


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(float(self.score), 6), "id": self.id, "path": self.path,
                "meta": self.meta}


class Searcher:
    """An open index + its backbone, with composition methods built on demand (cached by settings)."""

    def __init__(self, index: GalleryIndex, backbone) -> None:
        self.index = index
        self.backbone = backbone
        # alpha is a free float from clients: keep only the most recently used settings (bounded memory)
        self._methods: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, folder, backbone: str | None = None, device: str | None = None, verify: bool = True) -> "Searcher":
        import zscir.backbones.pyref  # noqa: F401
        from zscir.backbones import load_backbone

        index = GalleryIndex(folder, verify=verify)
        from zscir.index.manifest import MANIFEST

        # the manifest's spec is data: one naming code is refused unless the user passes it as `backbone`
        bb = load_backbone(backbone or index.manifest.backbone_spec, device=device,
                           recorded_in=None if backbone else str(index.folder / MANIFEST))
        s = cls(index, bb)
        s.method("image")  # checks the backbone against the manifest now, not at the first query
        return s

    def method(self, name: str, alpha: float | None = None):
        cls = get_method_class(name)
        params = inspect.signature(cls.__init__).parameters
        kwargs = {"alpha": alpha} if alpha is not None and "alpha" in params else {}
        key = (name, tuple(sorted(kwargs.items())))
        if key not in self._methods:
            m = cls(self.backbone, **kwargs).eval()
            self.index.check_method(m)
            self._methods[key] = m
            while len(self._methods) > METHOD_CACHE_SIZE:
                self._methods.popitem(last=False)
        self._methods.move_to_end(key)
        return self._methods[key]

    @torch.inference_mode()
    def query_vector(self, method, images: Sequence[Image.Image], text: str | None) -> np.ndarray:
        if method.uses_text:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"method {method.name!r} needs a modification text")
        text = (text or "").strip() or "."
        if not method.uses_image:
            q = method.compose(None, [text])
        else:
            if not images:
                raise InputError(f"method {method.name!r} needs a reference image")
            px = self.backbone.preprocess(list(images))
            q = method.compose(px, [text] * len(images))
            q = F.normalize(q.float().mean(0, keepdim=True), dim=-1)
        return q.float().cpu().numpy()

    def search(self, images: Sequence[Image.Image], text: str | None, method: str = "slerp",
               alpha: float | None = None, k: int = 10, exclude_ids: Sequence[str] = ()) -> list[Hit]:
        if k < 1:
            raise InputError(f"k={k}: must be at least 1")
        with self._lock:  # one model, many request threads
            m = self.method(method, alpha)
            q = self.query_vector(m, images, text)
        exclude = [self.index.lookup(i) for i in exclude_ids]
        scores, pos = self.index.search(q, k, exclude)
        hits = []
        for r, (s, p) in enumerate(zip(scores[0], pos[0])):
            if p < 0:
                break
            it = self.index.items[int(p)]
            hits.append(Hit(rank=r + 1, score=float(s), id=it["id"], path=it["path"], meta=it.get("meta") or {}))
        return hits
