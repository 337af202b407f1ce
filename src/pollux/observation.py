r"""Transforms from a model spectrum at rest to the spectrum a survey observes.

A Lux output predicts a star's continuum-normalised spectrum in its rest frame.
Surveys deliver spectra un-normalised (the instrument's response times the star)
and Doppler-shifted. Put these transforms after the flux transform in a
`~pollux.transforms.TransformSequence` to model both with per-star parameters:

- `DopplerTransform`: the radial velocity ``rv`` [km/s] of each star; the observed
  pixel at wavelength :math:`\lambda` sees the rest-frame model at
  :math:`\lambda / (1 + v/c)`, interpolated by cubic convolution within each
  detector;
- `ContinuumTransform`: a multiplicative continuum per star and detector, a
  Chebyshev series in wavelength across the detector.

Both hold one set of parameters per star, so `LuxModel.optimize` fits them with
the latents (the closed-form `fit` does not take them yet).

>>> import jax.numpy as jnp
>>> from pollux.readers import apogee_wavelength
>>> from pollux.transforms import LinearTransform, TransformSequence
>>> wave = apogee_wavelength()
>>> flux = TransformSequence(
...     LinearTransform(wave.size), DopplerTransform(wave), ContinuumTransform(wave))
>>> flux.param_shapes(input_size=4, n_stars=10)
{'0:A': (7214, 4), '1:rv': (10,), '2:coeffs': (10, 9)}
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float

from ._params import SCATTER
from .transforms import AbstractTransform, ShapeSpec

__all__ = ["C_KMS", "ContinuumTransform", "DopplerTransform", "detector_slices"]

C_KMS = 299_792.458  # speed of light [km/s]
_GAP_FACTOR = 1.5  # a step this many times the median one separates two detectors


def detector_slices(wavelength: ArrayLike) -> list[slice]:
    """The pixel ranges of the detectors of an increasing wavelength grid: split
    where a step in log λ exceeds `_GAP_FACTOR` times the median step.

    >>> detector_slices([1.0, 1.1, 1.2, 2.0, 2.1])
    [slice(0, 3, None), slice(3, 5, None)]
    """
    step = np.diff(np.log10(np.asarray(wavelength, dtype=np.float64)))
    cuts = np.flatnonzero(step > _GAP_FACTOR * np.median(step)) + 1
    return [
        slice(a, b) for a, b in itertools.pairwise([0, *cuts.tolist(), step.size + 1])
    ]


def _cubic_weights(t: Array) -> Array:
    """``(..., 4)`` weights of Keys' cubic convolution (a = -1/2) for the samples
    at offsets -1, 0, 1, 2 of fractional positions ``t`` in [0, 1)."""
    x = jnp.abs(t[..., None] - jnp.arange(-1, 3, dtype=t.dtype))
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x**2 + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return jnp.where(x <= 1, near, jnp.where(x < 2, far, 0.0))


class _OnAGrid(AbstractTransform):
    """A transform of spectra on a wavelength grid, pixel for pixel (its input
    size is its output size), whose parameters start at their priors' means."""

    wavelength: tuple[float, ...] = eqx.field(static=True)

    def _set_grid(self, wavelength: ArrayLike) -> tuple[np.ndarray, list[slice]]:
        """Check ``wavelength`` and keep it; its float64 values and
        `detector_slices`."""
        where = f"{type(self).__name__}(wavelength=...)"
        wave = np.asarray(wavelength, dtype=np.float64)
        if wave.ndim != 1 or wave.size < 8:
            msg = f"{where}: expected a 1-d wavelength grid of at least 8 pixels"
            raise ValueError(msg)
        finite = np.all(np.isfinite(wave)) and np.all(wave > 0)
        if not finite or np.any(np.diff(wave) <= 0):
            msg = f"{where}: wavelengths must be finite, positive and increasing"
            raise ValueError(msg)
        self.wavelength = tuple(wave.tolist())
        return wave, detector_slices(wave)

    def start_params(self, input_size: int, n_stars: int | None = None):
        """The priors' means (a random draw of a velocity would start stars
        whole lines away from theirs)."""
        priors = self.expanded_priors(input_size, n_stars)
        return {k: jnp.asarray(p.mean) for k, p in priors.items() if k != SCATTER}

    def check_input_size(self, input_size: int) -> None:
        if input_size != self.output_size:
            msg = (
                f"{type(self).__name__}: input size {input_size} must equal the "
                f"{self.output_size} pixels of its wavelength grid"
            )
            raise ValueError(msg)


