"""A worked study: spectra whose reported errors are too small for some pixels.

We simulate stars whose labels and flux are linear in an 8-dimensional latent
vector, then add to the flux a periodic, pixel-dependent scatter that the reported
flux errors do not include. Two Lux models are trained on half of the stars and
applied to the other half:

- model 1 trusts the reported errors (``LinearTransform`` without ``s``);
- model 2 learns an extra scatter ``s`` per flux pixel (``HalfNormal(5)`` prior).

Each trained model is applied to the held-out stars in two ways: with their labels
and flux (as in the published Lux tutorial) and from the flux alone, which is what
labelling new stars looks like. Model 2 is also fitted with the closed-form EM path
(`LuxModel.fit`, `LuxModel.infer_latents`, `LuxModel.predict`), which also gives
label uncertainties.

`run_demo` does all of it and returns a `DemoResult` with the numbers (label errors
against the noise-free true labels, in physical units; how well the learned ``s``
follows the injected scatter; wall times). `write_figures` draws the figures.
``pollux demo`` on the command line calls both.

Examples
--------
A very short run (a real one uses `TUTORIAL_NUM_STEPS` optimiser steps)::

    from pollux.studies import underestimated

    result = underestimated.run_demo(num_steps=500)
    print(result.summary())
    underestimated.write_figures(result, "pollux-demo")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._params import check_positive_int, without_latents
from ..datasets import injected_extra_error, make_underestimated_errors_data

#: The injected scatter per pixel (its name in ``pollux.demo``).
injected_systematic_error = injected_extra_error

__all__ = [
    "STAGES",
    "TUTORIAL_NUM_STEPS",
    "DemoResult",
    "Row",
    "SimulatedStudy",
    "apply_fast",
    "apply_map",
    "build_models",
    "enable_float64",
    "injected_systematic_error",
    "label_rmse",
    "run_demo",
    "simulate",
    "train_map",
    "write_figures",
]

#: Optimiser steps of each MAP fit in the published tutorial.
TUTORIAL_NUM_STEPS = 32768
#: ``jax.random.PRNGKey`` seeds the tutorial uses for training and for applying.
TRAIN_KEY, APPLY_KEY = 112358, 12345
#: Learning rate of the Adam optimiser.
LEARNING_RATE = 1e-3


def enable_float64() -> None:
    """Switch JAX to double precision (call before creating any array)."""
    import jax

    jax.config.update("jax_enable_x64", True)


# -- Data -------------------------------------------------------------------------
@dataclass
class SimulatedStudy:
    """Simulated stars, split into a training and a test half.

    Attributes
    ----------
    data
        All stars in physical units (`PolluxData` with ``flux`` and ``label``).
    train, test
        The first and second half of the stars, preprocessed (model units).
    truth
        Noise-free ``label`` and ``flux``, the generating ``A`` and ``B`` and the
        true ``latents``, for all stars.
    systematic_err
        The injected extra flux scatter per pixel (physical units).
    n_train
        Number of training stars; test stars are ``n_train:``.
    """

    data: Any
    train: Any
    test: Any
    truth: dict[str, np.ndarray]
    systematic_err: np.ndarray
    n_train: int

    @property
    def true_test_labels(self) -> np.ndarray:
        """Noise-free labels of the test stars (physical units)."""
        return self.truth["label"][self.n_train :]


def simulate(
    seed: int = 42,
    n_stars: int = 2048,
    n_latents: int = 8,
    n_labels: int = 2,
    n_flux: int = 128,
) -> SimulatedStudy:
    """The study's stars (`pollux.datasets.make_underestimated_errors_data`), split
    in half. With the default arguments these are the Lux tutorial's numbers."""
    data, truth = make_underestimated_errors_data(
        n_stars=n_stars, n_latents=n_latents, n_labels=n_labels, n_flux=n_flux, rng=seed
    )
    pre = data.preprocess()
    n_train = n_stars // 2
    return SimulatedStudy(
        data=data,
        train=pre[:n_train],
        test=pre[n_train:],
        truth=truth,
        systematic_err=truth["extra_err"],
        n_train=n_train,
    )


