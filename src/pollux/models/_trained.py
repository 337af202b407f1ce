"""`TrainedModel`: a restored model that labels new stars in physical units, and
the `Labels` it returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._params import SCATTER
from ..data import AbstractPreprocessor, OutputData, PolluxData
from ..fit import FitResult, LatentPosterior
from ..fit.checks import observed_count
from .cannon import CannonModel
from .lux import LuxModel

__all__ = ["FLAGS", "Labels", "TrainedModel"]

#: Bits of `Labels.flags`, with the reason written into `Labels.reasons`.
FLAGS = {
    "no_data": 1,  # no usable value in the given outputs: predictions are NaN
    "multimodal": 2,  # the latent posterior has a rival mode
    "out_of_range": 4,  # a prediction outside the training data's range
    "high_chi2": 8,  # reduced chi-squared of the given outputs above the limit
    "not_finite": 16,  # the computation gave a non-finite value: predictions are NaN
    "many_outliers": 32,  # clip left out more than 5% of the star's values
}


@dataclasses.dataclass(frozen=True)
class Labels:
    """Outputs predicted for new stars by `TrainedModel.label`, in physical units.

    Attributes
    ----------
    predictions
        `PolluxData`: each predicted output's values (``data``) and standard
        deviations (``err``), in physical units. NaN only in flagged rows.
    posterior
        The latent posterior of each star (None for a `CannonModel`).
    reduced_chi2
        ``Σ (y − f(z̄))² / (σ² + s²) / (n − K)`` over the given outputs' observed
        values, at the posterior mean ``z̄`` (NaN where nothing was observed).
    n_observed
        Number of observed values used per star.
    n_clipped
        Number of values left out as outliers per star (``clip``).
    flags
        Bitmask of `FLAGS` per star; ``reasons`` spells them out (``""`` if none).
    """

    predictions: PolluxData
    posterior: LatentPosterior | None
    reduced_chi2: np.ndarray
    n_observed: np.ndarray
    flags: np.ndarray
    reasons: tuple[str, ...]
    columns: Mapping[str, tuple[str, ...]]
    n_clipped: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.flags)

    def table(self) -> dict[str, np.ndarray]:
        """Columns of a results table: each predicted value and its ``_ERR``, then
        ``REDUCED_CHI2``, ``N_OBSERVED``, ``N_CLIPPED``, ``FLAG`` and
        ``FLAG_REASON``."""
        cols: dict[str, np.ndarray] = {}
        for name, out in self.predictions.items():
            names = self.columns.get(name) or [
                f"{name.upper()}_{i}" for i in range(out.size)
            ]
            for i, col in enumerate(names):
                cols[col] = np.asarray(out.data[:, i])
                cols[f"{col}_ERR"] = np.asarray(out.err[:, i])
        cols["REDUCED_CHI2"] = self.reduced_chi2
        cols["N_OBSERVED"] = self.n_observed
        if self.n_clipped is not None:
            cols["N_CLIPPED"] = self.n_clipped
        cols["FLAG"] = self.flags
        cols["FLAG_REASON"] = np.asarray(self.reasons, dtype=str)
        return cols


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A model restored by `load`: ``model``, ``result`` and what maps units.

    Attributes
    ----------
    model
        The `LuxModel` (or `CannonModel`).
    result
        Its `FitResult` (calibration included).
    preprocessors
        ``{output: preprocessor}`` between physical and model units (empty when
        the model was saved without ``data``).
    columns, wavelength, ranges
        Names of each output's dimensions; wavelength grids of spectral outputs;
        ``{output: {"min": ..., "max": ...}}`` of the training data.
    info
        ``format_version``, ``pollux_version``, ``created`` and ``x64`` (fit in
        double precision) of the file.
    """

    model: LuxModel | CannonModel
    result: FitResult
    preprocessors: Mapping[str, AbstractPreprocessor]
    columns: Mapping[str, tuple[str, ...]]
    wavelength: Mapping[str, np.ndarray]
    ranges: Mapping[str, Mapping[str, np.ndarray]]
    info: Mapping[str, Any]

    @property
    def lux(self) -> LuxModel:
        """The underlying `LuxModel`."""
        return self.model.model if isinstance(self.model, CannonModel) else self.model

    @property
    def fitted(self) -> tuple[str, ...]:
        """Outputs with fitted parameters, in registration order."""
        return tuple(k for k in self.lux.outputs if k in self.result.params)

    def data(self, **outputs: Any) -> PolluxData:
        """New stars' observations (physical units) with the stored preprocessors.

        Each keyword is an output name with an `OutputData`, a ``(values, err)``
        pair or an array of values.
        """
        call = "TrainedModel.data"
        if not outputs:
            msg = f"{call}(): give at least one output, e.g. flux=(flux, flux_err)"
            raise ValueError(msg)
        built = {}
        for name, value in outputs.items():
            if name not in self.lux.outputs:
                msg = (
                    f"{call}({name}=...): not an output of the model (outputs: "
                    f"{list(self.lux.outputs)})"
                )
                raise ValueError(msg)
            if name not in self.preprocessors:
                msg = (
                    f"{call}({name}=...): the model file stores no preprocessor for "
                    f"{name!r} (it was saved without data=...); give model-unit "
                    "data to model.infer_latents instead"
                )
                raise ValueError(msg)
            if isinstance(value, OutputData):
                if value.preprocessed:
                    msg = f"{call}({name}=...): give physical units, not preprocessed"
                    raise ValueError(msg)
                value = (value.data, value.err)
            if isinstance(value, tuple) and len(value) != 2:
                msg = f"{call}({name}=...): expected (values, err), a pair"
                raise ValueError(msg)
            values, err = value if isinstance(value, tuple) else (value, None)
            built[name] = OutputData(
                values, err=err, preprocessor=self.preprocessors[name]
            )
        return PolluxData(**built)

    def label(
        self,
        data: PolluxData | Mapping[str, Any],
        *,
        given: str | Iterable[str] | None = None,
        names: str | Iterable[str] | None = None,
        extra_err: Mapping[str, float] | None = None,
        clip: float | None = None,
        chi2_limit: float = 3.0,
    ) -> Labels:
        """Predict outputs (e.g. labels) of new stars from others (e.g. flux).

        Parameters
        ----------
        data
            Observations in physical units: a `PolluxData` (its preprocessors are
            replaced by the stored ones) or a dict for `TrainedModel.data`.
        given
            Outputs to infer the latents from (default: those in ``data``).
        names
            Outputs to predict (default: the fitted outputs not given).
        extra_err
            ``{output: sigma}``: a systematic error (physical units) added in
            quadrature to the errors of given outputs, e.g. ``{"flux": 0.005}``
            for real spectra that the training spectra imitate only to that
            precision (the learned scatter ``s`` knows the training data only).
        clip
            Leave out values of the given outputs more than ``clip`` standard
            deviations from the model (e.g. sky-line residuals and cosmic rays in
            real spectra, which training spectra lack) and infer again, up to three
            times; ``Labels.n_clipped`` counts them. None (default): keep every value.
        chi2_limit
            Reduced chi-squared above which a star is flagged ``high_chi2``.

        Returns
        -------
        Labels
            Predictions in physical units, fit quality and flags per star.
        """
        data, given, names = self._label_args(
            data, given, names, extra_err, clip, chi2_limit
        )
        pred, posterior, resid, n_clipped = self._infer_clipped(
            data.preprocess(), given, names, clip
        )
        reduced, n_obs, flags = self._fit_quality(
            resid, n_clipped, posterior, chi2_limit
        )
        out = self._physical(pred, names, n_obs, flags)
        reasons = tuple(
            ",".join(k for k, bit in FLAGS.items() if f & bit) for f in flags.tolist()
        )
        return Labels(
            predictions=PolluxData(**out),
            posterior=posterior,
            reduced_chi2=reduced,
            n_observed=n_obs,
            flags=flags,
            reasons=reasons,
            columns=dict(self.columns),
            n_clipped=n_clipped,
        )

    def _label_args(self, data, given, names, extra_err, clip, chi2_limit):
        """`label`'s arguments checked: the data with the stored preprocessors
        (and ``extra_err``), the given outputs and those to predict."""
        call = "TrainedModel.label"
        if isinstance(data, PolluxData):
            data = self.data(**{k: v for k, v in data.items() if k in self.lux.outputs})
        elif isinstance(data, Mapping):
            data = self.data(**data)
        else:
            msg = f"{call}(data=...): expected a PolluxData or a dict of outputs"
            raise TypeError(msg)
        given = _names(given, data.names, call, "given", self.fitted)
        missing = [g for g in given if g not in data.names]
        if missing:
            msg = f"{call}(given=...): {missing} not in the data {list(data.names)}"
            raise ValueError(msg)
        if len(data) == 0:
            msg = f"{call}(data=...): no stars to label"
            raise ValueError(msg)
        if isinstance(chi2_limit, bool) or not isinstance(chi2_limit, (int, float)):
            msg = f"{call}(chi2_limit=...): expected a number, got {chi2_limit!r}"
            raise TypeError(msg)
        if not (np.isfinite(chi2_limit) and chi2_limit > 0):
            msg = f"{call}(chi2_limit=...): expected a finite number > 0"
            raise ValueError(msg)
        data = _with_extra_err(data, extra_err, given, call)
        default = [k for k in self.fitted if k not in given]
        names = _names(names, default, call, "names", self.fitted)
        if not names:
            msg = f"{call}: nothing to predict: every fitted output is given"
            raise ValueError(msg)
        if clip is not None and (
            isinstance(clip, bool)
            or not isinstance(clip, (int, float))
            or not (np.isfinite(clip) and clip > 0)
        ):
            msg = (
                f"{call}(clip=...): expected None or a finite number > 0, got {clip!r}"
            )
            raise ValueError(msg)
        if isinstance(self.model, CannonModel) and (
            list(given) != [self.model.flux] or list(names) != [self.model.label]
        ):
            msg = (
                f"{call}: a CannonModel predicts {self.model.label!r} from "
                f"{self.model.flux!r} only"
            )
            raise ValueError(msg)
        return data, given, names

    def _infer_clipped(self, pre: PolluxData, given, names, clip):
        """Predictions, posterior and normalised residuals of the given outputs,
        inferring again without the values beyond ``clip`` (up to three times);
        with the number of values left out per star."""
        n_clipped = np.zeros(len(pre), dtype=np.int64)
        for _ in range(4 if clip else 1):
            pred, posterior, z = self._infer(pre, given, names)
            resid = self._residuals(pre, given, z)
            if not clip:
                break
            outliers = {k: np.abs(np.nan_to_num(r)) > clip for k, r in resid.items()}
            new = sum(o.sum(1) for o in outliers.values())
            if not np.any(new):
                break
            n_clipped += new
            pre = PolluxData(
                **{
                    k: v._replace(data=jnp.where(outliers[k], jnp.nan, v.data))
                    if k in outliers
                    else v
                    for k, v in pre.items()
                }
            )
        return pred, posterior, resid, n_clipped

    def _fit_quality(self, resid, n_clipped, posterior, chi2_limit):
        """Reduced χ² of the given outputs, their observed count and the flags
        of each star that the fit quality sets."""
        chi2 = sum(_chi2(r) for r in resid.values())
        n_obs = sum(np.isfinite(r).sum(1) for r in resid.values())
        k = self.lux.latent_size
        reduced = np.where(n_obs > 0, chi2 / np.maximum(n_obs - k, 1), np.nan)
        flags = np.zeros(len(n_clipped), dtype=np.int32)
        flags |= _bits(n_obs == 0, "no_data")
        flags |= _bits(reduced > chi2_limit, "high_chi2")
        flags |= _bits(n_clipped > 0.05 * (n_obs + n_clipped), "many_outliers")
        if posterior is not None and posterior.multimodal is not None:
            multi = np.asarray(posterior.multimodal)
            flags |= _bits(multi, "multimodal")
        return reduced, n_obs, flags

    def _physical(self, pred: PolluxData, names, n_obs, flags) -> dict[str, OutputData]:
        """Predictions in physical units; ``flags`` gains ``not_finite`` and
        ``out_of_range`` (in place)."""
        out = {}
        for name in names:
            p = pred[name]
            pre_fn = self.preprocessors.get(name)
            values = np.asarray(
                p.data if pre_fn is None else pre_fn.inverse_transform(p.data)
            )
            err = np.asarray(
                p.err if pre_fn is None else pre_fn.inverse_transform_err(p.err)
            )
            failed = ~(np.isfinite(values).all(1) & np.isfinite(err).all(1))
            flags |= _bits(failed & (n_obs > 0), "not_finite")
            ok = (n_obs > 0) & ~failed
            values = np.where(ok[:, None], values, np.nan)
            err = np.where(ok[:, None], err, np.inf)
            rng = self.ranges.get(name)
            if rng is not None:
                outside = (values < rng["min"]) | (values > rng["max"])
                flags |= _bits(outside.any(1), "out_of_range")
            out[name] = OutputData(values, err=err)
        return out

    def _infer(self, pre: PolluxData, given: Sequence[str], names: Sequence[str]):
        """(predictions in model units, latent posterior or None, latents)."""
        if isinstance(self.model, CannonModel):
            pred = self.model.predict(pre, self.result)
            return pred, None, pred[self.model.label].data
        params = self.result.params
        if any(observed_count(pre[name]) for name in given):
            posterior = self.lux.infer_latents(pre, params, names=given)
        else:  # nothing to infer from: the prior (every row is flagged no_data)
            n, k = len(pre), self.lux.latent_size
            dtype = jnp.result_type(pre[given[0]].data.dtype, jnp.float32)
            posterior = LatentPosterior(
                jnp.zeros((n, k), dtype),
                jnp.broadcast_to(jnp.eye(k, dtype=dtype), (n, k, k)),
            )
        pred = self.lux.predict(
            posterior, params, names=names, param_cov=self.result.param_cov
        )
        return pred, posterior, posterior.mean

    def _residuals(
        self, pre: PolluxData, given: Sequence[str], z: Any
    ) -> dict[str, np.ndarray]:
        """``(y − f(z)) / sqrt(σ² + s²)`` of each given output, NaN where unobserved,
        in the data's float precision (at least float32), computed in place."""
        params = self.result.params
        model_values = self.lux.predict_outputs(z, params, names=list(given))
        out = {}
        for name in given:
            y = np.asarray(pre[name].data)
            dtype = np.result_type(y.dtype, np.float32)
            resid = np.array(y, dtype=dtype)
            resid -= np.asarray(model_values[name], dtype=dtype)
            err = pre[name].err
            s2 = np.square(np.asarray(params[name].get(SCATTER, 0.0), dtype=dtype))
            if err is None:
                sd = np.broadcast_to(s2, y.shape).copy()
            else:
                sd = np.square(np.asarray(err, dtype=dtype))
                sd += s2
            bad = ~(np.isfinite(resid) & np.isfinite(sd) & (sd > 0))
            np.sqrt(sd, out=sd)
            sd[bad] = 1.0
            resid /= sd
            resid[bad] = np.nan
            out[name] = resid
        return out


