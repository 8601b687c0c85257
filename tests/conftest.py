import os
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
# Subprocesses and Ray workers must import the fake backbone too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [TESTS, str(Path(TESTS).parent / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
