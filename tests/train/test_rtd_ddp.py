"""RTD under torchrun (2 CPU processes, gloo): the ranks stay identical and rank 0 writes the checkpoint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)


def test_rtd_two_processes(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = Path(__file__).with_name("rtd_ddp_worker.py")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path / "ck")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count(" ok losses=") == 2
    assert (tmp_path / "ck" / "config.json").is_file()
