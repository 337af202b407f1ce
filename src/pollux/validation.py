"""Choosing a model by held-out predictions on the training set.

The latent size ``K`` and the transforms of a `LuxModel` are choices the marginal
likelihood of the training data answers badly (a larger model always fits the
training stars better). What matters is how well the model predicts what it will be
asked for: labels of new stars from their spectra alone. This module measures that
on the training set by k-fold cross-validation: each fold of the stars is held
out in turn, each candidate is refit from scratch on the other folds, and the
held-out stars' targets (e.g. labels) are predicted from the ``given`` outputs
(e.g. flux) alone.

- `held_out_predictions`: the held-out predictions of one model (the machinery
  `LuxModel.calibrate` uses too).
- `validation_score`: one number per model, lower is better.
- `select_model`: scores several candidates on the same folds and picks the best.

The score is the geometric mean, over every target dimension, of the held-out
root-mean-square error against the observed values in model (preprocessed) units:

- preprocessed labels are standardised (unit spread), so the dimensions are
  commensurate, and a geometric mean gives each of them the same weight whatever
  its scale: halving the error of one label counts the same for every label;
- the observed values carry their own noise, which adds the same variance
  ``E[σ²]`` to the mean squared error of every candidate; it shifts all scores
  alike and cannot change which candidate is best, so there is no need for the
  (unknown) true labels.

The held-out z-scores (residual over the predicted uncertainty, with the observed
errors in quadrature) are reported too: a spread above 1 means the candidate's
jointly learned extra scatter is too small for predictions from the ``given``
outputs alone, which `LuxModel.calibrate` fixes after the choice is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import PolluxData
from .fit.checks import check_data, require_data, require_stars, resolve_names
from .fit.heldout import (
    HeldOutPredictions,
    check_folds,
    check_given,
    check_outputs_in_data,
    check_seed,
    fit_keywords,
    held_out,
    targets_of,
)
from .models import LuxModel

__all__ = [
    "HeldOutPredictions",
    "Selection",
    "held_out_predictions",
    "select_model",
    "validation_score",
]


def _resolve_model(make_model: Any, call: str, what: str = "make_model") -> LuxModel:
    if isinstance(make_model, LuxModel):
        return make_model
    if not callable(make_model):
        msg = (
            f"{call}({what}=...): expected a LuxModel or a function without "
            f"arguments that returns one, got {type(make_model).__name__}"
        )
        raise TypeError(msg)
    model = make_model()
    if not isinstance(model, LuxModel):
        msg = (
            f"{call}({what}=...): the function returned "
            f"{type(model).__name__}, not a LuxModel"
        )
        raise TypeError(msg)
    return model


def _plan(
    model: LuxModel,
    data: PolluxData,
    given: Any,
    fit_kwargs: Any,
    call: str,
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]:
    """Checked ``given``, the predicted targets and the ``fit`` keywords."""
    given = check_given(model, given, call)
    kwargs = fit_keywords(model, fit_kwargs, call)
    names = kwargs.get("names")
    if names is None:
        names = tuple(n for n in model.outputs if n in data)
    else:
        names = resolve_names(model, names, call, arg="fit_kwargs['names']")
    targets = targets_of(names, given, call)
    check_outputs_in_data(data, (*given, *targets), call)
    return given, targets, kwargs


def held_out_predictions(
    make_model: LuxModel | Callable[[], LuxModel],
    data: PolluxData,
    *,
    given: str | tuple[str, ...] = ("flux",),
    folds: int | float = 5,
    seed: int = 0,
    fit_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> HeldOutPredictions:
    """Predict held-out stars from their ``given`` outputs alone, refitting without
    them.

    The stars of ``data`` are split by a seeded permutation; for each fold the
    model is fit from scratch (``model.fit(others, **fit_kwargs)``), the fold's
    latents are inferred from the ``given`` outputs (``infer_latents``) and the
    other fitted outputs are predicted (``predict`` with ``param_cov``; the
    variances are stored without the extra scatter ``s``, and each refit's ``s``
    separately).

    Parameters
    ----------
    make_model
        A `LuxModel`, or a function without arguments that returns one (with its
        outputs registered).
    data
        Preprocessed `PolluxData` of the training stars.
    given
        Outputs the predictions are made from (default ``("flux",)``). The other
        fitted outputs are predicted.
    folds
        An int ``k`` from 2 to the number of stars: k-fold cross-validation, every
        star held out once. A float ``f`` in (0, 1): one split, holding out a
        fraction ``f`` of the stars (one fit instead of ``k``).
    seed
        Seed of the permutation.
    fit_kwargs
        Keywords for `LuxModel.fit` (e.g. ``{"max_iter": 200, "tol": 1e-7}`` or
        ``{"names": [...]}``); not ``fixed_params``, ``progress`` or ``start``.
    progress
        Show a progress bar over the folds.

    With an output that is not affine (`QuadraticTransform`) and several folds,
    every fold's fit starts from one fit of the ``given`` outputs of all the
    stars (``LuxModel.fit(start=...)``): the held-out labels enter none of them,
    and each fold converges in about a third of the cycles of a fit from scratch.

    Returns
    -------
    HeldOutPredictions
        Means, variances without ``s``, each refit's ``s``, the observed values
        and errors of the held-out stars (model units); ``rmse(target)``,
        ``z_scores(target, s=None)``, ``z_std(target, s=None)``.
    """
    call = "held_out_predictions"
    model = _resolve_model(make_model, call)
    data = check_data(data, call)
    given, targets, kwargs = _plan(model, data, given, fit_kwargs, call)
    require_data(data, (*given, *targets), call, each=True)
    folds = check_folds(folds, len(data), call, allow_fraction=True)
    seed = check_seed(seed, call)
    return held_out(
        lambda: model,
        data,
        given=given,
        targets=targets,
        fit_kwargs=kwargs,
        folds=folds,
        seed=seed,
        progress=bool(progress),
    )


def validation_score(held: HeldOutPredictions) -> float:
    """Geometric mean over every target dimension of the held-out RMSE (model
    units); lower is better.

    Preprocessed labels are standardised, so their dimensions are commensurate and
    a geometric mean weighs relative improvements of each alike; the noise of the
    observed values adds the same variance to every candidate's RMSE, so it cannot
    change the ranking.
    """
    if not isinstance(held, HeldOutPredictions):
        msg = (
            "validation_score(held=...): expected the HeldOutPredictions of "
            f"held_out_predictions, got {type(held).__name__}"
        )
        raise TypeError(msg)
    rmse = np.concatenate([np.atleast_1d(held.rmse(t)) for t in held.targets])
    rmse = rmse[np.isfinite(rmse)]
    if rmse.size == 0:
        return float("nan")
    return float(np.exp(np.mean(np.log(np.maximum(rmse, np.finfo(float).tiny)))))


@dataclass(frozen=True)
class Selection:
    """Outcome of `select_model`.

    Attributes
    ----------
    best
        Name of the candidate with the lowest score.
    scores
        ``{candidate: score}``: geometric mean of the held-out RMSE over every
        target dimension (model units; lower is better).
    rmse
        ``{candidate: {target: (rmse per dimension, ...)}}`` against the observed
        values, in model (preprocessed) units.
    z_std
        ``{candidate: {target: (spread per dimension, ...)}}``: standard deviation
        of the held-out z-scores (residual over the predicted uncertainty with each
        refit's own ``s``, the observed errors in quadrature). Above 1: the
        jointly learned ``s`` is too small for these predictions; see
        `LuxModel.calibrate`.
    given, targets
        Outputs predicted from, and predicted.
    folds, seed
        The split.
    n_stars
        Number of held-out stars per candidate.
    """

    best: str
    scores: Mapping[str, float]
    rmse: Mapping[str, Mapping[str, tuple[float, ...]]]
    z_std: Mapping[str, Mapping[str, tuple[float, ...]]]
    given: tuple[str, ...]
    targets: tuple[str, ...]
    folds: int | float
    seed: int
    n_stars: int = field(default=0)

    def table(self) -> str:
        """A plain-text table: one row per candidate, best marked with ``*``."""
        dims = [
            (t, d)
            for t in self.targets
            for d in range(len(next(iter(self.rmse.values()))[t]))
        ]
        heads = ["", "candidate", "score"]
        heads += [f"rmse {t}[{d}]" for t, d in dims]
        heads += [f"z_std {t}[{d}]" for t, d in dims]
        rows = []
        for name, score in self.scores.items():
            row = ["*" if name == self.best else "", name, f"{score:.4g}"]
            row += [f"{self.rmse[name][t][d]:.4g}" for t, d in dims]
            row += [f"{self.z_std[name][t][d]:.3g}" for t, d in dims]
            rows.append(row)
        widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        split = f"{self.folds}-fold" if isinstance(self.folds, int) else "one split"
        head = (
            f"held-out predictions of {', '.join(self.targets)} from "
            f"{', '.join(self.given)} ({split}, seed {self.seed}, "
            f"{self.n_stars} stars; lower score is better)"
        )
        return "\n".join([head, line(heads), *(line(r) for r in rows)])

    def __str__(self) -> str:
        return self.table()


def select_model(
    candidates: Mapping[str, Callable[[], LuxModel]],
    data: PolluxData,
    *,
    given: str | tuple[str, ...] = ("flux",),
    folds: int | float = 5,
    seed: int = 0,
    fit_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Selection:
    """Choose among candidate models (latent size, transforms, priors) by how well
    they predict held-out stars' targets from their ``given`` outputs alone.

    Every candidate is scored by `validation_score` on the same folds (the same
    ``seed``) of ``data`` only; no test stars are needed. Then fit the chosen one
    on all of ``data``, and `LuxModel.calibrate` it.

    Parameters
    ----------
    candidates
        ``{name: function returning a LuxModel}`` (a `LuxModel` is accepted too).
        Every candidate must fit the same outputs.
    data
        Preprocessed `PolluxData` of the training stars.
    given, folds, seed, fit_kwargs
        As for `held_out_predictions`.
    progress
        Show a progress bar over candidates and folds.

    Returns
    -------
    Selection
        ``best``, ``scores``, per-dimension ``rmse`` and ``z_std``, ``table()``.

    Examples
    --------
    Three latents generate the data; a one-latent model predicts worse:

    >>> import pollux as plx
    >>> from pollux.models.transforms import LinearTransform
    >>> from pollux.validation import select_model
    >>> obs, _ = plx.datasets.make_simulated_linear_data(
    ...     n_stars=90, n_latents=3, n_labels=2, n_flux=12, rng=1)
    >>> data = plx.data.PolluxData(
    ...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
    ...     label=plx.data.OutputData(obs["label"], err=obs["label_err"]))
    >>> def make(k):
    ...     model = plx.LuxModel(latent_size=k)
    ...     model.register_output("flux", LinearTransform(output_size=12))
    ...     model.register_output("label", LinearTransform(output_size=2))
    ...     return model
    >>> sel = select_model({"K=1": lambda: make(1), "K=3": lambda: make(3)},
    ...                    data, folds=3, progress=False)
    >>> sel.best
    'K=3'
    >>> bool(sel.scores["K=3"] < sel.scores["K=1"])
    True
    >>> print(sel.table())  # doctest: +SKIP
    held-out predictions of label from flux (3-fold, seed 0, 90 stars; lower ...)
       candidate  score  rmse label[0]  rmse label[1]  z_std label[0]  z_std label[1]
       K=1        ...
    *  K=3        ...
    """
    call = "select_model"
    if not isinstance(candidates, Mapping):
        msg = (
            f"{call}(candidates=...): expected a dict {{name: function returning a "
            f"LuxModel}}, got {type(candidates).__name__}"
        )
        raise TypeError(msg)
    if not candidates:
        msg = f"{call}(candidates=...): give at least one candidate"
        raise ValueError(msg)
    for name in candidates:
        if not isinstance(name, str):
            msg = f"{call}(candidates=...): names must be strings, got {name!r}"
            raise TypeError(msg)
    data = check_data(data, call)
    require_stars(len(data), call)
    folds = check_folds(folds, len(data), call, allow_fraction=True)
    seed = check_seed(seed, call)
    models, plans = {}, {}
    for name, make in candidates.items():
        model = _resolve_model(make, call, f"candidates[{name!r}]")
        models[name] = model
        plans[name] = _plan(model, data, given, fit_kwargs, call)
    first = next(iter(plans.values()))
    for name, (g, t, _) in plans.items():
        if (g, t) != first[:2]:
            msg = (
                f"{call}(candidates=...): {name!r} predicts {list(t)} from {list(g)} "
                f"but the first candidate predicts {list(first[1])} from "
                f"{list(first[0])}; candidates must fit the same outputs"
            )
            raise ValueError(msg)
        for target in t:
            if models[name].outputs[target].output_size != data[target].size:
                msg = (
                    f"{call}(candidates[{name!r}]): output {target!r} has "
                    f"output_size={models[name].outputs[target].output_size} but "
                    f"the data has {data[target].size} dimensions"
                )
                raise ValueError(msg)
    given, targets = first[0], first[1]
    require_data(data, (*given, *targets), call, each=True)

    scores, rmse, z_std = {}, {}, {}
    n_held = 0
    for name, model in models.items():
        held = held_out(
            lambda model=model: model,
            data,
            given=given,
            targets=targets,
            fit_kwargs=plans[name][2],
            folds=folds,
            seed=seed,
            progress=bool(progress),
            desc=f"select_model: {name}",
        )
        scores[name] = validation_score(held)
        rmse[name] = {t: tuple(float(v) for v in held.rmse(t)) for t in targets}
        z_std[name] = {t: tuple(float(v) for v in held.z_std(t)) for t in targets}
        n_held = len(held)
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        msg = f"{call}: no candidate has a finite score (no observed targets?)"
        raise ValueError(msg)
    best = min(finite, key=finite.__getitem__)
    return Selection(
        best=best,
        scores=scores,
        rmse=rmse,
        z_std=z_std,
        given=given,
        targets=targets,
        folds=folds,
        seed=seed,
        n_stars=n_held,
    )
