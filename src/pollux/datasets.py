"""Simulated data sets."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["make_simulated_linear_data"]


def _rng(rng: Any) -> np.random.Generator:
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    msg = f"rng: expected None, an int seed or a numpy Generator, got {rng!r}"
    raise TypeError(msg)


def _check_matrix(M: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(M, dtype=float)
    if arr.shape != shape:
        msg = f"make_simulated_linear_data({name}=...): expected shape {shape}, got {arr.shape}"
        raise ValueError(msg)
    return arr


def make_simulated_linear_data(
    n_stars: int,
    n_latents: int,
    n_labels: int,
    n_flux: int,
    A: Any = None,
    B: Any = None,
    rng: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stars whose labels and flux are both linear in unit-Normal latents.

    ``latents ~ N(0, I)``, true ``label = latents @ A.T`` and ``flux = latents @ B.T``;
    errors are uniform in [0.01, 0.1] and the observed values are drawn around the
    truth with those errors. ``A`` (n_labels, n_latents) and ``B`` (n_flux,
    n_latents) are standard Normal when not given.

    Returns
    -------
    obs
        ``label``, ``label_err``, ``flux``, ``flux_err``.
    truth
        ``label``, ``flux`` (noise-free), ``A``, ``B``, ``latents``.

    Examples
    --------
    >>> obs, truth = make_simulated_linear_data(100, 4, 2, 32, rng=1)
    >>> obs["flux"].shape, truth["latents"].shape
    ((100, 32), (100, 4))
    """
    for name, value in [
        ("n_stars", n_stars),
        ("n_latents", n_latents),
        ("n_labels", n_labels),
        ("n_flux", n_flux),
    ]:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            msg = f"make_simulated_linear_data({name}=...): expected a positive int, got {value!r}"
            raise ValueError(msg)
    gen = _rng(rng)
    A = (
        gen.normal(size=(n_labels, n_latents))
        if A is None
        else _check_matrix(A, (n_labels, n_latents), "A")
    )
    B = (
        gen.normal(size=(n_flux, n_latents))
        if B is None
        else _check_matrix(B, (n_flux, n_latents), "B")
    )
    latents = gen.normal(size=(n_stars, n_latents))
    label = latents @ A.T
    flux = latents @ B.T
    label_err = gen.uniform(0.01, 0.1, size=label.shape)
    flux_err = gen.uniform(0.01, 0.1, size=flux.shape)
    obs = {
        "label": gen.normal(label, label_err),
        "label_err": label_err,
        "flux": gen.normal(flux, flux_err),
        "flux_err": flux_err,
    }
    truth = {"label": label, "flux": flux, "A": A, "B": B, "latents": latents}
    return obs, truth
