"""LinCIR (Gu et al., CVPR 2024, "Language-only Efficient Training of Zero-shot Composed Image Retrieval").

At inference LinCIR is a single-token MLP mapper exactly like pic2word: the reference image's (L2-normalised)
embedding -> mapper -> pseudo token `$` in the composition template (`a photo of $ that {text}`), run through
the frozen text tower; the gallery is the backbone's own image tower. What differs is the training
(`zscir train lincir`, zscir/train/lincir.py): the mapper never sees an image. It is trained on captions
alone, from a caption's text embedding plus noise ("self-masking projection"), so a LinCIR checkpoint is a
plain `zscir.token-mapper` checkpoint whose config records `method: "lincir"`; that record is what makes
`build_method(None, backbone, [ckpt])` pick this method, and what keeps pic2word and LinCIR checkpoints
apart (each serves only the checkpoints made for it).
"""

from __future__ import annotations

from zscir.methods.base import register_method
from zscir.methods.mapped import MappedTokenMethod

#: the `config.method` a LinCIR checkpoint records
LINCIR = "lincir"


@register_method(LINCIR, order=65)
class LinCIR(MappedTokenMethod):
    """A pseudo-token mapper trained on captions only (text embedding + noise -> token that replaces the
    caption's keywords); composes like pic2word; towers frozen."""

    made_by = (LINCIR,)
    train_hint = "`zscir train lincir --captions FILE --out DIR` (or --pairs SOURCE / --world DIR)"
