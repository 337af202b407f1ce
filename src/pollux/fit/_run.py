"""The host loop of every fit: compiled chunks of iterations until settled,
with the progress bar, the NaN check and the checkpoints between chunks."""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

__all__ = ["run"]


def run(chunk, start, template, *, n_obs, max_iter, tol, progress, call, checkpoint):
    """Call ``chunk(state, prev_loss, threshold, max_steps)`` until converged or
    ``max_iter`` iterations, from ``start()`` (or from the state saved in
    ``checkpoint``, which has the structure of ``template``, saving it there as
    it goes); returns ``(state, losses, n_iter, converged)``."""
    dtype = jax.tree.leaves(template)[0].dtype
    threshold = np.asarray(tol * max(n_obs, 1), dtype)
    resumed = None if checkpoint is None else checkpoint.load(template)
    if resumed is None:
        state, losses, n_iter = start(), [], 0
    else:
        state, losses, n_iter = resumed
        if n_iter > max_iter:
            msg = (
                f"{call}(checkpoint=...): {checkpoint.path} holds {n_iter} "
                f"iterations, more than max_iter={max_iter}"
            )
            raise ValueError(msg)
    ran = np.concatenate([np.zeros(0, dtype), *losses])
    # The stopping rule of the compiled loop, applied to the iterations run.
    converged = len(ran) > 1 and bool(abs(ran[-2] - ran[-1]) <= threshold)
    prev = np.asarray(ran[-1] if len(ran) else np.inf, dtype)
    with tqdm(total=max_iter, desc="EM", disable=not progress, leave=False) as bar:
        bar.update(n_iter)
        while n_iter < max_iter and not converged:
            steps = max_iter - n_iter
            if checkpoint is not None:
                steps = min(steps, checkpoint.due(n_iter))
            state, chunk_losses, n_done, done = chunk(
                state, prev, threshold, np.asarray(steps)
            )
            n_done = int(n_done)
            values = np.asarray(chunk_losses)[:n_done]
            if not np.all(np.isfinite(values)):
                msg = (
                    f"{call}: the objective became non-finite at iteration "
                    f"{n_iter + int(np.argmax(~np.isfinite(values)))}; check the data "
                    "scale (preprocess it) and the priors"
                )
                raise FloatingPointError(msg)
            losses.append(values)
            n_iter += n_done
            converged = bool(done)
            prev = np.asarray(values[-1], dtype)
            bar.update(n_done)
            bar.set_postfix(loss=f"{values[-1]:.6g}")
            if checkpoint is not None and (
                converged
                or n_iter >= max_iter
                or checkpoint.due(n_iter) == checkpoint.every
            ):
                checkpoint.save(state, losses, n_iter)
    return state, losses, n_iter, converged
