import sys
from pathlib import Path

# The benchmark fixtures (miniature datasets, the tiny test backbone) live in tests/datasets.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
