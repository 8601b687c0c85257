"""Helpers of the bad-input suite: image builders and the checks every row makes (exit code / HTTP status,
a message naming the culprit without server paths, nothing lost or half-written)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from zscir.cli import main


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """zscir.cli.main in-process: (exit code, stderr lines)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def run_zscir(*argv: str, cwd: str | Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m zscir ...` in a subprocess (for faults that could kill the process)."""
    return subprocess.run([sys.executable, "-m", "zscir", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=os.environ.copy())


def one_line_error(code: int, err: list[str], culprit: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and culprit in err[0], err
    assert "Traceback" not in "\n".join(err)


def no_temporaries(folder: Path) -> None:
    """Nothing half-written: no atomic-write temporaries left behind anywhere under folder."""
    left = [p for p in Path(folder).rglob(".*.tmp")]
    assert not left, left


