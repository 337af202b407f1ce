"""Checkpoints of a running closed-form fit: its parameters every few iterations,
in a file from which a new call resumes.

EM's state between iterations is its parameters alone (a SQUAREM cycle starts
afresh from them), so a fit resumed from the parameters of iteration ``j`` runs
the same iterations as one that was never stopped. The file (``.npz``) holds the
parameters, the objective so far, the iteration count and a description of the
fit (outputs, shapes, dtype, settings); a file written by another fit is
refused. It is replaced atomically (written beside, then renamed), so a fit
killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpoint"]


class Checkpoint:
    """Saves and loads the parameters of one fit.

    Parameters
    ----------
    path
        The ``.npz`` file.
    every
        Save after every this many iterations (and when the fit ends).
    fingerprint
        What identifies the fit (JSON-serialisable): a file whose fingerprint
        differs is refused.
    call
        The public call, for messages.
    """

    def __init__(self, path: Any, every: int, fingerprint: dict, call: str):
        self.path = Path(path)
        self.every = every
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.call = call

    def load(self, template: Any) -> tuple[Any, list[np.ndarray], int, bool] | None:
        """``(params, losses, n_iter, converged)`` from the file (``params`` with
        the structure of ``template``), or None when there is no file yet."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                stored = {key: f[key] for key in f.files}
        except (OSError, ValueError) as err:
            msg = f"{self.call}(checkpoint=...): cannot read {self.path} ({err})"
            raise ValueError(msg) from err
        if str(stored.get("fingerprint")) != self.fingerprint:
            msg = (
                f"{self.call}(checkpoint=...): {self.path} was written by a different "
                "fit (other data shapes, outputs, dtype or settings); delete it or "
                "give another path"
            )
            raise ValueError(msg)
        leaves, treedef = jax.tree.flatten(template)
        params = jax.tree.unflatten(
            treedef, [stored[f"leaf_{i}"] for i in range(len(leaves))]
        )
        return (
            params,
            [stored["losses"]],
            int(stored["n_iter"]),
            bool(stored["converged"]),
        )

    def due(self, n_iter: int) -> int:
        """Iterations to run before the next save."""
        return self.every - n_iter % self.every

    def save(self, params: Any, losses: list[np.ndarray], n_iter: int, converged: bool):
        """Write the file (atomically)."""
        leaves = jax.tree.leaves(jax.device_get(params))
        arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays["losses"] = np.concatenate([np.zeros(0), *losses])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            fingerprint=np.asarray(self.fingerprint),
            n_iter=np.asarray(n_iter),
            converged=np.asarray(converged),
            **arrays,
        )
        os.replace(tmp, self.path)
