"""What pollux installs on the workers of a `dask.distributed` cluster (imported
only when a client is in use: importing `distributed` takes a while)."""

from __future__ import annotations

from typing import Any

import jax
from distributed import WorkerPlugin

__all__ = ["X64Plugin"]


class X64Plugin(WorkerPlugin):
    """Gives every worker, also one that restarts, the client's
    ``jax_enable_x64``: a worker process has its own JAX configuration, and
    float64 data must stay float64 there."""

    name = "pollux-x64"

    def __init__(self, x64: bool):
        self.x64 = x64

    def setup(self, worker: Any) -> None:
        jax.config.update("jax_enable_x64", self.x64)
