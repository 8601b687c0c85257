"""The data layer: one way to read a user's images and captions, used by `zscir index` and every trainer.

API summary (docs/data.md has the long form)

Sources (zscir.data.sources) - what a SOURCE string names, read lazily:
    src = open_source("shards/{00000..00331}.tar")            # WebDataset tars (img2dataset layout), brace/glob/folder of tars
    src = open_source("photos/")                              # folder, recursive; or a glob "photos/**/*.jpg"
    src = open_source("cc3m.csv", image_column="filepath", caption_column="title")   # CSV/TSV/JSONL listing
    src = PathsSource(paths, keys=ids, captions=caps)         # an in-memory file list (e.g. a synthetic world)
    for rec in src: rec.key, rec.location, rec.caption, rec.meta, rec.load() -> PIL RGB, rec.read_bytes()
    src.units()        independent pieces (one per tar) that streaming splits across workers and ranks
    src.failures       [{"id", "path", "error"}] found while listing (dangling links, loops, non-UTF-8 names,
                       truncated tars, groups without an image); never fatal
    src.fingerprint()  content id (file stats / listing bytes / tar stats) for caches
    read_location(loc) / load_location(loc)   re-open a record's location later: a file path or
                       "<tar path>#<member>" (the index stores these; the service can show them)
    iter_texts(path, column=None)   captions from a plain-text file or a JSONL/CSV column (rtd --captions)

Streaming (zscir.data.stream) - decode + preprocess in DataLoader worker processes:
    loader = stream(src, backbone.preprocess_config, StreamConfig(batch_size=256, workers=4, shuffle=True,
                    repeat=True, need_captions=True, max_bad_fraction=0.05), failures_path=out/"failures.jsonl")
    for batch in loader: batch.pixels (B,3,H,W), batch.captions, batch.keys, batch.locations, batch.metas
    Splits items exactly once per epoch across workers x DDP ranks (rank/world from torch.distributed unless
    given); skipped items go to loader.failures (+ the JSONL file); more than max_bad_fraction unreadable
    (after min_seen items) or nothing readable raises InputError. loader.set_epoch(e) reshuffles.

Frozen-feature cache (zscir.data.cache) - memory-mapped, keyed by backbone fingerprint + preprocessing
digest + source fingerprint + feature name (+ dtype); built in a hidden sibling and renamed; a killed build
resumes where it stopped; DDP-aware (every rank computes its share, rank 0 commits):
    feats = image_features(backbone, src_or_paths, "image_tokens"|"image_embedding", cache=root_or_None)
    texts = text_features(backbone, captions, "text_trunk"|"text_embedding", cache=root_or_None)
    len(feats), feats.keys/.locations/.captions, feats[i] (numpy), feats.gather(idx), feats.tensor(idx)
    for idx, rows in feats.batches(256, seed=0, epoch=e, rank=r, world_size=w): ...   # equal steps per rank
    FeatureCache(root).get(CacheKey(...)) / .build(key, batches, rank=, world_size=, barrier=)

Synthetic CIR triplets from a user's image-caption pairs (zscir.data.triplets; CLI `zscir data make-triplets`):
    report = make_cir_triplets(backbone, src, "triplets.jsonl", edit, min_similarity=0.2, targets=None)
        edit(captions, per_caption, seed) -> objects with .reference/.modification/.target captions (the CLI
        passes zscir.train.triplets.generate_triplets; the library never imports zscir.train)
    report.kept_fraction, report.summary()
    read_cir_triplets("triplets.jsonl") -> [CIRTriplet(reference, modification, target)] (absolute locations)

CLI flags (zscir.data.cli): add_source_arguments(parser) adds --image-column/--caption-column/--id-column
(+ --max-bad-fraction); source_from_args(spec, args) opens the source with them. `zscir data inspect SOURCE`
shows what a source holds. zscir.data.stream.iter_location_batches: thread-pool decoding of locations
(what `zscir index`'s mapper runs).

Output folders (zscir.utils.io): check_output_dir(path, is_ours, what) / safe_output_dir(...) refuse to write
into or replace a non-empty folder that is not an output of the same kind.
"""

from zscir.data.cache import CachedFeatures, CacheKey, FeatureCache
from zscir.data.features import decode_workers, image_features, text_features
from zscir.data.sources import (
    FolderSource,
    GlobSource,
    ListingSource,
    PathsSource,
    Record,
    Source,
    SourceConfig,
    TarSource,
    expand_braces,
    iter_jsonl,
    iter_texts,
    load_location,
    open_source,
    read_location,
)
from zscir.data.stream import Batch, StreamConfig, StreamingDataset, StreamingLoader, stream
from zscir.data.triplets import CIRTriplet, TripletReport, make_cir_triplets, read_cir_triplets

__all__ = [
    "Batch", "CIRTriplet", "CacheKey", "CachedFeatures", "FeatureCache", "FolderSource", "GlobSource",
    "ListingSource", "PathsSource", "Record", "Source", "SourceConfig", "StreamConfig", "StreamingDataset",
    "StreamingLoader", "TarSource", "TripletReport", "decode_workers", "expand_braces", "image_features", "iter_jsonl", "iter_texts",
    "load_location", "make_cir_triplets", "open_source", "read_cir_triplets", "read_location", "stream",
    "text_features",
]
