"""APOGEE-like benchmark: Lux (linear, quadratic) against The Cannon, flux-only labels.

Spectra from `pollux.datasets.apogee_like` (BinSpec++ emulator on real DR17 giant
labels, SNR 30–300, bad pixels, unreported noise). Every model trains on the same
stars and labels the test stars from their flux alone; Lux models are calibrated
with `LuxModel.calibrate`. Prints one table (RMSE, bias and z-score spread per label
and SNR bin, each RMSE over the Cramér–Rao bound of the test stars, train and
test wall times) and writes a PNG figure. The bound
(`pollux.datasets.apogee_like_bound`) is the inverse Fisher matrix of each test
star's spectrum, from the emulator's Jacobian and the noise recipe, v_macro
marginalised; a bin's bound is its stars' RMS bound.

    python benchmarks/apogee.py                       # 2,000 train, 5,000 test
    python benchmarks/apogee.py --n-train 500 --n-test 1000 --models cannon lux-linear
    python benchmarks/apogee.py --select              # choose K and transform first
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", False)

import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor  # noqa: E402
from pollux.models.transforms import LinearTransform, QuadraticTransform  # noqa: E402

BINS = ((30, 60), (60, 120), (120, 300))
LABELS = ("Teff", "logg", "[Fe/H]", "[Mg/Fe]")
UNITS = ("K", "dex", "dex", "dex")


def make_data(obs: dict, train: slice, test: slice) -> tuple[PolluxData, PolluxData]:
    """Train and test `PolluxData`, preprocessed with the training set's statistics."""
    flux = np.asarray(obs["flux"], np.float32)
    ferr = np.asarray(obs["flux_err"], np.float32)
    label = np.asarray(obs["label"], np.float32)
    lerr = np.asarray(obs["label_err"], np.float32)
    pre_f = ShiftScalePreprocessor.from_data_percentiles(flux[train])
    pre_l = ShiftScalePreprocessor.from_data(label[train])

    def pack(sl):
        return PolluxData(
            flux=OutputData(flux[sl], err=ferr[sl], preprocessor=pre_f),
            label=OutputData(label[sl], err=lerr[sl], preprocessor=pre_l),
        ).preprocess()

    return pack(train), pack(test)


def lux_model(
    k: int, n_pix: int, n_labels: int, quadratic: bool, quadratic_labels: bool = False
) -> plx.LuxModel:
    """The Lux model of the benchmark: flux and labels (each linear or quadratic in
    the latents), each with a per-dimension extra scatter."""
    model = plx.LuxModel(latent_size=k)
    flux_t = QuadraticTransform if quadratic else LinearTransform
    label_t = QuadraticTransform if quadratic_labels else LinearTransform
    model.register_output(
        "flux",
        flux_t(n_pix, param_priors={"s": dist.HalfNormal(np.ones(n_pix))}),
    )
    model.register_output(
        "label",
        label_t(n_labels, param_priors={"s": dist.HalfNormal(np.ones(n_labels))}),
    )
    return model


def run_lux(model, train, test, *, calibrate: bool, folds: int):
    t0 = time.perf_counter()
    result = model.fit(train, progress=False)
    t_fit = time.perf_counter() - t0
    if calibrate:
        result = model.calibrate(train, result, folds=folds, progress=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = model.infer_latents(test, result.params, names=["flux"])
    pred = model.predict(
        post, result.params, names=["label"], param_cov=result.param_cov
    )
    phys = test.unprocess(pred)["label"]
    mean, err = np.asarray(phys.data), np.asarray(phys.err)
    t_test = time.perf_counter() - t0
    info = {
        "n_iter": result.n_iter,
        "converged": result.converged,
        "t_fit": round(t_fit, 1),
        "t_calibrate": round(t_train - t_fit, 1),
    }
    keys = ("s_fit", "s", "s_ml", "s_lo", "s_hi", "s2_se")
    for name, rec in result.calibration.items():  # s before/after, its precision
        info[f"calibration[{name}]"] = {
            key: np.round(rec[key], 4).tolist()
            for key in (*keys, "z_std_before", "z_std_after")
        }
    if post.multimodal is not None:
        info["multimodal"] = int(np.sum(np.asarray(post.multimodal)))
    return mean, err, t_train, t_test, info


def run_cannon(train, test):
    n_pix, n_labels = train["flux"].size, train["label"].size
    cannon = plx.CannonModel(n_labels=n_labels, flux_size=n_pix)
    t0 = time.perf_counter()
    result = cannon.fit(train, progress=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    phys = test.unprocess(cannon.predict(test, result))["label"]
    t_test = time.perf_counter() - t0
    info = {"n_iter": result.n_iter, "converged": result.converged}
    return np.asarray(phys.data), np.asarray(phys.err), t_train, t_test, info


def run_thecannon(obs: dict, wavelength, train: slice, test: slice):
    """The PyPI Cannon (`TheCannon` 0.7.3, Ho et al. 2017), quadratic, on the same
    stars: physical labels, inverse variances (0 on bad pixels). None if it is not
    installed (``pip install TheCannon==0.7.3 scipy astropy``)."""
    try:
        from TheCannon import dataset, model
    except ImportError:
        return None
    import contextlib
    import io

    def arrays(sl):
        flux = np.array(obs["flux"][sl], dtype=float)
        err = np.array(obs["flux_err"][sl], dtype=float)
        bad = ~np.isfinite(flux) | ~np.isfinite(err)
        ivar = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, err) ** 2)
        return np.where(bad, 1.0, flux), ivar

    tr_flux, tr_ivar = arrays(train)
    te_flux, te_ivar = arrays(test)
    labels = np.array(obs["label"][train], dtype=float)
    ids = np.arange(len(obs["label"]))
    with contextlib.redirect_stdout(io.StringIO()):
        ds = dataset.Dataset(
            wavelength,
            ids[train],
            tr_flux,
            tr_ivar,
            labels,
            ids[test],
            te_flux,
            te_ivar,
        )
        ds.set_label_names(list(LABELS))
        md = model.CannonModel(2, useErrors=False)
        t0 = time.perf_counter()
        md.fit(ds)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        errs, _ = md.infer_labels(ds)
        t_test = time.perf_counter() - t0
    # infer_labels returns its errors in the scaled label units it fits in
    err = np.asarray(errs) * np.asarray(md.scales)
    return np.asarray(ds.test_label_vals), err, t_train, t_test, {}


