"""Tests of `pollux.plot`: PNG files, panels, annotations and argument checks."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from pollux import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 120  # of the written PNGs


def read_png(path) -> np.ndarray:
    """Check that ``path`` is a non-empty PNG file and return its pixels."""
    assert path.is_file()
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert min(image.shape[:2]) > 200
    return image


def assert_size(image: np.ndarray, fig: Figure) -> None:
    """The image has the figure's size in pixels."""
    width, height = fig.get_size_inches() * DPI
    assert image.shape[:2] == (round(height), round(width))


def annotation(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts)


def number(text: str, key: str) -> float:
    match = re.search(rf"{key} = (\S+)", text)
    assert match, f"{key!r} not in {text!r}"
    return float(match.group(1))


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    ref = np.column_stack([rng.normal(4800, 300, 60), rng.normal(2.5, 0.8, 60)])
    err = np.column_stack([np.full(60, 50.0), np.full(60, 0.1)])
    pred = ref + rng.normal(size=ref.shape) * err + [20.0, -0.05]
    return pred, ref, err


# -- label_comparison ---------------------------------------------------------------
def test_label_comparison_png_and_statistics(labels, tmp_path):
    pred, ref, err = labels
    pred = pred.copy()
    pred[3, 0] = np.nan
    err = err.copy()
    err[5, 1], err[6, 1] = np.nan, np.inf  # drawn without error bars
    path = tmp_path / "new" / "folder" / "labels.png"
    fig = plot.label_comparison(
        pred, ref, err=err, names=["Teff", "logg"], path=path, title="test"
    )
    image = read_png(path)
    assert_size(image, fig)
    assert image.shape[1] > image.shape[0]  # two panels side by side
    assert len(fig.axes) == 2
    for j, ax in enumerate(fig.axes):
        ok = np.isfinite(pred[:, j]) & np.isfinite(ref[:, j])
        diff = pred[ok, j] - ref[ok, j]
        text = annotation(ax)
        assert number(text, "N") == ok.sum()
        assert number(text, "bias") == pytest.approx(np.mean(diff), rel=1e-3)
        assert number(text, "RMSE") == pytest.approx(
            np.sqrt(np.mean(diff**2)), rel=1e-3
        )
        assert ax.get_xlim() == ax.get_ylim()
        assert ax.get_xlabel().endswith(["Teff", "logg"][j])
    assert "(1 skipped)" in annotation(fig.axes[0])
    assert "skipped" not in annotation(fig.axes[1])


def test_label_comparison_single_label_jax_and_all_nan():
    ref = jnp.linspace(0.0, 1.0, 10)
    fig = plot.label_comparison(ref + 0.1, ref, names="mh")
    assert len(fig.axes) == 1
    assert number(annotation(fig.axes[0]), "bias") == pytest.approx(0.1, rel=1e-3)
    fig = plot.label_comparison(np.full(5, np.nan), np.arange(5.0))
    assert "N = 0 (5 skipped)" in annotation(fig.axes[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reference": np.zeros((60, 3))}, ValueError, "reference"),
        ({"err": np.ones((59, 2))}, ValueError, "err"),
        ({"err": -np.ones((60, 2))}, ValueError, "negative"),
        ({"names": ["a"]}, ValueError, "names"),
        ({"names": 3}, TypeError, "names"),
        ({"predicted": np.zeros((60, 2, 1))}, ValueError, "predicted"),
        ({"predicted": np.zeros((0, 2))}, ValueError, "empty"),
        ({"predicted": [["a", "b"]]}, TypeError, "predicted"),
        ({"path": 3}, TypeError, "path"),
        ({"title": 3}, TypeError, "title"),
    ],
)
def test_label_comparison_bad_input(labels, kwargs, error, match):
    pred, ref, _ = labels
    args = {"predicted": pred, "reference": ref, **kwargs}
    with pytest.raises(error, match=rf"label_comparison\(.*{match}"):
        plot.label_comparison(args.pop("predicted"), args.pop("reference"), **args)


# -- residuals_vs_snr ----------------------------------------------------------------
def test_residuals_vs_snr(labels, tmp_path):
    pred, ref, _ = labels
    snr = np.geomspace(5, 500, 60)
    snr[0], snr[1], snr[2] = 0.0, -3.0, np.nan
    path = tmp_path / "snr.png"
    fig = plot.residuals_vs_snr(pred, ref, snr, names=["Teff", "logg"], path=path)
    assert_size(read_png(path), fig)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert "N = 57 (3 skipped)" in annotation(ax)
        assert ax.collections  # the 16-84 % band
    with pytest.raises(ValueError, match=r"residuals_vs_snr\(snr"):
        plot.residuals_vs_snr(pred, ref, snr[:-1])
    with pytest.raises(ValueError, match=r"residuals_vs_snr\(names"):
        plot.residuals_vs_snr(pred, ref, snr, names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"residuals_vs_snr\(n_bins"):
        plot.residuals_vs_snr(pred, ref, snr, n_bins=0)


