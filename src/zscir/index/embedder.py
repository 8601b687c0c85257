"""GalleryEmbedder: a batch of image paths -> gallery embeddings, with unreadable files reported, not raised.

Decoding runs in a thread pool one batch ahead of the model (the data layer's tolerant reader, which opens
files and WebDataset tar members alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zscir.data.stream import iter_location_batches


def load_gallery_encoder(backbone_spec: str, method: str | None = "slerp", device: str | None = None,
                         checkpoints: Sequence[str] = ()):
    """The backbone and the composition method whose encode_gallery embeds the index (built by
    zscir.methods.build_method: a trained method needs its checkpoint)."""
    from zscir.backbones import load_backbone
    from zscir.methods import build_method
    from zscir.methods.build import precheck

    method = precheck(method, list(checkpoints))
    backbone = load_backbone(backbone_spec, device=device)
    return backbone, build_method(method, backbone, list(checkpoints))


class GalleryEmbedder:
    """Callable: locations (file paths or `<tar>#<member>`) -> (float32 embeddings of the readable ones (n_ok, D), ok positions, {pos: error})."""

    def __init__(self, method, batch_size: int = 64, workers: int = 4) -> None:
        self.method = method
        self.cfg = method.backbone.preprocess_config
        self.batch_size = batch_size
        self.workers = workers

    @torch.inference_mode()
    def __call__(self, paths: Sequence[str]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        dev = self.method.backbone.device
        embs: list[np.ndarray] = []
        ok: list[int] = []
        errors: dict[int, str] = {}
        start = 0
        for pixels, ok_b, err_b in iter_location_batches([str(p) for p in paths], self.cfg, self.batch_size, self.workers):
            if pixels is not None:
                embs.append(self.method.encode_gallery(pixels.to(dev)).float().cpu().numpy())
            ok += [start + j for j in ok_b]
            errors.update({start + j: e for j, e in err_b.items()})
            start += len(ok_b) + len(err_b)
        dim = self.method.backbone.embed_dim
        emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
        return emb, ok, errors