# -- Models -----------------------------------------------------------------------
def build_models(study: SimulatedStudy, latent_size: int = 8) -> dict[str, Any]:
    """The two models of the study, keyed ``"model 1"`` and ``"model 2"``.

    Model 1 uses the reported errors as they are. Model 2 gives the flux a vector
    of extra scatter ``s`` (one value per pixel, ``HalfNormal(5)`` prior in model
    units) that is added in quadrature to the reported errors.
    """
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.models.transforms import LinearTransform

    n_flux = study.data["flux"].size
    n_labels = study.data["label"].size

    model1 = plx.LuxModel(latent_size=latent_size)
    model1.register_output("label", LinearTransform(output_size=n_labels))
    model1.register_output("flux", LinearTransform(output_size=n_flux))

    model2 = plx.LuxModel(latent_size=latent_size)
    model2.register_output(
        "flux",
        LinearTransform(
            output_size=n_flux,
            param_priors={
                "A": dist.Normal(0.0, 1.0),
                "s": dist.HalfNormal(5.0).expand((n_flux,)),
            },
        ),
    )
    model2.register_output("label", LinearTransform(output_size=n_labels))
    return {"model 1": model1, "model 2": model2}


def train_map(
    model: Any, train: Any, num_steps: int, seed: int = TRAIN_KEY
) -> tuple[dict[str, Any], np.ndarray, float]:
    """MAP-train ``model`` with Adam; returns ``(params, losses, seconds)``."""
    import jax
    import numpyro

    t0 = time.perf_counter()
    params, svi = model.optimize(
        train,
        num_steps=num_steps,
        rng_key=jax.random.PRNGKey(seed),
        optimizer=numpyro.optim.Adam(LEARNING_RATE),
        svi_run_kwargs={"progress_bar": False},
    )
    losses = np.asarray(svi.losses.block_until_ready())
    return params, losses, time.perf_counter() - t0


def apply_map(
    model: Any,
    test: Any,
    params: dict[str, Any],
    num_steps: int,
    names: Sequence[str] | None = None,
    seed: int = APPLY_KEY,
) -> tuple[np.ndarray, float]:
    """Fit the test stars' latents with the trained transforms held fixed.

    ``names=None`` uses every output of ``test`` (labels and flux); ``["flux"]``
    uses the spectra alone. Returns the predicted labels in physical units and
    the seconds taken.
    """
    import jax
    import numpyro

    t0 = time.perf_counter()
    fixed = without_latents(params)
    fitted, _ = model.optimize(
        test,
        num_steps=num_steps,
        rng_key=jax.random.PRNGKey(seed),
        optimizer=numpyro.optim.Adam(LEARNING_RATE),
        fixed_params=fixed,
        names=names,
        svi_run_kwargs={"progress_bar": False},
    )
    pred = model.predict_outputs(fitted["latents"], fixed, names=["label"])
    labels = np.asarray(test.unprocess(pred)["label"].data)
    return labels, time.perf_counter() - t0


def apply_fast(
    model: Any, train: Any, test: Any
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, float, float]:
    """Closed-form path: EM on ``train``, then label the test stars from flux.

    Returns ``(params, labels, label_err, fit_seconds, apply_seconds)``; labels and
    their one-sigma uncertainties are in physical units.
    """
    t0 = time.perf_counter()
    result = model.fit(train, progress=False)
    result.losses.block_until_ready()
    t1 = time.perf_counter()
    post = model.infer_latents(test, result.params, names=["flux"])
    pred = test.unprocess(
        model.predict(post, result.params, names=["label"], param_cov=result.param_cov)
    )
    labels = np.asarray(pred["label"].data)
    label_err = np.asarray(pred["label"].err)
    return result.params, labels, label_err, t1 - t0, time.perf_counter() - t1