# -- zscore_histograms ---------------------------------------------------------------
def test_zscore_histograms(labels, tmp_path):
    pred, ref, err = labels
    err = err.copy()
    err[0, 1] = 0.0  # zero uncertainty: infinite z, skipped
    ref_err = np.full_like(err, 0.0)
    ref_err[1, 0] = np.nan
    path = tmp_path / "z.png"
    fig = plot.zscore_histograms(pred, err, ref, reference_err=ref_err, path=path)
    assert_size(read_png(path), fig)
    assert len(fig.axes) == 2
    for j, ax in enumerate(fig.axes):
        with np.errstate(divide="ignore"):
            z = (pred[:, j] - ref[:, j]) / np.hypot(err[:, j], ref_err[:, j])
        z = z[np.isfinite(z)]
        text = annotation(ax)
        assert "N = 59 (1 skipped)" in text
        assert number(text, "std") == pytest.approx(np.std(z), rel=1e-2)
        mad = np.median(np.abs(z - np.median(z)))
        assert number(text, "robust std") == pytest.approx(1.4826 * mad, rel=1e-2)
    with pytest.raises(ValueError, match=r"zscore_histograms\(reference_err"):
        plot.zscore_histograms(pred, err, ref, reference_err=np.ones(3))
    with pytest.raises(ValueError, match=r"zscore_histograms\(err"):
        plot.zscore_histograms(pred, err.T, ref)


# -- loss_curve ----------------------------------------------------------------------
def test_loss_curve_log_and_linear(tmp_path):
    losses = 1000.0 + 500.0 * np.exp(-np.arange(50) / 4.0)
    losses[10] = np.inf
    path = tmp_path / "loss.png"
    fig = plot.loss_curve(SimpleNamespace(losses=losses), path=path)
    image = read_png(path)
    assert_size(image, fig)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    text = annotation(ax)
    assert "values = 49 (1 skipped)" in text
    assert number(text, "final") == pytest.approx(losses[-1])

    fig = plot.loss_curve(jnp.linspace(10.0, 5.0, 20))
    assert fig.axes[0].get_yscale() == "linear"
    fig = plot.loss_curve([3.0])  # a single value
    assert number(annotation(fig.axes[0]), "final") == 3.0


def test_loss_curve_bad_input():
    with pytest.raises(ValueError, match=r"loss_curve\(losses.*1-D"):
        plot.loss_curve(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"loss_curve\(losses.*empty"):
        plot.loss_curve([])
    with pytest.raises(TypeError, match=r"loss_curve\(losses"):
        plot.loss_curve(SimpleNamespace(losses="abc"))


# -- scatter_vs_wavelength -----------------------------------------------------------
def apogee_grid() -> np.ndarray:
    """Three detectors with gaps, log-uniform steps."""
    wl = 10 ** (4.179 + 6e-6 * np.arange(8575))
    chips = (wl < 15800) | ((wl > 15860) & (wl < 16430)) | (wl > 16480)
    return wl[chips & (wl < 16950)][::8]


def test_scatter_vs_wavelength_breaks_gaps(tmp_path):
    wl = apogee_grid()
    rng = np.random.default_rng(1)
    s = 10 ** rng.uniform(-4, -1, wl.size)
    s[5] = np.nan
    path = tmp_path / "s.png"
    fig = plot.scatter_vs_wavelength(s, wl, err_median=0.01, path=path)
    image = read_png(path)
    assert_size(image, fig)
    assert image.shape[1] > 2 * image.shape[0]
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    x = ax.lines[0].get_xdata()
    assert np.sum(np.isnan(x)) == 2  # two gaps between three detectors
    assert "pixels" in annotation(ax)
    assert "(1 skipped)" in annotation(ax)

    fig = plot.scatter_vs_wavelength(np.linspace(0.01, 0.02, 30))
    assert fig.axes[0].get_xlabel() == "pixel"
    assert fig.axes[0].get_yscale() == "linear"
    assert not np.isnan(fig.axes[0].lines[0].get_xdata()).any()


def test_scatter_vs_wavelength_bad_input():
    with pytest.raises(ValueError, match=r"scatter_vs_wavelength\(wavelength"):
        plot.scatter_vs_wavelength(np.ones(10), np.arange(9.0))
    with pytest.raises(ValueError, match=r"scatter_vs_wavelength\(err_median"):
        plot.scatter_vs_wavelength(np.ones(10), err_median=np.ones(3))
    with pytest.raises(ValueError, match=r"scatter_vs_wavelength\(s"):
        plot.scatter_vs_wavelength(np.ones((2, 10)))


# -- residual_spectra ----------------------------------------------------------------
@pytest.fixture
def spectra():
    wl = apogee_grid()
    rng = np.random.default_rng(2)
    model = 1.0 - 0.2 * rng.random((10, wl.size))
    err = np.full(model.shape, 0.01)
    flux = model + err * rng.normal(size=model.shape)
    flux[0, :7] = np.nan
    err[0, 10:12] = np.inf
    return wl, flux, model, err


