"""Held-out predictions: split the stars into folds, refit on the others from
scratch, predict each held-out fold from some outputs alone.

This is the machinery shared by `LuxModel.calibrate` (which turns the held-out
residuals into a new extra scatter ``s``) and `pollux.validation` (which scores
candidate models by them). It only calls the public `LuxModel.fit`,
`LuxModel.infer_latents` and `LuxModel.predict`, so it works for every transform
those handle.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .._params import LATENTS, SCATTER, check_nonnegative_int
from ..data import PolluxData
from .checks import resolve_names

if TYPE_CHECKING:
    from ._protocol import Model, RefittableModel
    from ._results import FitResult

__all__ = [
    "HeldOutPredictions",
    "check_folds",
    "check_given",
    "check_outputs_in_data",
    "check_seed",
    "fit_keywords",
    "fitted_names",
    "given_start",
    "held_out",
    "settings_keywords",
    "split_folds",
]


# ----------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------
def check_given(model: Model, given: Any, call: str) -> tuple[str, ...]:
    """``given`` as a tuple of registered output names (non-empty, no repeats)."""
    if given is None:  # unlike names=None, "all outputs" is no choice here
        msg = f"{call}(given=...): expected an output name or a list of names"
        raise TypeError(msg)
    return resolve_names(model, given, call, arg="given")


def targets_of(
    fitted: tuple[str, ...], given: tuple[str, ...], call: str
) -> tuple[str, ...]:
    """The fitted outputs not ``given`` (what is predicted), after checking that
    every given output is fitted and that something is left to predict."""
    for name in given:
        if name not in fitted:
            msg = (
                f"{call}(given=...): {name!r} is not among the fitted outputs "
                f"{list(fitted)}"
            )
            raise ValueError(msg)
    targets = tuple(n for n in fitted if n not in given)
    if not targets:
        msg = (
            f"{call}(given=...): every fitted output {list(fitted)} is given; "
            "nothing is left to predict"
        )
        raise ValueError(msg)
    return targets


def check_folds(
    folds: Any, n_stars: int, call: str, *, allow_fraction: bool = False
) -> int | float:
    """``folds``: an int in [2, n_stars] (k-fold), or with ``allow_fraction`` a
    float in (0, 1) (one split holding out that fraction of the stars)."""
    if allow_fraction and isinstance(folds, float):
        if not 0.0 < folds < 1.0:
            msg = (
                f"{call}(folds=...): a float means one split holding out that "
                f"fraction of the stars; expected 0 < folds < 1, got {folds}"
            )
            raise ValueError(msg)
        n_held = round(folds * n_stars)
        if not 1 <= n_held < n_stars:
            msg = (
                f"{call}(folds=...): holding out {folds} of {n_stars} stars leaves "
                f"{n_held} held-out and {n_stars - n_held} training stars; both must "
                "be at least 1"
            )
            raise ValueError(msg)
        return float(folds)
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral):
        expected = "an int >= 2" + (" or a float in (0, 1)" if allow_fraction else "")
        msg = f"{call}(folds=...): expected {expected}, got {folds!r}"
        raise TypeError(msg)
    if not 2 <= folds <= n_stars:
        msg = (
            f"{call}(folds=...): expected 2 <= folds <= the number of stars "
            f"({n_stars}), got {folds}"
        )
        raise ValueError(msg)
    return int(folds)


def check_seed(seed: Any, call: str) -> int:
    return check_nonnegative_int(seed, f"{call}(seed=...)")


def check_outputs_in_data(data: PolluxData, names: Iterable[str], call: str) -> None:
    for name in names:
        if name not in data:
            msg = (
                f"{call}(data=...): the data has no output {name!r} "
                f"(data has {list(data.names)})"
            )
            raise ValueError(msg)


# Keywords of LuxModel.fit that the held-out machinery sets itself.
_OWN_FIT_KEYWORDS = ("data", "progress", "start")  # set per fold here


def fit_keywords(model: Model, fit_kwargs: Any, call: str) -> dict[str, Any]:
    """``fit_kwargs`` checked against the signature of ``model.fit``.

    ``progress`` is set by the caller and ``fixed_params`` is refused: fixed
    latents belong to particular stars, and a held-out estimate should refit
    everything it will be used with.
    """
    if fit_kwargs is None:
        return {}
    if not isinstance(fit_kwargs, Mapping):
        msg = (
            f"{call}(fit_kwargs=...): expected a dict of LuxModel.fit keywords, "
            f"got {type(fit_kwargs).__name__}"
        )
        raise TypeError(msg)
    params = inspect.signature(model.fit).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = set(params) - {*_OWN_FIT_KEYWORDS, "fixed_params"}
    for key in fit_kwargs:
        if key == "fixed_params":
            msg = (
                f"{call}(fit_kwargs=...): 'fixed_params' is not supported; every "
                "refit starts from scratch on its own training stars"
            )
            raise ValueError(msg)
        if key in _OWN_FIT_KEYWORDS or not (open_ended or key in allowed):
            msg = (
                f"{call}(fit_kwargs=...): {key!r} is not a keyword of LuxModel.fit "
                f"that can be set here; allowed: {sorted(allowed)}"
            )
            raise ValueError(msg)
    return dict(fit_kwargs)


def settings_keywords(result: FitResult) -> dict[str, Any]:
    """The `LuxModel.fit` keywords recorded in ``result.settings`` (all of its
    entries but ``fixed``, the names of the fixed parameters)."""
    return {k: v for k, v in result.settings.items() if k != "fixed"}


# ----------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------
def split_folds(n_stars: int, folds: int | float, seed: int) -> list[np.ndarray]:
    """Held-out star indices of each fold (sorted), from a seeded permutation.

    ``folds`` an int: ``folds`` disjoint folds covering every star, sizes differing
    by at most one. A float: one fold holding out ``round(folds * n_stars)`` stars.

    >>> [f.tolist() for f in split_folds(5, 2, seed=0)]
    [[2, 3, 4], [0, 1]]
    """
    perm = np.random.default_rng(seed).permutation(n_stars)
    if isinstance(folds, float):
        return [np.sort(perm[: round(folds * n_stars)])]
    return [np.sort(part) for part in np.array_split(perm, folds)]


# ----------------------------------------------------------------------------------
# Held-out predictions
# ----------------------------------------------------------------------------------
class HeldOutPredictions(eqx.Module):
    """Predictions of held-out stars by models refit without them.

    Every array has one row per held-out star, in the order of ``index`` (their
    rows in the data; all stars, in order, for a k-fold split) and is in model
    (preprocessed) units.

    Attributes
    ----------
    given
        The outputs the held-out stars' latents were inferred from.
    targets
        The predicted outputs (the fitted outputs not in ``given``).
    index
        ``(M,)`` rows of the data that were held out.
    fold
        ``(M,)`` the fold each of those stars was held out in.
    mean
        ``{target: (M, D)}`` predictive means.
    var_model
        ``{target: (M, D)}`` predictive variances *without* the extra scatter
        ``s``: latent posterior and trained-transform (``param_cov``) uncertainty.
    s_fit
        ``{target: (M, D)}`` the extra scatter ``s`` that each star's refit
        learned (zero for an output without ``s``).
    observed, observed_err
        ``{target: (M, D)}`` the held-out stars' observed values (NaN where
        missing) and reported errors (zero where none were given).
    n_train
        Number of training stars of each refit.
    converged
        Whether each refit converged.
    """

    given: tuple[str, ...] = eqx.field(static=True)
    targets: tuple[str, ...] = eqx.field(static=True)
    index: np.ndarray
    fold: np.ndarray
    mean: dict[str, np.ndarray]
    var_model: dict[str, np.ndarray]
    s_fit: dict[str, np.ndarray]
    observed: dict[str, np.ndarray]
    observed_err: dict[str, np.ndarray]
    n_train: tuple[int, ...] = eqx.field(static=True)
    converged: tuple[bool, ...] = eqx.field(static=True)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def residuals(self, target: str) -> np.ndarray:
        """``(M, D)`` predicted minus observed (NaN where not observed)."""
        return self.mean[target] - self.observed[target]

    def rmse(self, target: str) -> np.ndarray:
        """``(D,)`` root-mean-square held-out residual of each dimension, against
        the observed values (model units)."""
        r = self.residuals(target)
        return np.sqrt(np.nanmean(r**2, axis=0))

    def z_scores(self, target: str, s: Any = None) -> np.ndarray:
        """``(M, D)`` residuals over ``sqrt(var_model + err² + s²)``: NaN where
        not observed.

        ``s=None`` uses each refit's own ``s`` (what a plain `fit` would report);
        otherwise a scalar or one value per dimension.
        """
        s2 = self.s_fit[target] ** 2 if s is None else np.square(np.asarray(s))
        var = self.var_model[target] + self.observed_err[target] ** 2 + s2
        return self.residuals(target) / np.sqrt(var)

    def z_std(self, target: str, s: Any = None) -> np.ndarray:
        """``(D,)`` standard deviation of `z_scores` over the observed values
        (1 for a calibrated model)."""
        return np.nanstd(self.z_scores(target, s), axis=0)


def _observed(data: PolluxData, name: str) -> tuple[np.ndarray, np.ndarray]:
    out = data[name]
    y = np.asarray(out.data, dtype=float)
    if out.err is None:
        err = np.zeros_like(y)
    else:
        err = np.asarray(out.err, dtype=float)
    missing = np.isnan(y) | ~np.isfinite(err)
    return np.where(missing, np.nan, y), np.where(missing, 0.0, err)


def held_out(
    make_model: Callable[[], RefittableModel],
    data: PolluxData,
    *,
    given: tuple[str, ...],
    targets: tuple[str, ...],
    fit_kwargs: Mapping[str, Any],
    folds: int | float,
    seed: int,
    progress: bool,
    desc: str = "folds",
) -> HeldOutPredictions:
    """Refit on all but each fold, predict the fold's ``targets`` from its
    ``given`` outputs alone. Arguments must be checked by the caller.

    ``make_model`` returns the model to refit; it is called once per fold. Every
    fold's fit starts from scratch, or, for a variational fit over several folds,
    from one fit of the ``given`` outputs of all the stars (`given_start`): no
    held-out label enters the model that predicts it either way.
    """
    parts = split_folds(len(data), folds, seed)
    everything = np.arange(len(data))
    start = given_start(make_model(), data, given, fit_kwargs, len(parts))
    index, fold_ids, n_train, converged = [], [], [], []
    cols: dict[str, dict[str, list[np.ndarray]]] = {
        key: {t: [] for t in targets} for key in ("mean", "var", "s")
    }
    for i, held in enumerate(tqdm(parts, desc=desc, disable=not progress)):
        this = make_model()
        train_idx = np.setdiff1d(everything, held, assume_unique=True)
        kwargs = dict(fit_kwargs)
        if start is not None:
            kwargs["start"] = start.rows(train_idx)
        fold_fit = this.fit(data[train_idx], **kwargs, progress=False)
        test = data[held]
        post = this.infer_latents(test, fold_fit.params, names=given)
        params = {}
        for t in targets:
            p = dict(fold_fit.params[t])
            if SCATTER in p:
                p[SCATTER] = jnp.zeros_like(p[SCATTER])
            params[t] = p
        pred = this.predict(
            post, params, names=targets, param_cov=_target_cov(fold_fit, targets)
        )
        for t in targets:
            mean = np.asarray(pred[t].data, dtype=float)
            cols["mean"][t].append(mean)
            cols["var"][t].append(np.asarray(pred[t].err, dtype=float) ** 2)
            s = fold_fit.params[t].get(SCATTER, 0.0)
            cols["s"][t].append(np.broadcast_to(np.asarray(s, float), mean.shape))
        index.append(held)
        fold_ids.append(np.full(len(held), i))
        n_train.append(len(train_idx))
        converged.append(bool(fold_fit.converged))
    index_all = np.concatenate(index)
    order = np.argsort(index_all, kind="stable")
    index_all = index_all[order]

    def gather(key: str) -> dict[str, np.ndarray]:
        return {t: np.concatenate(cols[key][t])[order] for t in targets}

    held_data = data[index_all]
    observed = {t: _observed(held_data, t) for t in targets}
    return HeldOutPredictions(
        given=given,
        targets=targets,
        index=index_all,
        fold=np.concatenate(fold_ids)[order],
        mean=gather("mean"),
        var_model=gather("var"),
        s_fit=gather("s"),
        observed={t: v[0] for t, v in observed.items()},
        observed_err={t: v[1] for t, v in observed.items()},
        n_train=tuple(n_train),
        converged=tuple(converged),
    )


class GivenStart(eqx.Module):
    """A fit of the ``given`` outputs alone (no label) of every star, from which
    each fold's fit starts (``LuxModel.fit(start=...)``)."""

    result: FitResult

    def rows(self, index: np.ndarray) -> FitResult:
        """The result restricted to the stars ``index`` (their latent posterior)."""
        r = self.result
        posterior = r.posterior[index]
        params = {**r.params, LATENTS: posterior.mean}
        return eqx.tree_at(lambda x: (x.params, x.posterior), r, (params, posterior))


