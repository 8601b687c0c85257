"""Persistent gallery indexes: embed a folder (or listing) of images once, search it many times.

Layout of an index folder (stages talk through it; see docs/index.md):

    manifest.json          format version, backbone spec + fingerprint, preprocessing, dim, count,
                           shards with checksums, faiss factory string + metric + search parameters
    shards/shard-NNNNN.npy         float16 embeddings (n, dim), L2-normalised before rounding
    shards/shard-NNNNN.jsonl       one line per row: id, path, metadata
    gallery.faiss          the faiss index over every shard, in shard order (an --add writes the other name,
                           gallery-next.faiss, and the manifest says which is current)
    failures.jsonl         images that could not be read (not fatal)

Gallery embedding is reader -> gallery embedder (embedder.py) -> writer, driven by a runner; the distributor
decides where the embedder runs (this process, or a Ray Data actor pool)."""

from zscir.index.manifest import FORMAT_VERSION, Manifest
from zscir.index.store import GalleryIndex

__all__ = ["FORMAT_VERSION", "GalleryIndex", "Manifest"]
