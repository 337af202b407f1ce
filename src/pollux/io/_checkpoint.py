"""Checkpoints of a running closed-form fit: its parameters every few iterations,
in a file from which a new call resumes.

EM's state between iterations is its parameters alone (a SQUAREM cycle starts
afresh from them), so a fit resumed from the parameters of iteration ``j`` runs
the same iterations as one that was never stopped. The file (``.npz``) holds the
parameters, the objective so far and a fingerprint of the fit: the outputs'
transforms and priors, the values held fixed, the data's shapes and dtype, the
latent size and the acceleration. A file with another fingerprint is refused.
(The stopping rule is not part of it: a fit resumed with a smaller ``tol`` goes
on.) The file is written beside and renamed, so a fit killed while saving leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._codec import encode

__all__ = ["Checkpoint", "fingerprint"]


def fingerprint(model, names, fixed, shapes, dtype, accelerate: bool) -> str:
    """A digest of everything that defines the iterations of a fit."""
    digest = hashlib.sha256()
    settings = {
        "names": list(names),
        "shapes": [list(s) for s in shapes],
        "dtype": str(dtype),
        "latent_size": model.latent_size,
        "accelerate": bool(accelerate),
    }
    definition = {"outputs": {n: model.outputs[n] for n in names}, "fixed": fixed}
    try:
        tree, arrays = encode(definition, "LuxModel.fit(checkpoint=...)")
    except TypeError:  # a transform or prior that model files cannot store
        tree = [repr(type(model.outputs[n])) for n in names]
        arrays = {str(i): x for i, x in enumerate(jax.tree.leaves(fixed))}
    digest.update(json.dumps([settings, tree], sort_keys=True, default=str).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


class Checkpoint:
    """Saves and loads the parameters of one fit.

    Parameters
    ----------
    path
        The ``.npz`` file.
    every
        Save after every this many iterations (and when the fit ends).
    digest
        The fit's `fingerprint`: a file with another one is refused.
    call
        The public call, for messages.
    """

    def __init__(self, path: Any, every: int, digest: str, call: str):
        self.path = Path(path)
        self.every = every
        self.digest = digest
        self.call = call

    def _refuse(self, why: str):
        msg = (
            f"{self.call}(checkpoint=...): {self.path} {why}; delete it or give "
            "another path"
        )
        return ValueError(msg)

    def load(self, template: Any) -> tuple[Any, list[np.ndarray], int] | None:
        """``(params, losses, n_iter)`` from the file (``params`` with the
        structure, shapes and dtypes of ``template``), or None when there is no
        file yet."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                stored = {key: f[key] for key in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise self._refuse(f"cannot be read ({err})") from err
        if str(stored.get("fingerprint")) != self.digest:
            raise self._refuse(
                "was written by a different fit (other outputs, priors, fixed "
                "values, data shapes, dtype or acceleration)"
            )
        leaves, treedef = jax.tree.flatten(template)
        loaded = [stored.get(f"leaf_{i}") for i in range(len(leaves))]
        for new, old in zip(loaded, leaves, strict=True):
            if new is None or new.shape != np.shape(old) or new.dtype != old.dtype:
                raise self._refuse("holds parameters of other shapes")
        dtype = leaves[0].dtype
        losses = stored["losses"].astype(dtype)
        return jax.tree.unflatten(treedef, loaded), [losses], int(stored["n_iter"])

    def due(self, n_iter: int) -> int:
        """Iterations to run before the next save."""
        return self.every - n_iter % self.every

    def save(self, params: Any, losses: list[np.ndarray], n_iter: int):
        """Write the file (beside, flushed to disk, then renamed)."""
        leaves = jax.tree.leaves(jax.device_get(params))
        arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                fingerprint=np.asarray(self.digest),
                n_iter=np.asarray(n_iter),
                losses=np.concatenate(losses),
                **arrays,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
