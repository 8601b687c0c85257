"""Run by test_trainers_cli under torchrun: every rank runs the same `zscir` commands (one per trainer)."""

import json
import sys

from zscir.cli import main

for cmd in json.loads(open(sys.argv[1], encoding="utf-8").read()):
    rc = main(cmd)
    if rc != 0:
        sys.exit(f"{cmd[:2]} exited {rc}")
