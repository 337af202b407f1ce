"""Folds of a variational fit start from one fit of the given outputs of all the
stars (`pollux.fit.heldout.given_start`, ``LuxModel.fit(start=...)``).

What must hold: no held-out label reaches the model that predicts it (changing
one moves nothing in its fold, bit for bit, while it does move the other folds,
where it is a training label), and a fold started this way reaches the optimum of
the fit from scratch.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builders import CONFIGS, make_data, make_model, make_quadratic_model  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit.heldout import given_start, split_folds  # noqa: E402

FIT = {"max_iter": 200, "tol": 1e-10}


def _with_label(data: PolluxData, star: int, shift: float) -> PolluxData:
    label = np.array(data["label"].data)
    label[star] += shift
    return PolluxData(flux=data["flux"], label=OutputData(label, err=data["label"].err))


def test_a_held_out_label_does_not_reach_its_fold():
    data = make_data()
    folds = split_folds(len(data), 3, seed=0)
    star = int(folds[0][0])
    runs = [
        plx.validation.held_out_predictions(
            make_quadratic_model(), d, folds=3, seed=0, fit_kwargs=FIT
        )
        for d in (data, _with_label(data, star, 3.0))
    ]
    fold = runs[0].fold
    assert np.array_equal(fold, runs[1].fold)
    before, after = (np.asarray(r.mean["label"]) for r in runs)
    np.testing.assert_array_equal(after[fold == 0], before[fold == 0])
    # ... while the other folds, where it is a training label, do move.
    assert np.max(np.abs(after[fold != 0] - before[fold != 0])) > 1e-6


def test_a_fold_from_the_given_start_reaches_the_fit_from_scratch():
    data = make_data()
    model = make_quadratic_model()
    start = given_start(model, data, ("flux",), FIT, n_folds=3)
    train = split_folds(len(data), 3, seed=0)[1:]
    rows = np.sort(np.concatenate(train))
    cold = model.fit(data[rows], progress=False, **FIT)
    warm = model.fit(data[rows], progress=False, start=start.rows(rows), **FIT)
    assert cold.converged and warm.converged
    # Both stop once a cycle changes the objective by <= 1e-10 per value. (The
    # cycles it saves show where flux has many more values than the labels:
    # benchmarks/calibrate_cost.py; here both have a handful.)
    np.testing.assert_allclose(warm.losses[-1], cold.losses[-1], rtol=1e-6)
    preds = [
        model.predict(r.posterior, r.params, names=["label"])["label"].data
        for r in (cold, warm)
    ]
    # Seen: 4e-4, along the objective's flat directions, against a label scatter
    # of at least 0.2 (builders): a hundredth of it is allowed.
    np.testing.assert_allclose(preds[1], preds[0], atol=2e-3)


def test_no_given_start_for_affine_models_or_one_split():
    data = make_data()
    assert given_start(make_model(*CONFIGS["scatter"]), data, ("flux",), {}, 3) is None
    assert given_start(make_quadratic_model(), data, ("flux",), {}, 1) is None


@pytest.mark.parametrize(
    ("start", "error", "fragment"),
    [
        ("result", TypeError, "expected the FitResult"),
        ("affine", ValueError, "affine fits start from PCA"),
        ("rows", ValueError, r"shape \(39, 2\), expected \(40, 2\)"),
    ],
)
def test_bad_start_is_refused_naming_it(start, error, fragment):
    data = make_data()
    model = make_quadratic_model()
    flux_only = model.fit(data, names=["flux"], max_iter=2, progress=False)
    bad = {
        "result": flux_only.params,
        "affine": flux_only,
        "rows": given_start(model, data, ("flux",), {"max_iter": 2}, 3).rows(
            np.arange(39)
        ),
    }[start]
    fit_model = make_model(*CONFIGS["scatter"]) if start == "affine" else model
    with pytest.raises(error, match=r"LuxModel\.fit\(start=\.\.\.\)") as info:
        fit_model.fit(data, start=bad, max_iter=2, progress=False)
    assert info.match(fragment)
