"""Getting started with pollux: learn labels from spectra with a bi-linear Lux model.

We make a simulated survey in which every star's labels and flux are both linear
functions of a hidden 8-dimensional latent vector. We train a Lux model on half of
the stars, use it to label the other half, and compare with the true labels.

Two ways of fitting are shown:

1. ``LuxModel.optimize``: maximum a posteriori (MAP) with numpyro. It works for
   any transform and prior, and fits the parameters and every star's latents.
2. ``LuxModel.fit`` + ``infer_latents`` + ``predict``: the closed-form path for
   transforms that are linear in the latents. It is much faster, integrates the
   latents out, and returns label *uncertainties*.

Run it from anywhere: ``python examples/getting_started.py``. Figures go to
``examples/output/``.
"""

from pathlib import Path

import jax

# Double precision: set before any JAX array is created.
jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.datasets import make_simulated_linear_data  # noqa: E402
from pollux.models.transforms import LinearTransform  # noqa: E402

OUT = Path(__file__).resolve().parent / "output"
NUM_STEPS = 5000  # Adam steps per MAP fit; enough for this small problem


def rmse(predicted, true):
    """Root-mean-square error of each label."""
    return np.sqrt(np.mean((np.asarray(predicted) - true) ** 2, axis=0))


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    # -- 1. A simulated survey ---------------------------------------------------
    # 2048 stars, 8 latents, 2 labels, 128 flux pixels. `obs` holds noisy values
    # with their errors; `truth` holds the noise-free labels we check against.
    n_stars, n_latents, n_labels, n_flux = 2048, 8, 2, 128
    obs, truth = make_simulated_linear_data(
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
        rng=np.random.default_rng(7),
    )

    # Each output carries its own preprocessor, which maps physical units to
    # model units (here: subtract a typical value, divide by a typical spread).
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["flux"]),
        ),
        label=plx.data.OutputData(
            obs["label"],
            err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["label"]),
        ),
    )
    pre = data.preprocess()
    n_train = n_stars // 2
    train, test = pre[:n_train], pre[n_train:]
    true_labels = truth["label"][n_train:]
    print(f"{len(train)} training stars, {len(test)} test stars")

    # -- 2. The model: labels and flux are both linear in the latents ------------
    model = plx.LuxModel(latent_size=n_latents)
    model.register_output("label", LinearTransform(output_size=n_labels))
    model.register_output("flux", LinearTransform(output_size=n_flux))

    # -- 3. Train with MAP (numpyro) ------------------------------------------------
    params, svi = model.optimize(
        train,
        num_steps=NUM_STEPS,
        rng_key=jax.random.PRNGKey(0),
        optimizer=numpyro.optim.Adam(1e-3),
        svi_run_kwargs={"progress_bar": False},
    )
    print(f"\nMAP training: final loss {float(svi.losses[-1]):.1f}")

    # -- 4. Apply: hold the trained transforms fixed, fit only the test latents ---
    trained = {"label": {"A": params["label"]["A"]}, "flux": {"A": params["flux"]["A"]}}
    predicted = {}
    for mode, names in [("labels+flux", None), ("flux only", ["flux"])]:
        # names=None uses all outputs the test data has; names=["flux"] is how
        # you label new stars that have spectra but no labels.
        fitted, _ = model.optimize(
            test,
            num_steps=NUM_STEPS,
            rng_key=jax.random.PRNGKey(1),
            fixed_params=trained,
            names=names,
            svi_run_kwargs={"progress_bar": False},
        )
        in_model_units = model.predict_outputs(
            fitted["latents"], trained, names="label"
        )
        # Back to physical units with the test data's preprocessors.
        predicted[mode] = np.asarray(test.unprocess(in_model_units)["label"].data)
        print(
            f"  test labels from {mode:12s}: RMSE per label {rmse(predicted[mode], true_labels)}"
        )

    # -- 5. The fast closed-form path ---------------------------------------------
    result = model.fit(train, progress=False)  # EM, latents integrated out
    print(f"\nEM training: {result.n_iter} iterations, converged={result.converged}")
    posterior = model.infer_latents(test, result.params, names=["flux"])
    prediction = test.unprocess(
        # param_cov adds the uncertainty of the trained transforms to the errors
        model.predict(
            posterior, result.params, names=["label"], param_cov=result.param_cov
        )
    )
    fast_labels = np.asarray(prediction["label"].data)
    fast_err = np.asarray(prediction["label"].err)
    print(
        f"  test labels from flux only  : RMSE per label {rmse(fast_labels, true_labels)}"
    )
    print(
        f"  median predicted uncertainty per label       {np.median(fast_err, axis=0)}"
    )

    # If the uncertainties are right, (predicted - true) / uncertainty follows a
    # unit Normal. They include the test stars' latent posterior and the error of
    # the trained label transform, not that of the flux transform (a small term
    # here); LinearTransform has no intercept (AffineTransform adds one), which
    # shows as a small offset of the z-scores at this high signal-to-noise.
    z = (fast_labels - true_labels) / fast_err
    print(f"  z-scores: mean {z.mean(axis=0)}, std {z.std(axis=0)}")

    # -- 6. Figures -----------------------------------------------------------------
    # The errors are small next to the label range, so plot residuals.
    fig, axes = plt.subplots(
        1, n_labels, figsize=(4.5 * n_labels, 4), layout="constrained"
    )
    for j, ax in enumerate(axes):
        ax.errorbar(
            true_labels[:, j],
            fast_labels[:, j] - true_labels[:, j],
            yerr=fast_err[:, j],
            fmt=".",
            ms=2,
            alpha=0.3,
            color="tab:orange",
            label="fit + infer_latents (with uncertainties)",
        )
        ax.plot(
            true_labels[:, j],
            predicted["flux only"][:, j] - true_labels[:, j],
            "k.",
            ms=2,
            alpha=0.4,
            label="optimize",
        )
        ax.axhline(0, color="tab:green", zorder=-1)
        ax.set(xlabel=f"true label {j}", ylabel=f"predicted − true label {j}")
        ax.legend(fontsize="small", markerscale=4)
    fig.suptitle("Test stars labelled from their spectra alone")
    fig.savefig(OUT / "getting_started_labels.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    grid = np.linspace(-5, 5, 201)
    for j in range(n_labels):
        ax.hist(
            z[:, j],
            bins=np.linspace(-5, 5, 41),
            density=True,
            histtype="step",
            lw=1.5,
            label=f"label {j}",
        )
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ax.set(xlabel="(predicted − true) / predicted uncertainty", ylabel="density")
    ax.legend(fontsize="small")
    fig.savefig(OUT / "getting_started_zscores.png", dpi=120)
    plt.close(fig)
    print(f"\nFigures written to {OUT}")


if __name__ == "__main__":
    main()
