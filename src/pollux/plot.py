"""Diagnostic figures of fits and predictions, written as PNG files.

Every function builds a `matplotlib.figure.Figure` drawn by the Agg canvas, without
pyplot and its global state: it works headless, in threads and whatever backend
the user has selected, and nothing is left open. Each returns the figure and, when
``path`` is given, writes it there as a PNG (creating the parent folders).

Inputs are plain arrays (NumPy or JAX) in physical units. Non-finite entries (and
other values that cannot be drawn, such as non-positive SNR) are skipped and
counted in the panels' annotations. Arrays of labels are ``(N, L)``: one row per
star, one column (and one panel) per label; a 1-D array is a single label.

- `label_comparison`: predicted against reference labels, with bias and RMSE.
- `residuals_vs_snr`: prediction residuals against signal-to-noise ratio.
- `zscore_histograms`: residuals over their uncertainty against a unit Gaussian.
- `loss_curve`: the objective per iteration of a fit.
- `scatter_vs_wavelength`: the learned extra scatter per pixel.
- `residual_spectra`: data, model and residuals of a few spectra.
- `latent_corner`: corner plot of the latent vectors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from ._params import check_positive_int

__all__ = [
    "label_comparison",
    "latent_corner",
    "loss_curve",
    "residual_spectra",
    "residuals_vs_snr",
    "scatter_vs_wavelength",
    "zscore_histograms",
]

_DPI = 120
# A step in wavelength this many times the typical one is a gap (e.g. between the
# detectors of APOGEE); lines are not drawn across it.
_GAP_FACTOR = 5.0
# Values span decades when their 95th percentile exceeds the 5th this many times.
_DECADES_RATIO = 100.0
_MAX_POINTS = 5000  # scatter points drawn per corner panel
_MIN_PER_BIN = 3  # stars needed for the percentiles of an SNR bin
_MAD_TO_STD = 1.4826


# -- Checks of the arguments ------------------------------------------------------
def _as_array(x: Any, name: str, call: str) -> np.ndarray:
    """``x`` as a non-empty float array, or `TypeError` / `ValueError`."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        msg = f"{call}({name}=...): expected a numeric array, got {type(x).__name__}"
        raise TypeError(msg) from err
    if arr.dtype.kind not in "biuf":
        msg = f"{call}({name}=...): expected a numeric array, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.size == 0:
        msg = f"{call}({name}=...): the array is empty (shape {arr.shape})"
        raise ValueError(msg)
    return arr.astype(float)


def _as_1d(x: Any, name: str, call: str) -> np.ndarray:
    """``x`` as a non-empty 1-D float array."""
    arr = _as_array(x, name, call)
    if arr.ndim != 1:
        msg = f"{call}({name}=...): expected a 1-D array, got shape {arr.shape}"
        raise ValueError(msg)
    return arr


def _as_2d(x: Any, name: str, call: str, *, row: bool = False) -> np.ndarray:
    """``x`` as a non-empty 2-D float array; a 1-D array is one column (or row)."""
    arr = _as_array(x, name, call)
    if arr.ndim == 1:
        return arr[None, :] if row else arr[:, None]
    if arr.ndim != 2:
        msg = f"{call}({name}=...): expected a 1-D or 2-D array, got shape {arr.shape}"
        raise ValueError(msg)
    return arr


def _like(
    x: Any, name: str, shape: tuple[int, ...], of: str, call: str, *, row: bool = False
) -> np.ndarray | None:
    """``x`` (optional) as a float array of ``shape``, the shape of argument ``of``.

    With a 2-D ``shape``, a 1-D ``x`` is one column (or one ``row``).
    """
    if x is None:
        return None
    if len(shape) == 2:
        arr = _as_2d(x, name, call, row=row)
    else:
        arr = _as_1d(x, name, call)
    if arr.shape != shape:
        msg = (
            f"{call}({name}=...): shape {arr.shape} does not match "
            f"{of} with shape {shape}"
        )
        raise ValueError(msg)
    return arr


def _errors(
    x: Any, name: str, shape: tuple[int, ...], of: str, call: str, *, row: bool = False
) -> np.ndarray | None:
    """Optional uncertainties of ``shape`` (as `_like`): no negative values."""
    arr = _like(x, name, shape, of, call, row=row)
    if arr is not None and np.any(arr < 0):
        msg = f"{call}({name}=...): uncertainties must not be negative"
        raise ValueError(msg)
    return arr