def given_start(
    model: Any,
    data: PolluxData,
    given: tuple[str, ...],
    fit_kwargs: Mapping[str, Any],
    n_folds: int,
) -> GivenStart | None:
    """`GivenStart` for folds of a variational fit (an output that is not affine:
    each fold would otherwise start from its own affine fit and take about
    three times the cycles), when there are several folds to share it and the
    model's ``fit`` takes a ``start``; else None."""
    if n_folds < 2 or "start" not in inspect.signature(model.fit).parameters:
        return None
    names = fit_kwargs.get("names")
    names = [n for n in model.outputs if n in data.names] if names is None else names
    names = [names] if isinstance(names, str) else list(names)
    if all(model.outputs[n].is_affine for n in names):
        return None
    kwargs = {**fit_kwargs, "names": list(given)}
    return GivenStart(model.fit(data, **kwargs, progress=False))


def _target_cov(result: FitResult, targets: Iterable[str]) -> dict[str, Any]:
    return {t: c for t, c in result.param_cov.items() if t in targets}


def fitted_names(result: FitResult) -> tuple[str, ...]:
    """The outputs a result was fit to (from its settings, else its params)."""
    names = result.settings.get("names")
    if names is None:
        names = [k for k in result.params if k != LATENTS]
    return tuple(names)
