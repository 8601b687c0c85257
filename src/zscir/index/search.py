"""search(): the one query path shared by `zscir search` and `zscir serve`.

Reference images (one or several; several are composed one by one and their queries averaged) + a
modification text -> the method's query embedding -> top-k of the gallery index.

A reference that is a gallery item (`refs`, by position) uses its stored embedding through the method's
embedded fast path (`compose_embedded`), so the service never re-reads and re-encodes it; methods that need
more than the embedding (pixels, local features) get the stored image read from its path instead.
The micro-batched service path (zscir.serve.batching) composes the same vectors in batches."""

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
from zscir.index.kinds import SearchParams
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
    def open(cls, folder, backbone: str | None = None, device: str | None = None, verify: bool = True,
             params: SearchParams | None = None) -> "Searcher":
        import zscir.backbones.pyref  # noqa: F401
        from zscir.backbones import load_backbone

        index = GalleryIndex(folder, verify=verify, params=params)
        bb = load_backbone(backbone or index.manifest.backbone_spec, device=device)
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
    def query_vector(self, method, images: Sequence[Image.Image], text: str | None, refs: Sequence[int] = ()) -> np.ndarray:
        """The (1, D) query for reference `images` and gallery references `refs` (index positions) + `text`."""
        text = check_text(method, text)
        if not method.uses_image:
            q = method.compose(None, [text])
            return q.float().cpu().numpy()
        images, parts = list(images), []
        if refs:
            emb = torch.from_numpy(self.index.vectors(list(refs))).to(method.backbone.device)
            fast = method.compose_embedded(emb, [text] * len(refs))
            if fast is None:  # the method needs pixels: read the stored images
                from zscir.utils.io import load_image

                images += [load_image(self.index.items[int(p)]["path"]) for p in refs]
            else:
                parts.append(fast)
        if images:
            px = self.backbone.preprocess(images)
            parts.append(method.compose(px, [text] * len(images)))
        if not parts:
            raise InputError(f"method {method.name!r} needs a reference image")
        q = F.normalize(torch.cat(parts).float().mean(0, keepdim=True), dim=-1)
        return q.float().cpu().numpy()

    def search(self, images: Sequence[Image.Image], text: str | None, method: str = "slerp",
               alpha: float | None = None, k: int = 10, exclude_ids: Sequence[str] = (),
               refs: Sequence[str] = ()) -> list[Hit]:
        """Top-k for reference `images` and/or gallery items `refs` (ids; used by their stored embedding and
        never listed in the answer) + a modification `text`."""
        if k < 1:
            raise InputError(f"k={k}: must be at least 1")
        ref_pos = [self.index.lookup(i) for i in refs]
        with self._lock:  # one model, many request threads
            m = self.method(method, alpha)
            q = self.query_vector(m, images, text, ref_pos)
        exclude = sorted({self.index.lookup(i) for i in exclude_ids} | set(ref_pos))
        scores, pos = self.index.search(q, k, exclude)
        return self.index.hits(scores[0], pos[0])


def check_text(method, text: str | None) -> str:
    """The modification text a method composes with ('.' when it ignores text); a method that needs one
    and gets none is an InputError."""
    if method.uses_text:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"method {method.name!r} needs a modification text")
    return (text or "").strip() or "."