def test_residual_spectra(spectra, tmp_path):
    wl, flux, model, err = spectra
    path = tmp_path / "spectra.png"
    fig = plot.residual_spectra(
        wl, flux, model, err=err, model_err=0.5 * err, max_stars=3, path=path
    )
    image = read_png(path)
    assert_size(image, fig)
    assert len(fig.axes) == 6  # two per star
    assert "star 0: pixels" in annotation(fig.axes[0])
    assert "(9 skipped)" in annotation(fig.axes[0])
    data_line = fig.axes[0].lines[0].get_ydata()
    assert np.sum(np.isnan(data_line)) == 9 + 2  # masked pixels and gaps
    assert fig.axes[1].get_ylabel() == "residual / σ"

    fig = plot.residual_spectra(None, flux[3], model[3])  # one star, no errors
    assert len(fig.axes) == 2
    assert fig.axes[1].get_ylabel() == "residual"
    fig = plot.residual_spectra(wl, flux, model, ids=[9, -1, 4])
    assert len(fig.axes) == 6
    assert "star 9" in annotation(fig.axes[0])
    assert "star 9" in annotation(fig.axes[2])  # row -1


def test_residual_spectra_bad_input(spectra):
    wl, flux, model, err = spectra
    with pytest.raises(ValueError, match=r"residual_spectra\(model_flux"):
        plot.residual_spectra(wl, flux, model[:-1])
    with pytest.raises(ValueError, match=r"residual_spectra\(wavelength"):
        plot.residual_spectra(wl[:-1], flux, model)
    with pytest.raises(ValueError, match=r"residual_spectra\(ids"):
        plot.residual_spectra(wl, flux, model, ids=[10])
    with pytest.raises(TypeError, match=r"residual_spectra\(ids"):
        plot.residual_spectra(wl, flux, model, ids=[1.5])
    with pytest.raises(TypeError, match=r"residual_spectra\(max_stars"):
        plot.residual_spectra(wl, flux, model, max_stars=2.0)
    with pytest.raises(ValueError, match=r"residual_spectra\(err.*negative"):
        plot.residual_spectra(wl, flux, model, err=-err)


# -- latent_corner -------------------------------------------------------------------
def test_latent_corner_colour_and_subsample(tmp_path):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6000, 3))
    z[0, 1] = np.nan
    colour = z[:, 0] + 0.1 * rng.normal(size=6000)
    colour[1] = np.inf
    path = tmp_path / "corner.png"
    fig = plot.latent_corner(z, color=colour, color_label="Teff", path=path)
    image = read_png(path)
    assert_size(image, fig)
    assert len(fig.axes) == 3 * 4 // 2 + 1  # lower triangle and colour bar
    assert fig.axes[-1].get_ylabel() == "Teff"
    scatters = [ax for ax in fig.axes[:-1] if ax.collections]
    offsets = [len(ax.collections[0].get_offsets()) for ax in scatters]
    assert len(offsets) == 3
    assert all(n <= 5000 for n in offsets)
    text = annotation(fig.axes[0])  # the first diagonal panel
    assert "(2 skipped)" in text
    assert "5000 stars drawn" in text
    again = plot.latent_corner(z, color=colour)
    assert np.array_equal(
        fig.axes[1].collections[0].get_offsets(),
        again.axes[1].collections[0].get_offsets(),
    )


def test_latent_corner_max_dims_and_bad_input():
    z = np.random.default_rng(4).normal(size=(40, 5))
    fig = plot.latent_corner(z, max_dims=2)
    assert len(fig.axes) == 3
    assert "first 2 of 5 dimensions" in annotation(fig.axes[0])
    assert len(plot.latent_corner(z[:, 0]).axes) == 1
    with pytest.raises(ValueError, match=r"latent_corner\(color"):
        plot.latent_corner(z, color=np.ones(39))
    with pytest.raises(ValueError, match=r"latent_corner\(max_dims"):
        plot.latent_corner(z, max_dims=0)
    with pytest.raises(ValueError, match=r"latent_corner\(latents"):
        plot.latent_corner(np.ones((2, 2, 2)))


# -- Without pyplot ------------------------------------------------------------------
def test_threads(labels, tmp_path):
    pred, ref, _ = labels
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        figs = list(pool.map(lambda p: plot.label_comparison(pred, ref, path=p), paths))
    for fig, path in zip(figs, paths, strict=True):
        assert_size(read_png(path), fig)


_NO_PYPLOT_SCRIPT = """
import json, sys
import numpy as np
from pollux import plot
fig = plot.loss_curve(np.arange(5.0), path=sys.argv[1])
print("RESULT" + json.dumps({"pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_no_pyplot(tmp_path, run_fresh):
    path = tmp_path / "loss.png"
    assert run_fresh(_NO_PYPLOT_SCRIPT, str(path), timeout=120) == {"pyplot": False}
    read_png(path)
