"""search(): the one query path shared by `zscir search` and `zscir serve`.

Reference images (one or several; several are composed one by one and their queries averaged) + a
modification text -> the method's query embedding -> top-k of the gallery index.

A reference that is a gallery item (`refs`, by position) uses its stored embedding through the method's
embedded fast path (`compose_embedded`), so the service never re-reads and re-encodes it; methods that need
more than the embedding (pixels, local features) get the stored image read from its path instead.
The micro-batched service path (zscir.serve.batching) composes the same vectors in batches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.errors import CheckpointError, InputError
from zscir.index.kinds import SearchParams
from zscir.index.store import GalleryIndex, SearchHit

METHOD_CACHE_SIZE = 32  # training-free methods kept ready (settings are applied per query, see with_settings)


class Searcher:
    """An open index + its backbone + the methods it can run: every training-free method whose gallery encoder is
    the index's, and one method per name served by the checkpoints it was opened with (built once, checked
    against the index's gallery encoder at start-up). Settings such as alpha make cheap copies per query."""

    def __init__(self, index: GalleryIndex, backbone, checkpoints: Sequence[str | Path] = ()) -> None:
        self.index = index
        self.backbone = backbone
        # training-free methods, built on first use and kept (few: one per registered name)
        self._methods: OrderedDict[tuple, Any] = OrderedDict()
        #: name -> method built from a checkpoint given at start-up
        self.trained: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.default_method = "slerp"
        self._load_checkpoints(list(checkpoints))

    def _load_checkpoints(self, checkpoints: list[str | Path]) -> None:
        from zscir.methods.build import build_method, methods_for_checkpoint

        for n, ckpt in enumerate(checkpoints):
            names = methods_for_checkpoint(ckpt)
            others = [c for c in checkpoints if c is not ckpt]
            for rank, name in enumerate(names):
                if name in self.trained:
                    continue
                m = build_method(name, self.backbone, [ckpt, *others])
                try:
                    self.index.check_method(m)
                except CheckpointError:
                    if rank == 0:
                        raise  # the method the checkpoint was made for must fit the index
                    continue  # a secondary reading of the checkpoint (e.g. stage 1 of a stage-2 one)
                self.trained[name] = m
            if n == 0:
                self.default_method = names[0]

    @classmethod
    def open(cls, folder, backbone: str | None = None, device: str | None = None, verify: bool = True,
             checkpoints: Sequence[str | Path] = (), params: SearchParams | None = None) -> Searcher:
        from zscir.backbones import load_backbone
        from zscir.methods.build import precheck

        for c in checkpoints:
            precheck(None, [c])  # a folder that is not a checkpoint fails before the model loads
        index = GalleryIndex(folder, verify=verify, params=params)
        from zscir.index.manifest import MANIFEST

        # the manifest's spec is data: one naming code is refused unless the user passes it as `backbone`
        bb = load_backbone(backbone or index.manifest.backbone_spec, device=device,
                           recorded_in=None if backbone else str(index.folder / MANIFEST))
        s = cls(index, bb, checkpoints)
        if not s.trained:
            # checks the backbone against the manifest now, not at the first query (with a training-free method:
            # an index embedded for a trained method that keeps the plain gallery serves the baselines too)
            from zscir.methods import get_method_class

            recorded = index.manifest.gallery_method
            fits = s.plain_gallery() and not get_method_class(recorded).needs_checkpoint()
            s.method(recorded if fits else "image")
        return s

    def plain_gallery(self) -> bool:
        """True when the index's gallery is the backbone's own image tower (training-free methods fit it)."""
        from zscir.methods.base import backbone_gallery_id

        return self.index.manifest.gallery_id == backbone_gallery_id(self.backbone) \
            and not getattr(self.index.manifest, "gallery_checkpoint_fingerprint", "")

    def available(self) -> list[dict[str, Any]]:
        """What this searcher can run: [{name, takes_alpha, default_alpha}], in registry order."""
        from zscir.methods import get_method_class, list_methods, method_info

        out = []
        for name in list_methods():
            if name in self.trained:
                out.append(method_info(self.trained[name]))
            elif not get_method_class(name).needs_checkpoint() and self.plain_gallery():
                out.append(method_info(get_method_class(name)))
        return out

    def method(self, name: str | None = None, alpha: float | None = None):
        """The method `name` (default: the first checkpoint's, else slerp) with `alpha` if given. Refuses an
        unknown method, a setting the method does not have, and a trained method this searcher has no
        checkpoint for."""
        from zscir.methods import check_settings, get_method_class
        from zscir.methods.build import build_method

        name = name or self.default_method
        cls = get_method_class(name)
        settings = check_settings(cls, {"alpha": alpha})
        if name in self.trained:
            base = self.trained[name]
        elif cls.needs_checkpoint():
            offered = ", ".join(m["name"] for m in self.available()) or "none"
            raise InputError(f"method {name!r} needs trained weights and none were loaded here: train them with "
                             f"{cls.train_hint or '`zscir train`'} and pass the folder with --checkpoint DIR "
                             f"(available: {offered})")
        else:
            key = (name,)
            if key not in self._methods:
                m = build_method(name, self.backbone)
                self.index.check_method(m)
                self._methods[key] = m
                while len(self._methods) > METHOD_CACHE_SIZE:
                    self._methods.popitem(last=False)
            self._methods.move_to_end(key)
            base = self._methods[key]
        return base.with_settings(**settings)

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
                from zscir.data.sources import load_location  # a file, or an image inside a tar shard

                images += [load_location(self.index.items[int(p)]["path"]) for p in refs]
            else:
                parts.append(fast)
        if images:
            px = self.backbone.preprocess(images)
            parts.append(method.compose(px, [text] * len(images)))
        if not parts:
            raise InputError(f"method {method.name!r} needs a reference image")
        q = F.normalize(torch.cat(parts).float().mean(0, keepdim=True), dim=-1)
        return q.float().cpu().numpy()

    def search(self, images: Sequence[Image.Image], text: str | None, method: str | None = None,
               alpha: float | None = None, k: int = 10, exclude_ids: Sequence[str] = (),
               refs: Sequence[str] = ()) -> list[SearchHit]:
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