def _chi2(resid: np.ndarray) -> np.ndarray:
    """``Σ r²`` of each row over its finite entries, accumulated in float64."""
    sq = np.square(resid)
    np.nan_to_num(sq, copy=False, nan=0.0)
    return sq.sum(axis=1, dtype=np.float64)


def _bits(mask: Any, name: str) -> np.ndarray:
    """``FLAGS[name]`` where ``mask`` holds, else 0 (int32)."""
    return np.where(mask, FLAGS[name], 0).astype(np.int32)


def _with_extra_err(
    data: PolluxData, extra_err: Any, given: Sequence[str], call: str
) -> PolluxData:
    if extra_err is None:
        return data
    if not isinstance(extra_err, Mapping):
        msg = f"{call}(extra_err=...): expected a dict like {{'flux': 0.005}}"
        raise TypeError(msg)
    outputs = dict(data.items())
    for name, sigma in extra_err.items():
        if name not in given:
            msg = f"{call}(extra_err=...): {name!r} is not a given output {list(given)}"
            raise ValueError(msg)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            msg = f"{call}(extra_err=...): {name!r} needs a number, got {sigma!r}"
            raise TypeError(msg)
        if not (np.isfinite(sigma) and sigma >= 0):
            msg = f"{call}(extra_err=...): {name!r} needs a finite sigma >= 0, got {sigma}"
            raise ValueError(msg)
        out = outputs[name]
        err = np.zeros(out.shape) if out.err is None else np.asarray(out.err)
        outputs[name] = OutputData(
            out.data, err=np.sqrt(err**2 + sigma**2), preprocessor=out.preprocessor
        )
    return PolluxData(**outputs)


def _names(
    value: Any, default: Sequence[str], call: str, arg: str, fitted: Sequence[str]
) -> list[str]:
    if value is None:
        names = [k for k in default if k in fitted]
    else:
        names = [value] if isinstance(value, str) else list(value)
    bad = [k for k in names if k not in fitted]
    if bad or (value is not None and not names):
        msg = (
            f"{call}({arg}=...): expected outputs the model was fitted to "
            f"{list(fitted)}, got {names}"
        )
        raise ValueError(msg)
    return names
