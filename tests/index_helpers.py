import numpy as np

from zscir.index.manifest import Manifest
from zscir.index.writer import read_shard_embeddings, read_shard_items

SPEC = "py:zscir_fakes:make"


def contents(folder):
    """(ids in order, float16 embeddings) of an index folder."""
    man = Manifest.load(folder)
    ids, embs = [], []
    for rec in man.shards:
        ids += [r["id"] for r in read_shard_items(folder, rec)]
        embs.append(np.asarray(read_shard_embeddings(folder, rec)))
    return ids, (np.concatenate(embs) if embs else np.zeros((0, man.dim), np.float16))
