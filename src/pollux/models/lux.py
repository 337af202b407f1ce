"""`LuxModel`: a registry of outputs over a shared latent space, and its fitting API."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._params import (
    RESERVED,
    SCATTER,
    check_positive_int,
    names_with_params,
    without_latents,
)
from ..data import PolluxData
from ..fit import (
    FitResult,
    LatentPosterior,
    calibrate,
    fit_em,
    infer_latents,
    optimize_map,
    predict,
)
from ..fit.checks import check_latents_shape, check_params, resolve_names
from ..transforms import AbstractTransform
from ._save import save_model

__all__ = ["LuxModel"]


class LuxModel:
    r"""A Lux model: every output is a transform of each star's latent vector.

    .. math::

        y_{no} \sim \mathcal{N}\big(f_o(z_n; \theta_o),\ \sigma_{no}^2 + s_o^2\big),
        \qquad z_n \sim \mathcal{N}(0, I_K)

    Parameters
    ----------
    latent_size
        Dimension ``K`` of the latent vector of each star.

    Examples
    --------
    >>> import numpy as np
    >>> import pollux as plx
    >>> from pollux.models.transforms import LinearTransform
    >>> obs, truth = plx.datasets.make_simulated_linear_data(
    ...     n_stars=200, n_latents=2, n_labels=2, n_flux=16, rng=0)
    >>> data = plx.data.PolluxData(
    ...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
    ...     label=plx.data.OutputData(obs["label"], err=obs["label_err"]))
    >>> model = plx.LuxModel(latent_size=2)
    >>> model.register_output("flux", LinearTransform(output_size=16))
    >>> model.register_output("label", LinearTransform(output_size=2))
    >>> result = model.fit(data[:150], progress=False)
    >>> post = model.infer_latents(data[150:], result.params, names=["flux"])
    >>> pred = model.predict(post, result.params, names=["label"])
    >>> pred["label"].shape
    (50, 2)
    """

    def __init__(self, latent_size: int):
        self.latent_size = check_positive_int(latent_size, "LuxModel(latent_size=...)")
        self._outputs: dict[str, AbstractTransform] = {}

    @property
    def outputs(self) -> Mapping[str, AbstractTransform]:
        """Registered outputs: name -> transform (read-only view)."""
        return dict(self._outputs)

    def __repr__(self) -> str:
        outs = ", ".join(f"{k}: {type(v).__name__}" for k, v in self._outputs.items())
        return f"LuxModel(latent_size={self.latent_size}, outputs={{{outs}}})"

    def register_output(self, name: str, transform: AbstractTransform) -> None:
        """Add an output generated from the latents by ``transform``."""
        if not isinstance(name, str) or not name or ":" in name:
            msg = (
                "LuxModel.register_output(name=...): expected a non-empty string "
                f"without ':', got {name!r}"
            )
            raise ValueError(msg)
        if name in RESERVED:
            msg = f"LuxModel.register_output(name=...): {name!r} is reserved"
            raise ValueError(msg)
        if name in self._outputs:
            msg = f"LuxModel.register_output(): output {name!r} is already registered"
            raise ValueError(msg)
        if not isinstance(transform, AbstractTransform):
            msg = (
                "LuxModel.register_output(transform=...): expected a transform such "
                f"as LinearTransform, got {type(transform).__name__}"
            )
            raise TypeError(msg)
        transform.check_input_size(self.latent_size)
        self._outputs[name] = transform

    def definition(self) -> dict[str, Any]:
        """What a model file stores of this model: its kind, latent size and
        outputs (`pollux.io`)."""
        return {
            "kind": "LuxModel",
            "latent_size": self.latent_size,
            "outputs": self.outputs,
        }

    # Prediction ---------------------------------------------------------------
    def predict_outputs(
        self,
        latents: Float[ArrayLike, "n_stars k"],
        params: Mapping[str, Any],
        names: str | Iterable[str] | None = None,
    ) -> dict[str, Float[Array, "n_stars n_dim"]]:
        """Evaluate the transforms at given latents (model units).

        ``names=None`` predicts every output that has parameters in ``params``.
        """
        call = "LuxModel.predict_outputs"
        z = jnp.asarray(latents)
        check_latents_shape(self, z, None, f"{call}(latents=...)")
        if names is None:
            names = names_with_params(self._outputs, params, call)
        names = resolve_names(self, names, call)
        n = z.shape[0]
        checked = check_params(
            self, without_latents(params), n, call, "params", required=names
        )
        out = {}
        for name in names:
            p = {k: v for k, v in checked[name].items() if k != SCATTER}
            out[name] = self._outputs[name].apply(z, **p)
        return out

    # Fitting ------------------------------------------------------------------
    def optimize(
        self,
        data: PolluxData,
        num_steps: int,
        rng_key: Any,
        optimizer: Any = None,
        fixed_params: Mapping[str, Any] | None = None,
        names: str | Iterable[str] | None = None,
        latent_prior: Any = None,
        svi_run_kwargs: dict | None = None,
        custom_model: Callable[[Any, dict, PolluxData], None] | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Maximum a posteriori fit with numpyro (AutoDelta guide, SVI).

        Parameters
        ----------
        data
            Preprocessed `PolluxData`.
        num_steps
            Optimiser steps.
        rng_key
            ``jax.random.PRNGKey``.
        optimizer
            A ``numpyro.optim`` optimiser; default ``Adam(1e-3)``.
        fixed_params
            Parameters to hold fixed, nested like the result (e.g. the trained
            transforms, to fit only new stars' latents).
        names
            Outputs to use in the likelihood (default: all registered ones the data
            holds), e.g. ``["flux"]`` to infer latents from spectra alone.
        latent_prior
            A distribution for the latents, None (unit Normal) or False (flat).
        svi_run_kwargs
            Passed to ``numpyro.infer.SVI.run`` (e.g. ``{"progress_bar": False}``).
        custom_model
            ``custom_model(latents, params, data)``, called inside the numpyro
            model after the outputs' likelihoods, with this draw's latents
            ``(N, K)``, parameters ``{output: {param: value}}`` and ``data``: it
            may add ``numpyro.sample`` sites and ``numpyro.factor`` terms of its
            own (the same hook as upstream pollux 0.1.0). Its sites are fitted
            with the rest and returned at the top level of ``params``.

        Returns
        -------
        params, svi_result
            ``{output: {param: array}, "latents": (N, K)}`` (fixed ones included,
            and the sites of ``custom_model``) and numpyro's ``SVIRunResult``
            (``.losses``).

        Examples
        --------
        A zero point ``c`` shared by all stars, learned from an extra measurement
        ``m = z₀ + c`` of each star (here with the latents held fixed):

        >>> import jax, numpy as np, numpyro, numpyro.distributions as dist
        >>> import pollux as plx
        >>> from pollux.models.transforms import LinearTransform
        >>> obs, truth = plx.datasets.make_simulated_linear_data(
        ...     n_stars=50, n_latents=2, n_labels=2, n_flux=8, rng=0)
        >>> data = plx.data.PolluxData(
        ...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]))
        >>> model = plx.LuxModel(latent_size=2)
        >>> model.register_output("flux", LinearTransform(output_size=8))
        >>> z = truth["latents"]
        >>> m = z[:, 0] + 3.0
        >>> def zero_point(latents, params, data):
        ...     c = numpyro.sample("c", dist.Normal(0.0, 10.0))
        ...     numpyro.factor("m", dist.Normal(latents[:, 0] + c, 0.1).log_prob(m).sum())
        >>> params, _ = model.optimize(
        ...     data, 2000, jax.random.PRNGKey(0), numpyro.optim.Adam(0.05),
        ...     fixed_params={"latents": z}, custom_model=zero_point,
        ...     svi_run_kwargs={"progress_bar": False})
        >>> round(float(params["c"]), 2)
        3.0
        """
        return optimize_map(
            self,
            data,
            num_steps,
            rng_key,
            optimizer=optimizer,
            fixed_params=fixed_params,
            names=names,
            latent_prior=latent_prior,
            svi_run_kwargs=svi_run_kwargs,
            custom_model=custom_model,
        )

    def fit(
        self,
        data: PolluxData,
        *,
        fixed_params: Mapping[str, Any] | None = None,
        names: str | Iterable[str] | None = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        progress: bool = True,
        accelerate: bool = True,
        chunk_size: int | None = None,
        devices: int | Sequence[jax.Device] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        start: FitResult | None = None,
    ) -> FitResult:
        """EM fit with the latents marginalised, for outputs polynomial in them.

        Affine outputs only (`LinearTransform`, `AffineTransform`): exact EM on
        the marginal likelihood. With a `QuadraticTransform` output: variational EM
        (each star's latents get a Gaussian posterior; the objective is the
        negative evidence lower bound), started from the converged fit with
        ``Q = 0``; quadratic outputs need ``latent_size <= 10``.

        Parameters
        ----------
        data
            Preprocessed `PolluxData`.
        fixed_params
            Parameters held fixed (e.g. trained transforms; or ``"latents"``).
        names
            Outputs used (default: all registered ones the data holds).
        max_iter, tol
            Stop after ``max_iter`` iterations, or once one iteration lowers the
            objective by at most ``tol`` per observed value (the default stops
            when predictions have settled; slow drift along near-flat directions,
            such as rotations of the latent space, does not change them).
        progress
            Show a progress bar.
        accelerate
            Use SQUAREM cycles (three EM sweeps with a safeguarded extrapolation,
            counted as one iteration) instead of plain EM sweeps.
        chunk_size
            Stars per chunk of the data passes (None: chosen so that a chunk's
            intermediates take about 512 MB). Peak memory is the data plus
            O(chunk_size × D + D × M²) (M: features per output); results do not
            depend on it beyond float rounding.
        devices
            Split the stars over this many JAX devices (the first of
            `jax.devices`), or over these devices (None: the default device).
            Each device sweeps over its own stars; only the O(D × M²) sums of each
            sweep are combined, and the result is the one-device result up to
            float rounding.
        checkpoint, checkpoint_every
            Affine fits: save the parameters to this ``.npz`` file every
            ``checkpoint_every`` iterations and at the end; a fit called with an
            existing file resumes from it (and reaches what the uninterrupted
            fit would have). A file written by a different fit is refused.
        start
            Fits with a `QuadraticTransform` output: start the variational EM
            from this `FitResult` of the same stars (e.g. a fit of the flux
            alone, ``names=["flux"]``) instead of from the affine fit: its
            outputs' parameters and latent posterior, the other outputs regressed
            on its latents. `calibrate` and the folds of `pollux.validation`
            start every fold from one flux-only fit of all the stars this way
            (no held-out label enters it); near the optimum a fit then takes a
            third of the cycles.

        Data held in Dask arrays (`OutputData` of Dask arrays, ``devices=None``)
        are fitted chunk by chunk where Dask keeps them: on the workers of the
        default `dask.distributed` client if there is one (each worker sums its
        own chunks; per pass only the O(D × K²) sums and the parameters cross
        the network, the spectra never; a quadratic fit's workers also keep
        their stars' posteriors), else with Dask's local scheduler; the
        posterior of the training stars is returned in memory. The result is
        the in-memory one up to float rounding. With ``devices=`` Dask arrays
        are read into memory.

        Returns
        -------
        FitResult
            ``params`` (same layout as `optimize`), ``posterior``, ``losses``,
            ``n_iter``, ``converged``.
        """
        return fit_em(
            self,
            data,
            fixed_params=fixed_params,
            names=names,
            max_iter=max_iter,
            tol=tol,
            progress=progress,
            accelerate=accelerate,
            chunk_size=chunk_size,
            devices=devices,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            start=start,
        )

    def infer_latents(
        self,
        data: PolluxData,
        params: Mapping[str, Any],
        names: str | Iterable[str] | None = None,
        *,
        chunk_size: int | None = None,
        devices: int | Sequence[jax.Device] | None = None,
    ) -> LatentPosterior:
        """Gaussian posterior of each star's latents given fixed parameters.

        Exact for affine outputs. With a quadratic output: the best of several
        Gauss–Newton starts, refined to the Gaussian closest to the posterior
        (variational); ``multimodal`` flags stars with a rival mode.

        Returns a `LatentPosterior` with ``mean`` (N, K) and ``cov`` (N, K, K).
        ``chunk_size`` and ``devices`` (affine outputs): as in `fit`.
        """
        return infer_latents(self, data, params, names, chunk_size, devices)

    def predict(
        self,
        posterior: LatentPosterior,
        params: Mapping[str, Any],
        names: str | Iterable[str] | None = None,
        param_cov: Mapping[str, Any] | None = None,
        *,
        chunk_size: int | None = None,
        devices: int | Sequence[jax.Device] | None = None,
    ) -> PolluxData:
        """Predictive mean (``data``) and standard deviation (``err``) of outputs.

        The latent covariance is propagated and the output's ``s`` added in
        quadrature; with ``param_cov`` (`FitResult.param_cov`) the uncertainty of
        the trained transforms too:
        ``var_nd = W_d Σ_n W_dᵀ + s_d² + E[z̃_n]ᵀ C_d E[z̃_n] + tr(C_d Σ̃_n)``.
        Values are in model units: ``test.unprocess(pred)`` gives physical values
        with errors. ``chunk_size`` and ``devices`` (affine outputs): as in `fit`.
        """
        return predict(self, posterior, params, names, param_cov, chunk_size, devices)

    def save(
        self,
        path: Any,
        result: FitResult,
        *,
        data: PolluxData | None = None,
        columns: Mapping[str, Any] | None = None,
        wavelength: Any = None,
        overwrite: bool = False,
    ) -> Any:
        """Write this model and its fit ``result`` to a model file; `pollux.load`
        reads it back. See `pollux.models.trained.save_model` for the arguments."""
        return save_model(
            self,
            path,
            result,
            data=data,
            columns=columns,
            wavelength=wavelength,
            overwrite=overwrite,
        )

    def calibrate(
        self,
        data: PolluxData,
        result: FitResult,
        *,
        given: str | Iterable[str] = ("flux",),
        folds: int = 5,
        seed: int = 0,
        progress: bool = True,
        support: float = 0.0,
    ) -> FitResult:
        """Re-estimate the extra scatter ``s`` of the predicted outputs from held-out,
        ``given``-only predictions (k-fold cross-validation on the training set).

        The scatter ``s`` of, say, the labels is learned jointly with the flux: the
        training stars' latents saw their labels, so ``s`` measures how well the
        model reproduces labels it was shown, not how well it predicts them from
        the flux alone. Errors of the flux model are correlated across pixels and
        do not average out, so labels predicted from flux are less accurate than
        that, and their z-scores too wide. ``calibrate`` measures the error the
        way the model will be used: the stars of ``data`` are split into
        ``folds`` (a seeded permutation); for each fold the model is refit *from
        scratch* on the other folds (with the settings of ``result``: no warm
        start, which would leak the held-out labels), the held-out stars' latents
        are inferred from the ``given`` outputs alone, and the other outputs are
        predicted (with ``param_cov``, without ``s``: predictive variance
        ``v_model``). For each predicted output the held-out log likelihood
        ``ℓ(s) = Σ log N(pred − observed; 0, v_model + err² + s²)`` over all
        held-out stars and observed values is maximised at ``s_ml`` (one value
        per dimension if the output's ``s`` is a vector, one value if it is a
        scalar), and the new ``s`` is ``s_ml``. With ``support > 0`` the new
        ``s`` is instead the fitted one moved only as far as the data demand:
        the point nearest to it of the interval ``ℓ(s) ≥ ℓ(s_ml) − support²/2``
        (about ±``support`` standard errors of ``s²``), i.e. the fitted ``s``
        itself when the held-out data cannot reject it. That suits a fitted
        ``s`` believed right; the jointly learned ``s`` is usually too small
        for flux-only predictions, and stopping at the interval's end then
        leaves the errors too small where ``s`` is poorly measured.

        Parameters
        ----------
        data
            Preprocessed `PolluxData` of the training stars, holding the ``given``
            and the predicted outputs (normally the data ``result`` was fit to).
        result
            A `FitResult` of `LuxModel.fit` on this model, without fixed
            parameters. Its fitted outputs that are not ``given`` are calibrated;
            each must declare an extra scatter (``param_priors={"s": ...}``).
        given
            The outputs new stars will be labelled from (default ``("flux",)``).
        folds
            Number of folds, an int from 2 to the number of stars. More folds train
            each refit on more stars (closer to the final model) but cost more fits.
        seed
            Seed of the permutation that splits the stars.
        progress
            Show a progress bar over the folds.
        support
            Half-width of the supported interval in standard errors; 0 (the
            default) gives the maximum-likelihood ``s_ml``.

        Returns
        -------
        FitResult
            ``result`` with only ``params[target]["s"]`` replaced by the calibrated
            values (``result`` itself is unchanged) and ``calibration[target]``
            recording ``s_fit`` (the old ``s``), ``s`` (the new one), ``s_ml``,
            the supported interval ``s_lo`` … ``s_hi`` and its ``support``,
            ``s2_se`` (Fisher standard error of ``s²`` at ``s_ml``: the
            calibration's own precision), ``given``, ``folds``, ``seed``,
            ``n_stars`` (held-out stars with observed values) and
            ``z_std_before`` / ``z_std_after`` (spread of the held-out z-scores,
            against the observed values with their errors in quadrature, with the
            old and new ``s``). Use it as before:
            ``infer_latents(test, cal.params, names=["flux"])`` then
            ``predict(post, cal.params, names=["label"], param_cov=cal.param_cov)``.

        Raises
        ------
        TypeError, ValueError
            Before any fitting, for a wrong argument: ``data`` not a `PolluxData`
            or lacking an output, ``given`` empty or not registered, ``folds`` not
            an int in [2, n_stars], ``result`` without settings or fit with fixed
            parameters, a predicted output without an extra scatter ``s``.

        Examples
        --------
        >>> import numpy as np
        >>> import numpyro.distributions as dist
        >>> import pollux as plx
        >>> from pollux.models.transforms import LinearTransform
        >>> obs, _ = plx.datasets.make_simulated_linear_data(
        ...     n_stars=60, n_latents=2, n_labels=2, n_flux=8, rng=0)
        >>> data = plx.data.PolluxData(
        ...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
        ...     label=plx.data.OutputData(obs["label"], err=obs["label_err"]))
        >>> model = plx.LuxModel(latent_size=2)
        >>> model.register_output("flux", LinearTransform(output_size=8))
        >>> model.register_output("label", LinearTransform(
        ...     output_size=2, param_priors={"s": dist.HalfNormal(1.0).expand((2,))}))
        >>> result = model.fit(data, progress=False)
        >>> cal = model.calibrate(data, result, folds=2, progress=False)
        >>> cal.params["label"]["s"].shape, sorted(cal.calibration)
        ((2,), ['label'])
        """
        return calibrate(
            self,
            data,
            result,
            given=given,
            folds=folds,
            seed=seed,
            progress=progress,
            support=support,
        )