class DopplerTransform(_OnAGrid):
    r"""The input spectra, at rest, seen at each star's radial velocity ``rv``.

    On a grid uniform in :math:`\log\lambda` within each detector (APOGEE's, for
    one), a velocity shifts every pixel by the same
    :math:`\delta = \log_{10}(1 + v/c) / \Delta\log_{10}\lambda` pixels; the
    observed pixel :math:`i` takes the cubic convolution of the rest-frame pixels
    around :math:`i - \delta` (smooth in ``rv``, so its gradient is too). Within
    :math:`|\delta| + 2` pixels of a detector's ends, where the rest-frame
    spectrum is not known, the nearest edge pixel stands in: mask those pixels of
    the data, or give the model a grid wider than the observed one.
    `pollux.datasets.doppler_shift` is the float64 reference (NaN there).

    Parameters
    ----------
    wavelength
        The pixel grid (observed wavelengths; any unit), increasing.
    param_priors
        ``{"rv": prior}``; default ``Normal(0, 100)`` km/s.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> wave = 15000.0 * 10 ** (6e-6 * np.arange(50))
    >>> t = DopplerTransform(wave)
    >>> flux = jnp.sin(jnp.arange(50.0) / 5)[None]
    >>> bool(jnp.allclose(t.apply(flux, rv=jnp.zeros(1)), flux))
    True
    """

    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {"rv": ("n_stars",)}
    log_step: float = eqx.field(static=True)  # log10 λ per pixel
    chips: tuple[tuple[int, int], ...] = eqx.field(static=True)  # detectors' pixels

    def __init__(
        self,
        wavelength: ArrayLike,
        param_priors: Mapping[str, dist.Distribution] | None = None,
    ):
        wave, chips = self._set_grid(wavelength)
        step = np.diff(np.log10(wave))
        within = np.concatenate([step[c.start : c.stop - 1] for c in chips])
        log_step = float(np.median(within))
        if np.max(np.abs(within / log_step - 1)) > 1e-4:
            msg = (
                "DopplerTransform(wavelength=...): the grid must be uniform in "
                "log(wavelength) within each detector (resample the spectra onto "
                "such a grid first, e.g. pollux.readers.apogee_wavelength())"
            )
            raise ValueError(msg)
        self.log_step = log_step
        self.chips = tuple((c.start, c.stop) for c in chips)
        super().__init__(wave.size, param_priors)

    def _default_priors(self) -> dict[str, dist.Distribution]:
        return {"rv": dist.Normal(0.0, 100.0)}

    def apply(self, latents: Float[Array, "n d"], **params: Array) -> Array:
        x = latents
        rv = jnp.asarray(params["rv"], x.dtype)
        delta = jnp.log10(1.0 + rv / C_KMS) / self.log_step
        base = jnp.floor(-delta)
        w = _cubic_weights(-delta - base)  # (n, 4)
        out = []
        for start, stop in self.chips:
            i = jnp.arange(start, stop)
            src = i[None, :, None] + base.astype(int)[:, None, None] + jnp.arange(-1, 3)
            src = jnp.clip(src, start, stop - 1)  # (n, pixels, 4)
            rows = jnp.arange(x.shape[0])[:, None, None]
            out.append(jnp.einsum("npo,no->np", x[rows, src], w))
        return jnp.concatenate(out, axis=1)


class ContinuumTransform(_OnAGrid):
    r"""The input spectra times a smooth positive continuum of each star.

    Per star :math:`n` and detector :math:`c`,
    :math:`C_{nc}(\lambda) = \sum_{k=0}^{\text{degree}} a_{nck}\,T_k(u)` with
    :math:`T_k` the Chebyshev polynomials and :math:`u \in [-1, 1]` the position
    across the detector. The output is linear in the coefficients ``coeffs``
    ``(n_stars, n_detectors × (degree + 1))`` (detector-major).

    Parameters
    ----------
    wavelength
        The pixel grid, increasing; detectors are split at gaps.
    degree
        Degree of each detector's Chebyshev series (default 2).
    param_priors
        ``{"coeffs": prior}``; default ``Normal(1, 1)`` on each detector's
        constant term and ``Normal(0, 1)`` on the others (a flat continuum of 1 to
        start from: scale the data so that its continuum is of order one).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> t = ContinuumTransform(jnp.linspace(15000.0, 15100.0, 20), degree=1)
    >>> t.param_shapes(input_size=20, n_stars=3)
    {'coeffs': (3, 2)}
    >>> out = t.apply(jnp.ones((1, 20)), coeffs=jnp.array([[2.0, 0.5]]))
    >>> [round(float(out[0, 0]), 6), round(float(out[0, -1]), 6)]
    [1.5, 2.5]
    """

    degree: int = eqx.field(static=True)
    n_coeffs: int = eqx.field(static=True)
    basis: Float[Array, "d c"]  # T_k(u) of each pixel, in its detector's columns

    def __init__(
        self,
        wavelength: ArrayLike,
        degree: int = 2,
        param_priors: Mapping[str, dist.Distribution] | None = None,
    ):
        wave, chips = self._set_grid(wavelength)
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
            msg = f"ContinuumTransform(degree=...): expected an int, got {degree!r}"
            raise TypeError(msg)
        if not 0 <= degree <= 10:
            msg = f"ContinuumTransform(degree=...): expected 0 to 10, got {degree}"
            raise ValueError(msg)
        self.degree = int(degree)
        m = self.degree + 1
        basis = np.zeros((wave.size, len(chips) * m))
        for c, chip in enumerate(chips):
            lo, hi = wave[chip.start], wave[chip.stop - 1]
            u = 2 * (wave[chip] - lo) / max(hi - lo, 1e-300) - 1
            basis[chip, c * m : (c + 1) * m] = np.polynomial.chebyshev.chebvander(
                u, self.degree
            )
        self.basis = jnp.asarray(basis)
        self.n_coeffs = basis.shape[1]
        super().__init__(wave.size, param_priors)

    def param_shape_specs(self) -> dict[str, ShapeSpec]:
        return {"coeffs": ("n_stars", self.n_coeffs)}

    def _default_priors(self) -> dict[str, dist.Distribution]:
        m = self.degree + 1
        loc = np.tile(np.eye(1, m)[0], self.n_coeffs // m)
        return {"coeffs": dist.Normal(jnp.asarray(loc), 1.0)}

    def continuum(self, coeffs: Float[Array, "n c"]) -> Float[Array, "n d"]:
        """Each star's continuum on the grid."""
        return coeffs @ self.basis.astype(coeffs.dtype).T

    def apply(self, latents: Float[Array, "n d"], **params: Array) -> Array:
        return latents * self.continuum(jnp.asarray(params["coeffs"], latents.dtype))