def _names(names: Any, n: int, call: str) -> list[str]:
    """One name per label: ``names`` (a string for a single label), or defaults."""
    if names is None:
        return [f"label {i}" for i in range(n)]
    if isinstance(names, str):
        out = [names]
    elif isinstance(names, Iterable):
        out = list(names)
    else:
        msg = f"{call}(names=...): expected a sequence of strings, got {type(names).__name__}"
        raise TypeError(msg)
    if len(out) != n:
        msg = f"{call}(names=...): expected {n} names (one per label), got {len(out)}"
        raise ValueError(msg)
    return [str(name) for name in out]


def _output(path: Any, title: Any, call: str) -> Path | None:
    """Check ``path`` and ``title``; returns ``path`` as a `Path` (or None)."""
    if title is not None and not isinstance(title, str):
        msg = f"{call}(title=...): expected a string, got {type(title).__name__}"
        raise TypeError(msg)
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike):
        msg = f"{call}(path=...): expected a str or os.PathLike, got {type(path).__name__}"
        raise TypeError(msg)
    return Path(path)


# -- Drawing ----------------------------------------------------------------------
def _figure(width: float, height: float, title: str | None) -> Figure:
    """A new figure with an Agg canvas and constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    if title is not None:
        fig.suptitle(title)
    return fig


def _panels(
    n: int, width: float, height: float, title: str | None
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels of ``width`` x ``height`` inches, three a row."""
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = _figure(width * ncols, height * nrows, title)
    grid = fig.add_gridspec(nrows, ncols)
    return fig, [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(n)]


def _annotate(ax: Axes, lines: Sequence[str]) -> None:
    """Text in the top left corner of ``ax``."""
    ax.text(
        0.04,
        0.96,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize="small",
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )


def _counts(n: int, skipped: int, what: str = "N") -> str:
    """``N = n`` and, if any, how many entries were skipped."""
    return f"{what} = {n}" + (f" ({skipped} skipped)" if skipped else "")


def _n_bins(n: int) -> int:
    """Number of histogram bins for ``n`` values."""
    return int(np.clip(np.sqrt(n), 10, 50))


def _spans_decades(values: np.ndarray) -> bool:
    """Whether positive ``values`` span a factor of ``_DECADES_RATIO`` or more."""
    if values.size < 2:
        return False
    low, high = np.percentile(values, [5, 95])
    return bool(high >= _DECADES_RATIO * low)


