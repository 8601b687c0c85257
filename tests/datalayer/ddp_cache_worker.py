"""Run under torchrun: every rank computes its share of a shard set's features into one cache entry."""

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from zscir.data import StreamConfig, image_features, open_source, text_features
from zscir_fakes import make

dist.init_process_group("gloo")
root = sys.argv[1]
feats = image_features(make(), open_source(os.path.join(root, "shards")), "image_embedding",
                       cache=os.path.join(root, "cache"),
                       config=StreamConfig(batch_size=3, workers=1, max_bad_fraction=1.0))
again = image_features(make(), open_source(os.path.join(root, "shards")), "image_embedding",
                       cache=os.path.join(root, "cache"))
texts = text_features(make(), ["a red circle", "a blue square"], cache=os.path.join(root, "cache"))
with open(os.path.join(root, f"rank{dist.get_rank()}.json"), "w") as f:  # not stdout: ranks' lines interleave
    json.dump({"rank": dist.get_rank(), "keys": feats.keys, "folder": str(feats.folder),
               "again": str(again.folder), "texts": str(texts.folder), "n_texts": len(texts)}, f)
dist.destroy_process_group()
