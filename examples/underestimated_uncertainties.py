"""When the reported flux errors are too small: learning an extra scatter ``s``.

Real spectra often have pixels whose errors miss something (telluric or sky lines,
imperfect models). Here we simulate such a survey: the flux gets additional Normal
noise whose standard deviation varies periodically with pixel, and we do not tell
the model about it. Then we compare two Lux models trained on half of the stars:

* model 1 takes the reported errors at face value;
* model 2 has a parameter ``s`` per pixel, added in quadrature to the reported
  errors and learned with the other parameters (prior: HalfNormal(5)).

Both models label the other half of the stars. We compare with the true labels,
and check that model 2's ``s`` recovers the injected scatter.

The simulation and model set-up come from `pollux.studies.underestimated` (``pollux demo`` on the
command line runs the same study with a summary table). Usage::

    python examples/underestimated_uncertainties.py                # tutorial settings
    python examples/underestimated_uncertainties.py --steps 4096   # quicker

Figures go to ``examples/output/``.
"""

import argparse
from pathlib import Path

import numpy as np

from pollux.studies import underestimated as demo

OUT = Path(__file__).resolve().parent / "output"


def main(num_steps: int) -> None:
    # Double precision, before any JAX array exists.
    demo.enable_float64()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)

    # -- The survey --------------------------------------------------------------
    # 2048 stars; labels and flux linear in 8 latents; 128 pixels; extra flux
    # scatter 2 cos²(2π p / 32) that the reported errors leave out. The first
    # half trains, the second half is labelled. (Seed 42: the tutorial's stars.)
    study = demo.simulate(seed=42)
    true = study.true_test_labels
    print(f"{len(study.train)} training stars, {len(study.test)} test stars")
    print(
        f"injected extra scatter: {study.systematic_err.min():.2f} to "
        f"{study.systematic_err.max():.2f}; reported flux errors: 0.01 to 0.1"
    )

    # -- Two models, trained and applied with MAP (numpyro) ------------------------
    models = demo.build_models(study)  # {"model 1": no s, "model 2": s per pixel}
    print(f"\nMAP fits with {num_steps} Adam steps each")
    flux_only_labels = {}
    for name, model in models.items():
        params, losses, seconds = demo.train_map(model, study.train, num_steps)
        print(f"\n{name}: trained in {seconds:.1f} s, final loss {losses[-1]:.1f}")

        # With the trained transforms fixed, infer each test star's latents.
        # Using the test labels as well (as the published tutorial does) is the
        # easy case; the flux alone is what labelling new stars looks like.
        for mode, names in [("labels+flux", None), ("flux only", ["flux"])]:
            labels, _ = demo.apply_map(model, study.test, params, num_steps, names)
            rmse = demo.label_rmse(labels, true)
            print(f"  test labels from {mode:11s}: RMSE per label {rmse}")
            if mode == "flux only":
                flux_only_labels[name] = labels

        if "s" in params["flux"]:
            # s is learned in model units; the flux preprocessor converts it back.
            flux_pre = study.data["flux"].preprocessor
            s_map = np.asarray(flux_pre.inverse_transform_err(params["flux"]["s"]))
            r = np.corrcoef(s_map, study.systematic_err)[0, 1]
            print(f"  learned s vs injected scatter: correlation {r:.4f}")

    # -- The closed-form path for model 2 -------------------------------------------
    # EM training (latents integrated out), then the exact latent posterior of
    # each test star from its flux, and labels with uncertainties.
    params, labels, label_err, t_fit, t_apply = demo.apply_fast(
        models["model 2"], study.train, study.test
    )
    s_em = np.asarray(
        study.data["flux"].preprocessor.inverse_transform_err(params["flux"]["s"])
    )
    z = (labels - true) / label_err
    print(f"\nmodel 2 with fit / infer_latents / predict ({t_fit + t_apply:.1f} s):")
    print(
        f"  test labels from flux only : RMSE per label {demo.label_rmse(labels, true)}"
    )
    print(f"  z-score spread per label (1 = calibrated): {z.std(axis=0)}")
    r = np.corrcoef(s_em, study.systematic_err)[0, 1]
    print(f"  learned s vs injected scatter: correlation {r:.4f}")

    # -- Figures ------------------------------------------------------------------------
    pix = np.arange(len(study.systematic_err))
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(pix, study.systematic_err, color="0.7", lw=4, label="injected")
    ax.plot(pix, s_map, label="learned, optimize")
    ax.plot(pix, s_em, "--", label="learned, fit (EM)")
    ax.set(xlabel="spectral pixel", ylabel="extra flux scatter")
    ax.legend(fontsize="small", loc="upper center", ncol=3)
    ax.set_ylim(top=2.7)
    fig.savefig(OUT / "underestimated_scatter.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(8, 7), layout="constrained")
    for row, (name, pred) in zip(axes, flux_only_labels.items(), strict=True):
        for j, ax in enumerate(row):
            ax.plot(pred[:, j], true[:, j], "k.", ms=2, alpha=0.4)
            ax.axline((0, 0), slope=1, color="tab:green", zorder=-1)
            ax.set(
                xlabel=f"predicted label {j}",
                ylabel=f"true label {j}",
                title=f"{name} (flux only)",
            )
    fig.savefig(OUT / "underestimated_labels.png", dpi=120)
    plt.close(fig)
    print(f"\nFigures written to {OUT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=demo.TUTORIAL_NUM_STEPS,
        help="Adam steps per MAP fit (default: the tutorial's 32768)",
    )
    main(parser.parse_args().steps)
