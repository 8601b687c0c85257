"""zscir: zero-shot composed image retrieval.

Layout (one home per concept):
  backbones/  vision-language backbones behind one interface (embedded default, Hugging Face CLIP/SigLIP)
  methods/    composition methods: a reference image + a modification text -> a query embedding
  nn/         shared layers (LoRA, attention pooling)
  objectives/ training losses
  train/      training loops (imports the library; the library never imports train)
  world/      the procedurally generated CIR world (scenes, rendering, language, splits)
  datasets/   benchmark loaders
  eval/       metrics, protocols, evaluation and HTML reports
  cli.py      the `zscir` command
"""

__version__ = "0.1.0"
