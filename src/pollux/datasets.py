"""Simulated data sets."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._params import check_positive_int

__all__ = ["make_simulated_linear_data", "make_underestimated_errors_data"]


def _rng(rng: Any) -> np.random.Generator:
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    msg = f"rng: expected None, an int seed or a numpy Generator, got {rng!r}"
    raise TypeError(msg)


def _check_sizes(call: str, **sizes: Any) -> None:
    for name, value in sizes.items():
        check_positive_int(value, f"{call}({name}=...)")


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
    _check_sizes(
        "make_simulated_linear_data",
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
    )
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


def injected_extra_error(n_flux: int) -> np.ndarray:
    """The unreported flux scatter of `make_underestimated_errors_data` at pixel p:
    ``2 cos²(2π p / (n_flux / 4))``."""
    p = np.arange(n_flux)
    return 2.0 * np.cos(2 * np.pi * p / (n_flux / 4)) ** 2


def make_underestimated_errors_data(
    n_stars: int = 2048,
    n_latents: int = 8,
    n_labels: int = 2,
    n_flux: int = 128,
    rng: Any = 42,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Simulated stars whose reported flux errors miss part of the flux scatter.

    Label ``i`` is latent ``i`` (labels beyond ``n_latents`` are random mixtures
    of the latents); the flux loads on the first two latents through two Gaussian
    "absorption lines" (at pixels ``n_flux/2`` and ``n_flux/4``) on top of small
    random loadings. The observed flux then receives extra Normal scatter with
    standard deviation `injected_extra_error` per pixel, which its reported errors
    do not include. With the defaults this draws the numbers of the published Lux
    tutorial on underestimated uncertainties.

    Returns
    -------
    data
        `PolluxData` with ``flux`` and ``label`` in physical units, with errors and
        `ShiftScalePreprocessor` s from the data.
    truth
        Noise-free ``label`` and ``flux``, the generating ``A`` and ``B``, the
        true ``latents`` and the injected ``extra_err`` per pixel.

    Examples
    --------
    >>> data, truth = make_underestimated_errors_data(n_stars=64, n_flux=16, rng=0)
    >>> data["flux"].shape, truth["extra_err"].shape
    ((64, 16), (16,))
    """
    from .data import OutputData, PolluxData, ShiftScalePreprocessor

    _check_sizes(
        "make_underestimated_errors_data",
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
    )
    gen = _rng(rng)
    A = np.zeros((n_labels, n_latents))
    for i in range(min(n_labels, n_latents)):
        A[i, i] = 1.0
    pix = np.arange(n_flux)
    B = gen.normal(scale=0.1, size=(n_flux, n_latents))
    if n_labels > n_latents:  # more labels than latents: mixtures of the latents
        A[n_latents:] = gen.normal(size=(n_labels - n_latents, n_latents))
    B[:, 0] += 4 * np.exp(-0.5 * (pix - n_flux / 2) ** 2 / 5**2)
    if n_latents > 1:
        B[:, 1] += 2 * np.exp(-0.5 * (pix - n_flux / 4) ** 2 / 3**2)
    obs, truth = make_simulated_linear_data(
        n_stars, n_latents, n_labels, n_flux, A=A, B=B, rng=gen
    )
    extra_err = injected_extra_error(n_flux)
    obs["flux"] = gen.normal(obs["flux"], scale=extra_err)

    def output(name: str) -> OutputData:
        return OutputData(
            obs[name],
            err=obs[f"{name}_err"],
            preprocessor=ShiftScalePreprocessor.from_data(obs[name]),
        )

    truth["extra_err"] = extra_err
    return PolluxData(flux=output("flux"), label=output("label")), truth
