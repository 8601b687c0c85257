"""zscir: zero-shot composed image retrieval.

Layout (one home per concept):
  backbones/  vision-language backbones behind one interface, by spec (embedded default, hf: CLIP/SigLIP, py:)
  methods/    composition methods: a reference image + a modification text -> a query embedding
  nn/         shared layers: LoRA adapters, image-to-pseudo-word mappers
  objectives/ training losses
  train/      training loops and `zscir train` (imports the library; the library never imports train)
  data/       the data layer: a user's images and captions (folders, listings, tars), streaming, caches
  world/      the procedurally generated CIR world (scenes, rendering, language, splits)
  datasets/   the benchmarks: loaders, each registering its protocol (registry.py)
  eval/       metrics, protocols, the retrieval engine, `zscir eval` / `zscir score`, world evaluation, reports
  index/      persistent gallery indexes (`zscir index`) and searching them (`zscir search`)
  serve/      the HTTP service over an index (`zscir serve`)
  demo/       `zscir demo`: every method on the synthetic world, end to end
  utils/      small helpers: atomic writes, image loading, seeding, devices
  cli.py      the `zscir` command; checkpoint.py, config.py, errors.py, paths.py: shared formats and rules
"""

__version__ = "0.1.0"