def _line(x: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """``x`` and ``ys`` sorted by ``x``, with NaN inserted where ``x`` jumps.

    Pixels without a finite ``x`` are dropped; a step of ``x`` larger than
    ``_GAP_FACTOR`` times the median step is a gap that lines do not cross.
    """
    keep = np.isfinite(x)
    order = np.argsort(x[keep], kind="stable")
    x = x[keep][order]
    ys = tuple(y[keep][order] for y in ys)
    steps = np.diff(x)
    positive = steps[steps > 0]
    if positive.size == 0:
        return (x, *ys)
    gaps = np.flatnonzero(steps > _GAP_FACTOR * np.median(positive)) + 1
    return tuple(np.insert(a, gaps, np.nan) for a in (x, *ys))


def _save(fig: Figure, path: Path | None) -> Figure:
    """Write ``fig`` to ``path`` as a PNG (if given); returns ``fig``."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=_DPI)
    return fig


# -- Labels -----------------------------------------------------------------------
def label_comparison(
    predicted: ArrayLike,
    reference: ArrayLike,
    *,
    err: ArrayLike | None = None,
    names: Sequence[str] | str | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot predicted against reference labels, one square panel per label.

    Each panel shows the stars (with the predicted uncertainties as error bars),
    the 1:1 line, and the number of stars ``N``, the bias (mean of predicted
    minus reference) and the root-mean-square difference ``RMSE``. Stars with a
    non-finite predicted or reference value are skipped and counted.

    Parameters
    ----------
    predicted, reference
        ``(N, L)`` labels (1-D: a single label), in the same units.
    err
        ``(N, L)`` uncertainties of ``predicted``; non-finite ones are not drawn.
    names
        One name per label, for the axis labels.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, one axes per label.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([[4800.0, 2.5], [5000.0, 3.0], [5200.0, np.nan]])
    >>> fig = label_comparison(ref + 10.0, ref, names=["Teff", "logg"])
    >>> len(fig.axes)
    2
    """
    call = "label_comparison"
    out = _output(path, title, call)
    pred = _as_2d(predicted, "predicted", call)
    ref = _like(reference, "reference", pred.shape, "predicted", call)
    sigma = _errors(err, "err", pred.shape, "predicted", call)
    labels = _names(names, pred.shape[1], call)

    fig, axes = _panels(len(labels), 3.4, 3.4, title)
    for j, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        x, y = ref[:, j], pred[:, j]
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        yerr = None
        if sigma is not None:  # error bars of non-finite length are not drawn
            yerr = np.where(np.isfinite(sigma[ok, j]), sigma[ok, j], np.nan)
        lines = [_counts(x.size, int(np.sum(~ok)))]
        if x.size:
            diff = y - x
            lines += [
                f"bias = {np.mean(diff):.4g}",
                f"RMSE = {np.sqrt(np.mean(diff**2)):.4g}",
            ]
            ax.errorbar(
                x, y, yerr=yerr, fmt="o", ms=2.5, alpha=0.6, elinewidth=0.6, zorder=2
            )
            low, high = min(x.min(), y.min()), max(x.max(), y.max())
        else:
            low, high = 0.0, 1.0
        pad = 0.05 * (high - low) if high > low else max(abs(high), 1.0) * 0.05
        limits = (low - pad, high + pad)
        ax.plot(limits, limits, color="k", lw=0.8, zorder=1)
        ax.set(
            xlim=limits,
            ylim=limits,
            xlabel=f"reference {name}",
            ylabel=f"predicted {name}",
        )
        ax.set_aspect("equal", adjustable="box")
        _annotate(ax, lines)
    return _save(fig, out)


def residuals_vs_snr(
    predicted: ArrayLike,
    reference: ArrayLike,
    snr: ArrayLike,
    *,
    names: Sequence[str] | str | None = None,
    n_bins: int = 8,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot predicted minus reference labels against SNR, one panel per label.

    The SNR axis is logarithmic. The running median and the 16–84 % band of the
    residuals are drawn in ``n_bins`` bins equally spaced in log SNR (bins with
    fewer than three stars are left out). Stars with a non-finite residual or a
    non-finite or non-positive SNR are skipped and counted.

    Parameters
    ----------
    predicted, reference
        ``(N, L)`` labels (1-D: a single label), in the same units.
    snr
        ``(N,)`` signal-to-noise ratio of each star.
    names
        One name per label, for the axis labels.
    n_bins
        Number of SNR bins of the running percentiles.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, one axes per label.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.linspace(-1.0, 0.5, 20)
    >>> fig = residuals_vs_snr(ref + 0.05, ref, np.geomspace(10, 300, 20))
    >>> len(fig.axes)
    1
    """
    call = "residuals_vs_snr"
    out = _output(path, title, call)
    pred = _as_2d(predicted, "predicted", call)
    ref = _like(reference, "reference", pred.shape, "predicted", call)
    snr_ = _like(snr, "snr", pred.shape[:1], "the rows of predicted", call)
    labels = _names(names, pred.shape[1], call)
    bins = check_positive_int(n_bins, f"{call}(n_bins=...)")

    fig, axes = _panels(len(labels), 4.2, 3.2, title)
    snr_ok = np.isfinite(snr_) & (snr_ > 0)
    with np.errstate(invalid="ignore"):  # inf − inf: skipped
        residuals = pred - ref
    for j, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        resid = residuals[:, j]
        ok = snr_ok & np.isfinite(resid)
        x, y = snr_[ok], resid[ok]
        ax.axhline(0.0, color="k", lw=0.8)
        if x.size:
            ax.plot(x, y, "o", ms=2.5, alpha=0.5, color="C0")
            edges = np.geomspace(x.min(), x.max(), bins + 1)
            which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
            filled = np.array(
                [b for b in range(bins) if np.sum(which == b) >= _MIN_PER_BIN], int
            )
            if filled.size:
                centres = np.sqrt(edges[filled] * edges[filled + 1])
                q16, q50, q84 = np.array(
                    [np.percentile(y[which == b], [16, 50, 84]) for b in filled]
                ).T
                ax.fill_between(centres, q16, q84, color="C1", alpha=0.3, lw=0)
                ax.plot(centres, q50, "-o", color="C1", ms=3, label="median, 16–84 %")
                ax.legend(loc="lower right", fontsize="small")
        ax.set(xscale="log", xlabel="SNR", ylabel=f"predicted − reference {name}")
        _annotate(ax, [_counts(x.size, int(np.sum(~ok)))])
    return _save(fig, out)


def zscore_histograms(
    predicted: ArrayLike,
    err: ArrayLike,
    reference: ArrayLike,
    *,
    reference_err: ArrayLike | None = None,
    names: Sequence[str] | str | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot histograms of the z-scores of predicted labels, one panel per label.

    ``z = (predicted − reference) / sqrt(err² + reference_err²)``, with the unit
    Gaussian overlaid; the standard deviation of ``z`` and its robust estimate
    ``1.4826 · MAD`` (median absolute deviation) are annotated: both are near 1
    when the uncertainties are right. The histogram is normalised by the number
    of all stars, so that the curve is comparable even when some ``z`` fall
    outside the drawn range (they are counted). Non-finite ``z`` (including a
    zero total uncertainty) are skipped and counted.

    Parameters
    ----------
    predicted
        ``(N, L)`` predicted labels (1-D: a single label).
    err
        ``(N, L)`` uncertainties of ``predicted``.
    reference
        ``(N, L)`` reference labels, in the units of ``predicted``.
    reference_err
        ``(N, L)`` uncertainties of ``reference``, added in quadrature.
    names
        One name per label, for the axis labels.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, one axes per label.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=(50, 2))
    >>> fig = zscore_histograms(ref + rng.normal(size=(50, 2)), np.ones((50, 2)), ref)
    >>> len(fig.axes)
    2
    """
    call = "zscore_histograms"
    out = _output(path, title, call)
    pred = _as_2d(predicted, "predicted", call)
    sigma = _errors(err, "err", pred.shape, "predicted", call)
    ref = _like(reference, "reference", pred.shape, "predicted", call)
    ref_sigma = _errors(reference_err, "reference_err", pred.shape, "predicted", call)
    labels = _names(names, pred.shape[1], call)

    variance = sigma**2 if ref_sigma is None else sigma**2 + ref_sigma**2
    with np.errstate(divide="ignore", invalid="ignore"):
        zscores = (pred - ref) / np.sqrt(variance)

    fig, axes = _panels(len(labels), 3.6, 3.0, title)
    for j, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        ok = np.isfinite(zscores[:, j])
        z = zscores[ok, j]
        lines = [_counts(z.size, int(np.sum(~ok)))]
        limit = 4.0
        if z.size:
            limit = max(limit, float(np.percentile(np.abs(z), 99)))
            edges = np.linspace(-limit, limit, _n_bins(z.size) + 1)
            counts, _ = np.histogram(z, edges)
            ax.stairs(counts / (z.size * np.diff(edges)), edges, fill=True, alpha=0.5)
            outside = int(np.sum(np.abs(z) > limit))
            lines += [
                f"std = {np.std(z):.3g}",
                f"robust std = {_MAD_TO_STD * np.median(np.abs(z - np.median(z))):.3g}",
            ]
            if outside:
                lines.append(f"|z| > {limit:.3g}: {outside}")
        grid = np.linspace(-limit, limit, 200)
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="k", lw=1)
        ax.set_ylim(0.0, 1.4 * ax.get_ylim()[1])  # room for the annotation
        ax.set(xlim=(-limit, limit), xlabel=f"z ({name})", ylabel="density")
        _annotate(ax, lines)
    return _save(fig, out)


# -- Fits -------------------------------------------------------------------------
def loss_curve(
    losses: ArrayLike | Any,
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot the objective of a fit against iteration.

    When the objective spans decades above its minimum (as it does while EM
    converges) the y axis shows ``loss − min + ε`` on a log scale, with ``ε``
    the smallest positive distance from the minimum, so that the minimum itself
    can be drawn; otherwise the loss on a linear scale. The final value is
    marked and annotated. Non-finite values are skipped and counted.

    Parameters
    ----------
    losses
        ``(n,)`` objective per iteration, or an object with such an attribute
        ``losses`` (e.g. a `pollux.FitResult`).
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, with one axes.

    Examples
    --------
    >>> import numpy as np
    >>> fig = loss_curve(100.0 + np.exp(-np.arange(30.0)))
    >>> fig.axes[0].get_yscale()
    'log'
    """
    call = "loss_curve"
    out = _output(path, title, call)
    values = _as_1d(getattr(losses, "losses", losses), "losses", call)

    fig = _figure(5.0, 3.4, title)
    ax = fig.add_subplot()
    ok = np.isfinite(values)
    steps = np.flatnonzero(ok)
    finite = values[ok]
    lines = [_counts(finite.size, int(np.sum(~ok)), "values")]
    if finite.size:
        above = finite - finite.min()
        positive = above[above > 0]
        if _spans_decades(positive):
            eps = positive.min()
            y = above + eps
            ax.set(yscale="log", ylabel=f"loss − min + ε (ε = {eps:.3g})")
        else:
            y = finite
            ax.set(ylabel="loss")
        ax.plot(steps, y, "-", color="C0", lw=1)
        ax.plot(steps[-1], y[-1], "o", color="C3", ms=5)
        lines.append(f"final = {finite[-1]:.8g}")
        if finite[-1] > finite.min():
            lines.append(f"min = {finite.min():.8g}")
    ax.set(xlabel="iteration")
    _annotate(ax, lines)
    return _save(fig, out)


def scatter_vs_wavelength(
    s: ArrayLike,
    wavelength: ArrayLike | None = None,
    *,
    err_median: ArrayLike | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot the learned extra scatter of each pixel against wavelength.

    The line is broken where the wavelength step jumps (e.g. between the
    detectors of APOGEE), and at non-finite values of ``s`` (counted). The y axis
    is logarithmic when the positive values span decades.

    Parameters
    ----------
    s
        ``(P,)`` extra scatter per pixel, in flux units.
    wavelength
        ``(P,)`` wavelength of each pixel; the pixel index if None. Pixels
        without a finite wavelength are not drawn.
    err_median
        Median reported flux error, ``(P,)`` or one number, for comparison.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, with one axes.

    Examples
    --------
    >>> import numpy as np
    >>> wl = np.concatenate([np.linspace(15150, 15800, 40), np.linspace(15860, 16430, 40)])
    >>> fig = scatter_vs_wavelength(np.full(80, 0.01), wl, err_median=0.005)
    >>> len(fig.axes)
    1
    """
    call = "scatter_vs_wavelength"
    out = _output(path, title, call)
    scatter = _as_1d(s, "s", call)
    if wavelength is None:
        x, xlabel = np.arange(scatter.size, dtype=float), "pixel"
    else:
        x = _like(wavelength, "wavelength", scatter.shape, "s", call)
        xlabel = "wavelength"
    reported = None
    if err_median is not None:
        reported = _as_array(err_median, "err_median", call)
        if reported.ndim == 0:
            reported = np.full(scatter.shape, float(reported))
        elif reported.shape != scatter.shape:
            msg = (
                f"{call}(err_median=...): expected one number or shape "
                f"{scatter.shape} (that of s), got shape {reported.shape}"
            )
            raise ValueError(msg)

    fig = _figure(8.0, 3.2, title)
    ax = fig.add_subplot()
    ys = (scatter,) if reported is None else (scatter, reported)
    x_line, *y_lines = _line(x, *ys)
    # dots: the scatter of neighbouring pixels is unrelated
    ax.plot(x_line, y_lines[0], ".", color="C0", ms=2, label="extra scatter s")
    if reported is not None:
        ax.plot(x_line, y_lines[1], color="C1", lw=0.8, label="median reported error")
        ax.legend(loc="upper right", fontsize="small")
    shown = np.concatenate([y[np.isfinite(y)] for y in ys])
    if shown.size and np.all(shown > 0) and _spans_decades(shown):
        ax.set_yscale("log")
        # values 10^4 below the largest are zero for the eye: they sit on the axis
        ax.set_ylim(bottom=max(shown.min(), 1e-4 * shown.max()) / 2)
    ax.set(xlabel=xlabel, ylabel="flux scatter")
    ok = np.isfinite(x) & np.isfinite(scatter)
    _annotate(ax, [_counts(int(np.sum(ok)), int(np.sum(~ok)), "pixels")])
    return _save(fig, out)


def residual_spectra(
    wavelength: ArrayLike | None,
    flux: ArrayLike,
    model_flux: ArrayLike,
    *,
    err: ArrayLike | None = None,
    model_err: ArrayLike | None = None,
    ids: Sequence[int] | ArrayLike | None = None,
    max_stars: int = 6,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot observed and model spectra of a few stars, with their residuals.

    Each star gets two panels: the data and the model above, and below the
    residual over ``σ = sqrt(err² + model_err²)`` (or the plain residual if
    neither is given) with the ±1 band. Masked pixels (non-finite flux, model or
    σ, or σ = 0) are not drawn and are counted, and lines are broken where the
    wavelength step jumps.

    Parameters
    ----------
    wavelength
        ``(P,)`` wavelength of each pixel; the pixel index if None.
    flux, model_flux
        ``(N, P)`` observed and model spectra (1-D: one star).
    err, model_err
        ``(N, P)`` uncertainties of ``flux`` and ``model_flux``.
    ids
        Rows of the stars to draw (all of them); if None, up to ``max_stars``
        rows evenly spread over the array.
    max_stars
        Number of stars drawn when ``ids`` is None.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure, two axes per star drawn.

    Examples
    --------
    >>> import numpy as np
    >>> flux = 1.0 - 0.1 * np.random.default_rng(1).random((4, 30))
    >>> fig = residual_spectra(None, flux, flux + 0.01, err=np.full((4, 30), 0.02))
    >>> len(fig.axes)
    8
    """
    call = "residual_spectra"
    out = _output(path, title, call)
    data = _as_2d(flux, "flux", call, row=True)
    model = _like(model_flux, "model_flux", data.shape, "flux", call, row=True)
    sigma = _errors(err, "err", data.shape, "flux", call, row=True)
    model_sigma = _errors(model_err, "model_err", data.shape, "flux", call, row=True)
    n_stars, n_pix = data.shape
    if wavelength is None:
        x, xlabel = np.arange(n_pix, dtype=float), "pixel"
    else:
        x = _like(wavelength, "wavelength", (n_pix,), "the columns of flux", call)
        xlabel = "wavelength"
    if ids is None:
        count = min(n_stars, check_positive_int(max_stars, f"{call}(max_stars=...)"))
        rows = np.unique(np.linspace(0, n_stars - 1, count).round().astype(int))
    else:
        rows = np.atleast_1d(np.asarray(ids))
        if rows.dtype.kind not in "iu":
            msg = (
                f"{call}(ids=...): expected integer row indices, got dtype {rows.dtype}"
            )
            raise TypeError(msg)
        if rows.ndim != 1 or rows.size == 0:
            msg = f"{call}(ids=...): expected a non-empty 1-D sequence of rows"
            raise ValueError(msg)
        if np.any((rows < -n_stars) | (rows >= n_stars)):
            msg = f"{call}(ids=...): row indices must lie in [-{n_stars}, {n_stars})"
            raise ValueError(msg)
        rows = rows % n_stars

    if sigma is None and model_sigma is None:
        total = None
    else:
        total = np.sqrt(sum(e**2 for e in (sigma, model_sigma) if e is not None))
    fig = _figure(8.0, 2.6 * rows.size, title)
    axes = fig.subplots(
        2 * rows.size, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1] * rows.size}
    )
    for k, row in enumerate(rows):
        top, bottom = axes[2 * k], axes[2 * k + 1]
        good = np.isfinite(data[row]) & np.isfinite(model[row])
        if total is not None:
            good &= np.isfinite(total[row]) & (total[row] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):  # masked pixels
            resid = data[row] - model[row]
            if total is not None:
                resid = resid / total[row]
        masked = [np.where(good, y, np.nan) for y in (data[row], model[row], resid)]
        x_line, obs, mod, res = _line(x, *masked)
        top.plot(x_line, obs, color="k", lw=0.7, label="data")
        top.plot(x_line, mod, color="C3", lw=0.7, label="model")
        top.set_ylabel("flux")
        bottom.axhline(0.0, color="C3", lw=0.7)
        if total is not None:
            bottom.axhspan(-1.0, 1.0, color="0.85", zorder=0)
        bottom.plot(x_line, res, color="k", lw=0.5)
        bottom.set_ylabel("residual / σ" if total is not None else "residual")
        lines = [
            f"star {row}: " + _counts(int(good.sum()), int((~good).sum()), "pixels")
        ]
        if total is not None and good.any():
            lines.append(f"χ²/pixel = {np.mean(resid[good] ** 2):.3g}")
        _annotate(top, lines)
        if k == 0:
            top.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel(xlabel)
    return _save(fig, out)


def latent_corner(
    latents: ArrayLike,
    *,
    color: ArrayLike | None = None,
    color_label: str | None = None,
    max_dims: int = 8,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot a corner plot of latent vectors.

    Histograms of each dimension lie on the diagonal and scatter plots of each
    pair below it; with more than 5,000 stars the scatter plots show a fixed
    subsample (seeded, so the same figure every time). The points are coloured
    by ``color`` (e.g. a label) if given, with a colour bar. Only the first
    ``max_dims`` dimensions are drawn. Non-finite values are skipped: the
    histograms count each dimension's finite values, the scatter plots show
    the stars finite in all the drawn dimensions and in ``color``; the others
    are counted.

    Parameters
    ----------
    latents
        ``(N, K)`` latent vectors (1-D: one dimension).
    color
        ``(N,)`` values that colour the points.
    color_label
        Label of the colour bar.
    max_dims
        Most dimensions drawn.
    path
        Where to write the figure as a PNG; nothing is written if None.
    title
        Title of the figure.

    Returns
    -------
    Figure
        The figure: ``K (K + 1) / 2`` axes for ``K`` dimensions drawn, and one
        more for the colour bar.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(2).normal(size=(100, 3))
    >>> len(latent_corner(z).axes)
    6
    >>> len(latent_corner(z, color=z[:, 0], color_label="Teff").axes)
    7
    """
    call = "latent_corner"
    out = _output(path, title, call)
    z = _as_2d(latents, "latents", call)
    values = _like(color, "color", z.shape[:1], "the rows of latents", call)
    if color_label is not None and not isinstance(color_label, str):
        msg = f"{call}(color_label=...): expected a string, got {type(color_label).__name__}"
        raise TypeError(msg)
    n_dims = min(z.shape[1], check_positive_int(max_dims, f"{call}(max_dims=...)"))

    ok = np.all(np.isfinite(z[:, :n_dims]), axis=1)
    colour: dict[str, Any] = {}
    if values is not None:
        ok &= np.isfinite(values)
        if ok.any():
            colour = {"vmin": values[ok].min(), "vmax": values[ok].max()}
    drawn = np.arange(z.shape[0])
    if drawn.size > _MAX_POINTS:
        drawn = np.sort(np.random.default_rng(0).choice(drawn, _MAX_POINTS, False))
    drawn = drawn[ok[drawn]]

    size = max(1.8 * n_dims, 3.0)
    fig = _figure(size + (1.0 if colour else 0.0), size, title)
    grid = fig.add_gridspec(n_dims, n_dims)
    diagonal: list[Axes] = []
    mappable = None
    for i in range(n_dims):
        row: Axes | None = None  # the first scatter plot of row i: shared y axis
        for j in range(i):
            ax = fig.add_subplot(grid[i, j], sharex=diagonal[j], sharey=row)
            row = row or ax
            mappable = ax.scatter(
                z[drawn, j],
                z[drawn, i],
                c=None if values is None else values[drawn],
                s=2,
                alpha=0.5,
                lw=0,
                **colour,
            )
            ax.tick_params(labelbottom=i == n_dims - 1, labelleft=j == 0)
            if j == 0:
                ax.set_ylabel(f"latent {i}")
            if i == n_dims - 1:
                ax.set_xlabel(f"latent {j}")
        ax = fig.add_subplot(grid[i, i])
        column = z[:, i][np.isfinite(z[:, i])]
        if column.size:
            ax.hist(column, bins=_n_bins(column.size), histtype="stepfilled", alpha=0.6)
        ax.set_yticks([])
        ax.tick_params(labelbottom=i == n_dims - 1)
        diagonal.append(ax)
    diagonal[-1].set_xlabel(f"latent {n_dims - 1}")
    if colour and mappable is not None:
        colorbar = fig.colorbar(mappable, ax=fig.axes)
        if color_label is not None:
            colorbar.set_label(color_label)
    lines = [_counts(int(ok.sum()), int((~ok).sum()))]
    if z.shape[0] > _MAX_POINTS:
        lines.append(f"{_MAX_POINTS} stars drawn")
    if n_dims < z.shape[1]:
        lines.append(f"first {n_dims} of {z.shape[1]} dimensions")
    _annotate(diagonal[0], lines)
    return _save(fig, out)