def scores(mean, err, truth, snr, bound) -> dict:
    """Per SNR bin: RMSE, bias and z-score spread against the true labels, and
    the RMSE over the RMS Cramér–Rao bound of the bin's stars."""
    out = {}
    for lo, hi in BINS:
        sel = (snr >= lo) & (snr < hi) if hi < 300 else (snr >= lo)
        r = mean[sel] - truth[sel]
        rmse = np.sqrt(np.mean(r**2, axis=0))
        out[f"{lo}-{hi}"] = {
            "n": int(sel.sum()),
            "rmse": rmse.tolist(),
            "bias": np.mean(r, axis=0).tolist(),
            "z_std": np.std(r / err[sel], axis=0).tolist(),
            "rmse/bound": (rmse / np.sqrt(np.mean(bound[sel] ** 2, axis=0))).tolist(),
        }
    return out


def fmt(values, digits=(1, 3, 4, 4)) -> str:
    return ", ".join(f"{v:.{d}f}" for v, d in zip(values, digits, strict=True))


def print_table(results: dict, bound: dict) -> None:
    print()
    print("Cramér–Rao bound (RMS over the bin's test stars, v_macro marginalised):")
    for b, values in bound.items():
        print(f"  SNR {b}: {fmt(values)}")
    print()
    print(
        "| model | SNR | n | RMSE "
        + ", ".join(LABELS)
        + " | RMSE / bound | bias | z std | train s | test s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for b, sc in res["scores"].items():
            print(
                f"| {name} | {b} | {sc['n']} | {fmt(sc['rmse'])} | "
                f"{fmt(sc['rmse/bound'], (2, 2, 2, 2))} | {fmt(sc['bias'])} | "
                f"{fmt(sc['z_std'], (2, 2, 2, 2))} | {res['t_train']:.1f} | "
                f"{res['t_test']:.1f} |"
            )


def figure(results: dict, truth: np.ndarray, snr: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.usetex"] = False  # TheCannon's import turns TeX on
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(3, 4, figsize=(16, 11))
    colors = dict(zip(names, ["C0", "C1", "C2", "C3", "C4"], strict=False))
    for j, label in enumerate(LABELS):
        ax = axes[0, j]
        lo, hi = np.percentile(truth[:, j], [0.5, 99.5])
        for name in names:
            ax.scatter(
                truth[:, j],
                results[name]["mean"][:, j],
                s=1,
                alpha=0.3,
                color=colors[name],
                label=name,
            )
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set(
            xlim=(lo, hi),
            ylim=(lo, hi),
            xlabel=f"true {label}",
            ylabel=f"predicted {label}",
        )
        ax = axes[1, j]
        for name in names:
            r = results[name]["mean"][:, j] - truth[:, j]
            ax.scatter(snr, r, s=1, alpha=0.3, color=colors[name])
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="SNR", ylabel=f"Δ{label} [{UNITS[j]}]")
        ax.set_xticks([30, 60, 120, 300], ["30", "60", "120", "300"])
        ax.minorticks_off()
        ax = axes[2, j]
        bins = np.linspace(-5, 5, 51)
        for name in names:
            z = (results[name]["mean"][:, j] - truth[:, j]) / results[name]["err"][:, j]
            ax.hist(
                z,
                bins=bins,
                histtype="step",
                density=True,
                color=colors[name],
                label=f"{name} (std {np.std(z):.2f})",
            )
        x = np.linspace(-5, 5, 200)
        ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k--", lw=0.8)
        ax.set(xlabel=f"z-score {label}")
        ax.legend(fontsize=7)
    axes[0, 0].legend(markerscale=8, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k-linear", type=int, default=24)
    parser.add_argument("--k-quadratic", type=int, default=6)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-calibrate", action="store_true")
    parser.add_argument(
        "--linear-labels",
        action="store_true",
        help="labels linear in the latents in Lux quadratic (default: quadratic)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["cannon", "thecannon", "lux-linear", "lux-quadratic"],
        choices=["cannon", "thecannon", "lux-linear", "lux-quadratic"],
    )
    parser.add_argument(
        "--select",
        action="store_true",
        help="choose the Lux model by pollux.validation.select_model on the "
        "training set (replaces --models' Lux entries by the chosen one)",
    )
    parser.add_argument("--select-linear", type=int, nargs="*", default=[16, 24])
    parser.add_argument("--select-quadratic", type=int, nargs="*", default=[4, 6])
    parser.add_argument(
        "--select-folds",
        type=float,
        default=0.25,
        help="k (>= 2) folds, or the fraction held out in one split",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    obs, truth = plx.datasets.apogee_like(args.n_train + args.n_test, seed=args.seed)
    print(
        f"apogee_like({args.n_train + args.n_test}): {time.perf_counter() - t0:.1f} s"
    )
    train_sl = slice(0, args.n_train)
    test_sl = slice(args.n_train, None)
    train, test = make_data(obs, train_sl, test_sl)
    true_labels = truth["label"][test_sl]
    snr = truth["snr"][test_sl]
    t0 = time.perf_counter()
    test_truth = {k: truth[k][test_sl] for k in ("label", "vmacro")}
    test_truth.update({k: truth[k] for k in ("unreported_pixels", "unreported_sigma")})
    bound = plx.datasets.apogee_like_bound(test_truth, obs["flux_err"][test_sl])
    bound_bins = {}
    for lo, hi in BINS:
        sel = (snr >= lo) & (snr < hi) if hi < 300 else (snr >= lo)
        bound_bins[f"{lo}-{hi}"] = np.sqrt(np.mean(bound[sel] ** 2, axis=0)).tolist()
    print(f"Cramér–Rao bound of the test stars: {time.perf_counter() - t0:.1f} s")
    n_pix, n_labels = train["flux"].size, train["label"].size

    results = {}
    models = list(args.models)
    if args.select:
        candidates = {
            **{
                f"linear K={k}": partial(lux_model, k, n_pix, n_labels, False)
                for k in args.select_linear
            },
            **{
                f"quadratic K={k}": partial(lux_model, k, n_pix, n_labels, True, True)
                for k in args.select_quadratic
            },
        }
        folds = args.select_folds
        t0 = time.perf_counter()
        selection = plx.validation.select_model(
            candidates, train, folds=int(folds) if folds >= 2 else folds, progress=False
        )
        print(f"\nselect_model on the training set ({time.perf_counter() - t0:.0f} s):")
        print(selection.table())
        kind, k = selection.best.split(" K=")
        models = [m for m in models if not m.startswith("lux")] + [f"lux-{kind}"]
        if kind == "linear":
            args.k_linear = int(k)
        else:
            args.k_quadratic = int(k)
    for name in models:
        if name == "cannon":
            out = run_cannon(train, test)
            key = "Cannon (pollux, quadratic)"
        elif name == "thecannon":
            out = run_thecannon(obs, truth["wavelength"], train_sl, test_sl)
            if out is None:
                print("TheCannon (PyPI) is not installed: skipped")
                continue
            key = "TheCannon 0.7.3 (PyPI, quadratic)"
        else:
            quadratic = name == "lux-quadratic"
            k = args.k_quadratic if quadratic else args.k_linear
            model = lux_model(
                k, n_pix, n_labels, quadratic, quadratic and not args.linear_labels
            )
            out = run_lux(
                model, train, test, calibrate=not args.no_calibrate, folds=args.folds
            )
            key = f"Lux {'quadratic' if quadratic else 'linear'} K={k}"
        mean, err, t_train, t_test, info = out
        results[key] = {
            "mean": mean,
            "err": err,
            "t_train": t_train,
            "t_test": t_test,
            "info": info,
            "scores": scores(mean, err, true_labels, snr, bound),
        }
        print(f"{key}: train {t_train:.1f} s, test {t_test:.1f} s, {info}", flush=True)
    print_table(results, bound_bins)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "apogee_benchmark.png"
    figure(results, true_labels, snr, path)
    print(f"\nfigure: {path}")
    if args.json:
        slim = {
            k: {kk: vv for kk, vv in v.items() if kk not in ("mean", "err")}
            for k, v in results.items()
        }
        slim["bound"] = bound_bins
        args.json.write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