def label_rmse(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Root-mean-square error of each label (column)."""
    diff = np.asarray(predicted) - np.asarray(true)
    return np.sqrt(np.mean(diff**2, axis=0))


def _corr(a: Any, b: Any) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


# -- Results ----------------------------------------------------------------------
@dataclass
class Row:
    """One way of predicting the test labels, and how well it did.

    ``rmse`` is per label, against the noise-free labels, in physical units;
    ``zscore_std`` (closed-form path only) is the standard deviation of
    ``(predicted - true) / predicted_err`` per label (1 means well calibrated).
    ``train_seconds`` is the time to train the model (shared by its rows),
    ``apply_seconds`` the time to label the test stars.
    """

    model: str
    method: str
    mode: str
    rmse: np.ndarray
    train_seconds: float
    apply_seconds: float
    zscore_std: np.ndarray | None = None
    labels: np.ndarray | None = field(repr=False, default=None)


@dataclass
class DemoResult:
    """Everything `run_demo` measured (see `DemoResult.summary`)."""

    seed: int
    num_steps: int
    n_train: int
    n_test: int
    rows: list[Row]
    s_corr: dict[str, float]
    s_inferred: dict[str, np.ndarray]
    systematic_err: np.ndarray
    true_test_labels: np.ndarray
    observed_label_rmse: np.ndarray
    losses: dict[str, np.ndarray]
    timings: dict[str, float]

    @property
    def quick(self) -> bool:
        """Whether fewer optimiser steps than the tutorial's were used."""
        return self.num_steps < TUTORIAL_NUM_STEPS

    def row(self, model: str, method: str, mode: str) -> Row:
        """The row with these ``model``, ``method`` and ``mode`` values."""
        for r in self.rows:
            if (r.model, r.method, r.mode) == (model, method, mode):
                return r
        msg = f"no row ({model!r}, {method!r}, {mode!r})"
        raise KeyError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers (JSON-friendly)."""
        return {
            "seed": self.seed,
            "num_steps": self.num_steps,
            "tutorial_num_steps": TUTORIAL_NUM_STEPS,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "rows": [
                {
                    "model": r.model,
                    "method": r.method,
                    "mode": r.mode,
                    "rmse": [float(x) for x in r.rmse],
                    "train_seconds": r.train_seconds,
                    "apply_seconds": r.apply_seconds,
                    "zscore_std": None
                    if r.zscore_std is None
                    else [float(x) for x in r.zscore_std],
                }
                for r in self.rows
            ],
            "observed_label_rmse": [float(x) for x in self.observed_label_rmse],
            "s_corr": dict(self.s_corr),
            "timings": dict(self.timings),
        }

    def summary(self) -> str:
        """A text table of the test-set label errors, ``s`` recovery and times."""
        n_lab = len(self.observed_label_rmse)
        lab_heads = [f"RMSE label {i}" for i in range(n_lab)]
        head = [
            "model",
            "method",
            "test stars use",
            *lab_heads,
            "z std",
            "train [s]",
            "apply [s]",
        ]
        body = []
        for r in self.rows:
            z = (
                "-"
                if r.zscore_std is None
                else "/".join(f"{x:.2f}" for x in r.zscore_std)
            )
            body.append(
                [
                    r.model,
                    r.method,
                    r.mode,
                    *(f"{x:.4f}" for x in r.rmse),
                    z,
                    f"{r.train_seconds:.1f}",
                    f"{r.apply_seconds:.1f}",
                ]
            )
        body.append(
            [
                "(observed labels)",
                "-",
                "-",
                *(f"{x:.4f}" for x in self.observed_label_rmse),
                "-",
                "-",
                "-",
            ]
        )
        widths = [
            max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)
        ]

        def fmt(cells):
            return "  ".join(
                str(c).ljust(w) for c, w in zip(cells, widths, strict=True)
            )

        lines = [
            f"Test-set label errors ({self.n_test} stars, trained on {self.n_train}), "
            "against the noise-free labels, physical units:",
            fmt(head),
            fmt(["-" * w for w in widths]),
            *(fmt(b) for b in body),
            "(observed labels): the noisy labels the test stars came with, for scale.",
            "z std: spread of (predicted - true) / predicted uncertainty, per label "
            "(1 = calibrated).",
            "",
            "Learned extra flux scatter s vs the injected one (Pearson correlation):",
        ]
        lines += [f"  {k}: {v:.4f}" for k, v in self.s_corr.items()]
        lines.append("")
        lines.append(
            "Times [s]: " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items())
        )
        steps = f"{self.num_steps} optimiser steps per MAP fit"
        if self.quick:
            lines.append(
                f"Quick run: {steps}, fewer than the tutorial's {TUTORIAL_NUM_STEPS}."
            )
        else:
            lines.append(f"{steps} (the tutorial's setting).")
        return "\n".join(lines)


# -- The study --------------------------------------------------------------------
Stage = Callable[[str], None]

#: Names of the stages `run_demo` reports to its ``on_stage`` callback, in order.
STAGES = (
    "simulate data",
    "model 1: train (MAP)",
    "model 1: apply, labels+flux",
    "model 1: apply, flux only",
    "model 2: train (MAP)",
    "model 2: apply, labels+flux",
    "model 2: apply, flux only",
    "model 2: closed-form fit + apply",
)


def run_demo(
    num_steps: int = TUTORIAL_NUM_STEPS,
    seed: int = 42,
    apply_steps: int | None = None,
    on_stage: Stage | None = None,
) -> DemoResult:
    """Run the study and return its numbers.

    Parameters
    ----------
    num_steps
        Adam steps of each MAP training fit (the tutorial uses 32768).
    seed
        Seed of the simulated data (42 reproduces the tutorial's stars).
    apply_steps
        Adam steps when fitting the test stars' latents (default ``num_steps``,
        as in the tutorial).
    on_stage
        Called with each stage's name (see `STAGES`) as the stage starts.
    """
    enable_float64()
    check_positive_int(num_steps, "run_demo(num_steps=...)")
    apply_steps = num_steps if apply_steps is None else apply_steps
    stages = iter(STAGES)

    def stage() -> None:
        name = next(stages)
        if on_stage is not None:
            on_stage(name)

    timings: dict[str, float] = {}
    rows: list[Row] = []
    losses: dict[str, np.ndarray] = {}
    s_inferred: dict[str, np.ndarray] = {}

    stage()
    t0 = time.perf_counter()
    study = simulate(seed=seed)
    models = build_models(study)
    timings["simulate"] = time.perf_counter() - t0
    true = study.true_test_labels
    flux_pre = study.data["flux"].preprocessor

    for name, model in models.items():
        stage()
        params, losses[name], t_train = train_map(model, study.train, num_steps)
        timings[f"{name} train"] = t_train
        for mode, names in (("labels+flux", None), ("flux only", ["flux"])):
            stage()
            labels, t_apply = apply_map(model, study.test, params, apply_steps, names)
            rows.append(
                Row(
                    name,
                    "optimize",
                    mode,
                    label_rmse(labels, true),
                    t_train,
                    t_apply,
                    labels=labels,
                )
            )
            timings[f"{name} apply ({mode})"] = t_apply
        if "s" in params["flux"]:
            s_inferred[f"{name} (optimize)"] = np.asarray(
                flux_pre.inverse_transform_err(params["flux"]["s"])
            )

    stage()
    params, labels, label_err, t_fit, t_apply = apply_fast(
        models["model 2"], study.train, study.test
    )
    timings["model 2 fit (EM)"] = t_fit
    timings["model 2 apply (closed form)"] = t_apply
    z = (labels - true) / label_err
    rows.append(
        Row(
            "model 2",
            "fit (EM)",
            "flux only",
            label_rmse(labels, true),
            t_fit,
            t_apply,
            zscore_std=np.std(z, axis=0),
            labels=labels,
        )
    )
    s_inferred["model 2 (fit)"] = np.asarray(
        flux_pre.inverse_transform_err(params["flux"]["s"])
    )

    observed = np.asarray(study.data["label"].data)[study.n_train :]
    return DemoResult(
        seed=seed,
        num_steps=num_steps,
        n_train=study.n_train,
        n_test=len(study.test),
        rows=rows,
        s_corr={k: _corr(v, study.systematic_err) for k, v in s_inferred.items()},
        s_inferred=s_inferred,
        systematic_err=study.systematic_err,
        true_test_labels=true,
        observed_label_rmse=label_rmse(observed, true),
        losses=losses,
        timings=timings,
    )


# -- Figures ----------------------------------------------------------------------
def write_figures(result: DemoResult, out_dir: str | Path) -> list[Path]:
    """Write the study's PNG figures into ``out_dir``; returns their paths."""
    # Figure objects without pyplot: rendered by Agg, whatever backend the user
    # has selected, and nothing is left open.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def subplots(*args, **kwargs):
        fig_kw = {k: kwargs.pop(k) for k in ("figsize", "layout") if k in kwargs}
        fig = Figure(**fig_kw)
        return fig, fig.subplots(*args, **kwargs)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=120)
        paths.append(path)

    pix = np.arange(len(result.systematic_err))

    fig, ax = subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(pix, result.systematic_err, color="k")
    ax.set(
        xlabel="spectral pixel",
        ylabel="injected extra flux scatter",
        title="Scatter missing from the reported flux errors",
    )
    save(fig, "systematic_error.png")

    names = list(result.losses)
    fig, axes = subplots(
        1, 1 + len(names), figsize=(4 * (1 + len(names)), 3.5), layout="constrained"
    )
    for i, name in enumerate(names):
        loss = result.losses[name]
        steps = np.arange(1, len(loss) + 1)
        axes[0].plot(steps, loss, label=name)
        tail = max(len(loss) - 2000, 0)
        ax = axes[1 + i]
        ax.plot(steps[tail:], loss[tail:] - loss[-1], color=f"C{i}")
        ax.set(
            xlabel="optimiser step",
            ylabel="loss − final loss",
            title=f"{name}: last {len(loss) - tail} steps",
        )
        ax.xaxis.set_major_locator(MaxNLocator(4))
    positive = all(np.min(v) > 0 for v in result.losses.values())
    axes[0].set(
        xlabel="optimiser step",
        ylabel="loss",
        yscale="log" if positive else "symlog",
        title="Training loss",
    )
    axes[0].xaxis.set_major_locator(MaxNLocator(4))
    axes[0].legend()
    save(fig, "loss_curves.png")

    true = result.true_test_labels
    n_lab = true.shape[1]
    opt_rows = [r for r in result.rows if r.method == "optimize"]
    models = list(dict.fromkeys(r.model for r in opt_rows))
    fig, axes = subplots(
        len(models),
        n_lab,
        figsize=(4 * n_lab, 3.6 * len(models)),
        layout="constrained",
        squeeze=False,
    )
    colors = {"labels+flux": "tab:blue", "flux only": "k"}
    for i, model in enumerate(models):
        for r in (r for r in opt_rows if r.model == model):
            for j in range(n_lab):
                axes[i, j].plot(
                    r.labels[:, j],
                    true[:, j],
                    ls="none",
                    marker="o",
                    ms=1.5,
                    alpha=0.4,
                    color=colors.get(r.mode, "tab:gray"),
                    label=f"{r.mode} (RMSE {r.rmse[j]:.3f})",
                )
        for j in range(n_lab):
            ax = axes[i, j]
            ax.axline((0, 0), slope=1, color="tab:green", zorder=-1)
            ax.set(xlabel=f"predicted label {j}", ylabel=f"true label {j}", title=model)
            ax.legend(loc="upper left", fontsize="small", markerscale=4)
    fig.suptitle("Test stars: predicted vs true labels")
    save(fig, "labels_pred_vs_true.png")

    fig, ax = subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(pix, result.systematic_err, color="k", lw=3, alpha=0.3, label="injected")
    for name, s in result.s_inferred.items():
        ax.plot(pix, s, lw=1, label=f"{name}, r={result.s_corr[name]:.3f}")
    ax.set(
        xlabel="spectral pixel",
        ylabel="extra flux scatter",
        title="Learned vs injected extra scatter",
    )
    ax.set_ylim(top=1.35 * float(np.max(result.systematic_err)))
    ax.legend(fontsize="small", loc="upper center", ncol=3)
    save(fig, "scatter_inferred_vs_injected.png")
    return paths
