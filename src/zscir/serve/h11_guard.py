"""The guarded h11 protocol (`zscir.serve.limits.guarded_h11_protocol`) importable by name, for
`zscir serve --workers N`: uvicorn's worker processes load the protocol class from its import path, so its
header deadline comes from the environment the supervisor sets (ZSCIR_READ_TIMEOUT_S)."""

from __future__ import annotations

import os

from zscir.serve.limits import Limits, guarded_h11_protocol

ENV = "ZSCIR_READ_TIMEOUT_S"
PATH = "zscir.serve.h11_guard:GuardedH11Protocol"

GuardedH11Protocol = guarded_h11_protocol(float(os.environ.get(ENV, Limits().read_timeout_s)))
