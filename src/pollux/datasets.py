"""Simulated data sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._params import check_nonnegative_int, check_positive_int
from .observation import C_KMS, detector_slices

__all__ = [
    "apogee_like",
    "apogee_like_bound",
    "dwarf_labels",
    "make_simulated_linear_data",
    "make_underestimated_errors_data",
]


def _rng(rng: Any) -> np.random.Generator:
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    msg = f"rng: expected None, an int seed or a numpy Generator, got {rng!r}"
    raise TypeError(msg)


def _check_sizes(call: str, **sizes: Any) -> None:
    for name, value in sizes.items():
        check_positive_int(value, f"{call}({name}=...)")


def _check_matrix(M: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(M, dtype=float)
    if arr.shape != shape:
        msg = f"make_simulated_linear_data({name}=...): expected shape {shape}, got {arr.shape}"
        raise ValueError(msg)
    return arr


def make_simulated_linear_data(
    n_stars: int,
    n_latents: int,
    n_labels: int,
    n_flux: int,
    A: Any = None,
    B: Any = None,
    rng: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stars whose labels and flux are both linear in unit-Normal latents.

    ``latents ~ N(0, I)``, true ``label = latents @ A.T`` and ``flux = latents @ B.T``;
    errors are uniform in [0.01, 0.1] and the observed values are drawn around the
    truth with those errors. ``A`` (n_labels, n_latents) and ``B`` (n_flux,
    n_latents) are standard Normal when not given.

    Returns
    -------
    obs
        ``label``, ``label_err``, ``flux``, ``flux_err``.
    truth
        ``label``, ``flux`` (noise-free), ``A``, ``B``, ``latents``.

    Examples
    --------
    >>> obs, truth = make_simulated_linear_data(100, 4, 2, 32, rng=1)
    >>> obs["flux"].shape, truth["latents"].shape
    ((100, 32), (100, 4))
    """
    _check_sizes(
        "make_simulated_linear_data",
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
    )
    gen = _rng(rng)
    A = (
        gen.normal(size=(n_labels, n_latents))
        if A is None
        else _check_matrix(A, (n_labels, n_latents), "A")
    )
    B = (
        gen.normal(size=(n_flux, n_latents))
        if B is None
        else _check_matrix(B, (n_flux, n_latents), "B")
    )
    latents = gen.normal(size=(n_stars, n_latents))
    label = latents @ A.T
    flux = latents @ B.T
    label_err = gen.uniform(0.01, 0.1, size=label.shape)
    flux_err = gen.uniform(0.01, 0.1, size=flux.shape)
    obs = {
        "label": gen.normal(label, label_err),
        "label_err": label_err,
        "flux": gen.normal(flux, flux_err),
        "flux_err": flux_err,
    }
    truth = {"label": label, "flux": flux, "A": A, "B": B, "latents": latents}
    return obs, truth


def injected_extra_error(n_flux: int) -> np.ndarray:
    """The unreported flux scatter of `make_underestimated_errors_data` at pixel p:
    ``2 cos²(2π p / (n_flux / 4))``."""
    p = np.arange(n_flux)
    return 2.0 * np.cos(2 * np.pi * p / (n_flux / 4)) ** 2


def make_underestimated_errors_data(
    n_stars: int = 2048,
    n_latents: int = 8,
    n_labels: int = 2,
    n_flux: int = 128,
    rng: Any = 42,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Simulated stars whose reported flux errors miss part of the flux scatter.

    Label ``i`` is latent ``i`` (labels beyond ``n_latents`` are random mixtures
    of the latents); the flux loads on the first two latents through two Gaussian
    "absorption lines" (at pixels ``n_flux/2`` and ``n_flux/4``) on top of small
    random loadings. The observed flux then receives extra Normal scatter with
    standard deviation `injected_extra_error` per pixel, which its reported errors
    do not include. With the defaults this draws the numbers of the published Lux
    tutorial on underestimated uncertainties.

    Returns
    -------
    data
        `PolluxData` with ``flux`` and ``label`` in physical units, with errors and
        `ShiftScalePreprocessor` s from the data.
    truth
        Noise-free ``label`` and ``flux``, the generating ``A`` and ``B``, the
        true ``latents`` and the injected ``extra_err`` per pixel.

    Examples
    --------
    >>> data, truth = make_underestimated_errors_data(n_stars=64, n_flux=16, rng=0)
    >>> data["flux"].shape, truth["extra_err"].shape
    ((64, 16), (16,))
    """
    from .data import OutputData, PolluxData, ShiftScalePreprocessor

    _check_sizes(
        "make_underestimated_errors_data",
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
    )
    gen = _rng(rng)
    A = np.zeros((n_labels, n_latents))
    for i in range(min(n_labels, n_latents)):
        A[i, i] = 1.0
    pix = np.arange(n_flux)
    B = gen.normal(scale=0.1, size=(n_flux, n_latents))
    if n_labels > n_latents:  # more labels than latents: mixtures of the latents
        A[n_latents:] = gen.normal(size=(n_labels - n_latents, n_latents))
    B[:, 0] += 4 * np.exp(-0.5 * (pix - n_flux / 2) ** 2 / 5**2)
    if n_latents > 1:
        B[:, 1] += 2 * np.exp(-0.5 * (pix - n_flux / 4) ** 2 / 3**2)
    obs, truth = make_simulated_linear_data(
        n_stars, n_latents, n_labels, n_flux, A=A, B=B, rng=gen
    )
    extra_err = injected_extra_error(n_flux)
    obs["flux"] = gen.normal(obs["flux"], scale=extra_err)

    def output(name: str) -> OutputData:
        return OutputData(
            obs[name],
            err=obs[f"{name}_err"],
            preprocessor=ShiftScalePreprocessor.from_data(obs[name]),
        )

    truth["extra_err"] = extra_err
    return PolluxData(flux=output("flux"), label=output("label")), truth


# --- APOGEE-like spectra --------------------------------------------------------------

APOGEE_DATA_DIR = Path(__file__).parent / "_data" / "apogee"
"""Where the APOGEE files `apogee_like` reads ship with pollux (see the README.md
there for their licences and provenance)."""

APOGEE_FILES = (
    "NN_normalized_spectra.npz",
    "dr17_giant_labels.npz",
    "apogee_wavelength.npz",
)
APOGEE_LABEL_NAMES = ("teff", "logg", "fe_h", "mg_fe")

_N_BAD = 72  # bad pixels per star: 1% of 7,214, rounded
_N_UNREPORTED = 150
_CHUNK = 256  # stars per chunk; part of the recipe (the order of the random draws)
_EMULATOR_CHUNK = 32  # stars per emulator pass: its (32, 72140) arrays stay in cache
_LABEL_ERR_RANGE = np.array([[30.0, 0.03, 0.01, 0.01], [80.0, 0.1, 0.03, 0.04]])


def _apogee_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if data_dir is not None:
        return Path(os.fspath(data_dir)), "data_dir"
    env = os.environ.get("POLLUX_DATA_DIR")
    if env:
        return Path(env), "the environment variable POLLUX_DATA_DIR"
    return APOGEE_DATA_DIR, "pollux's package data"


def _load_apogee(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The emulator arrays, the label table and the wavelength grid, from ``data_dir``,
    else ``$POLLUX_DATA_DIR``, else the files shipped with pollux."""
    where, source = _apogee_dir(data_dir)
    arrays: dict[str, Any] = {}
    for name in APOGEE_FILES:
        path = where / name
        if not path.is_file():
            msg = (
                f"apogee_like: data file {name!r} is missing: expected it at {path} "
                f"(directory from {source}). The files "
                f"{', '.join(APOGEE_FILES)} ship with pollux in {APOGEE_DATA_DIR}; "
                "pass data_dir=... or set POLLUX_DATA_DIR to a directory holding all "
                "of them, or reinstall pollux."
            )
            raise FileNotFoundError(msg)
        with np.load(path, allow_pickle=False) as f:
            arrays.update({key: np.asarray(f[key]) for key in f.files})
    return arrays


def _emulate(emulator: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """BinSpec++ flux (n, 7214), float64, of labels (n, 5) (Teff, logg, [Fe/H],
    [Mg/Fe], v_macro), in chunks of `_EMULATOR_CHUNK` stars.

    The network runs in float32, the precision of its weights: about twice as fast
    as float64 and within 5e-7 of it (measured on 3,000 stars of the label table).
    """
    f32 = np.float32
    w0 = emulator["w_array_0"].astype(f32)  # (P, H, 5)
    n_pix, n_hidden, n_in = w0.shape
    w0 = np.ascontiguousarray(w0.reshape(n_pix * n_hidden, n_in).T)  # (5, P*H)
    b0 = emulator["b_array_0"].astype(f32).ravel()
    w1 = emulator["w_array_1"].astype(f32)
    b1 = emulator["b_array_1"].astype(np.float64)
    x_min, x_max = emulator["x_min"], emulator["x_max"]
    x = ((np.asarray(labels, dtype=np.float64) - x_min) / (x_max - x_min) - 0.5).astype(
        f32
    )
    flux = np.empty((len(x), n_pix))
    # work buffers reused by all chunks: a new large array per chunk costs page faults
    chunk = min(_EMULATOR_CHUNK, len(x))
    hidden, summed = (
        np.empty((chunk, n_pix * n_hidden), f32),
        np.empty((chunk, n_pix), f32),
    )
    for start in range(0, len(x), _EMULATOR_CHUNK):
        x_chunk = x[start : start + _EMULATOR_CHUNK]
        u, out = hidden[: len(x_chunk)], summed[: len(x_chunk)]
        # einsum, not BLAS: threaded BLAS is no faster on a (32, 5) @ (5, P*H)
        # product, and several times slower on a busy machine
        np.einsum("ck,kq->cq", x_chunk, w0, out=u)
        u += b0
        np.negative(u, out=u)  # sigmoid in place: 1 / (1 + exp(-u))
        np.exp(u, out=u)
        u += f32(1.0)
        np.reciprocal(u, out=u)
        np.einsum("cph,ph->cp", u.reshape(-1, n_pix, n_hidden), w1, out=out)
        np.add(out, b1, out=flux[start : start + _EMULATOR_CHUNK])
    return flux


def dwarf_labels(rng: np.random.Generator, table: np.ndarray, n: int) -> np.ndarray:
    """Labels (Teff, logg, [Fe/H], [Mg/Fe]) of ``n`` dwarfs and subgiants: a simple
    model, as no real dwarf table ships with pollux.

    Teff ~ U(4200, 6500) K; three in four on the main sequence, log g = 4.65 at
    4200 K falling linearly to 4.20 at 6500 K, plus Normal(0, 0.08), at most 4.70
    (the emulator's edge); one in four subgiants, log g ~ U(3.5, main sequence −
    0.2); [Fe/H] and [Mg/Fe] of a random row of the giants' ``table`` (real
    abundance pairs).
    """
    teff = rng.uniform(4200.0, 6500.0, n)
    main = 4.65 - 0.45 * (teff - 4200.0) / 2300.0
    logg = np.minimum(main + 0.08 * rng.standard_normal(n), 4.7)
    sub = rng.random(n) < 0.25
    logg[sub] = rng.uniform(3.5, main[sub] - 0.2)
    abundances = table[rng.integers(0, len(table), n)][:, 2:]
    return np.column_stack([teff, logg, abundances])


def _dwarf_draws(
    fraction: Any, n_stars: int, seed: int, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which stars are dwarfs, and their labels, from a generator of their own."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        msg = f"apogee_like(dwarfs=...): expected a number in [0, 1], got {fraction!r}"
        raise TypeError(msg)
    if not 0.0 <= fraction <= 1.0:
        msg = f"apogee_like(dwarfs=...): expected a number in [0, 1], got {fraction}"
        raise ValueError(msg)
    n = round(fraction * n_stars)
    is_dwarf = np.zeros(n_stars, dtype=bool)
    if n == 0:
        return is_dwarf, np.empty((0, 4))
    side = np.random.default_rng([seed, 1])
    is_dwarf[side.choice(n_stars, size=n, replace=False)] = True
    return is_dwarf, dwarf_labels(side, table, n)


_RV_SIGMA = 50.0  # km/s, spread of the radial velocities (clipped at ±3σ)
_CHIP_RESPONSE = (0.75, 1.0, 0.85)  # relative throughput of the three detectors


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """``(..., 4)`` weights of the samples at offsets -1, 0, 1, 2 of Keys' cubic
    convolution (a = -1/2) at fractional positions ``t`` in [0, 1): exact for
    quadratics, continuous first derivative.

    >>> cubic_weights(np.array([0.0, 0.5])).round(4).tolist()
    [[0.0, 1.0, 0.0, 0.0], [-0.0625, 0.5625, 0.5625, -0.0625]]
    """
    t = np.asarray(t, dtype=np.float64)[..., None]
    x = np.abs(t - np.arange(-1, 3))  # distance to each of the four samples
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x**2 + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def doppler_shift(
    flux: np.ndarray, velocity: np.ndarray, log_step: float, chips: list[slice]
) -> np.ndarray:
    """Rest-frame spectra ``flux`` ``(n, n_pix)`` on a grid uniform in
    ``log10 λ`` (step ``log_step``, contiguous within each of ``chips``) seen at
    radial velocities ``velocity`` ``(n,)`` [km/s]: each observed pixel ``λ`` takes
    the rest-frame flux at ``λ / (1 + v/c)``, by cubic convolution
    (`cubic_weights`) within its chip; NaN where that needs pixels beyond the chip.

    On such a grid the shift is the same number of pixels,
    ``δ = log10(1 + v/c) / log_step``, everywhere.

    >>> f = np.arange(10.0)[None] ** 2
    >>> v = np.array([C_KMS * (10 ** (0.5 * 1e-5) - 1)])  # half a pixel of 1e-5 dex
    >>> doppler_shift(f, v, 1e-5, [slice(0, 10)])[0, 2:5].round(6).tolist()
    [2.25, 6.25, 12.25]
    """
    flux = np.asarray(flux, dtype=np.float64)
    delta = np.log10(1.0 + np.asarray(velocity, dtype=np.float64) / C_KMS) / log_step
    base = np.floor(-delta).astype(int)  # rest pixel of observed pixel i: i + base + t
    w = cubic_weights(-delta - base)  # (n, 4)
    out = np.full_like(flux, np.nan)
    offsets = np.arange(-1, 3)
    for chip in chips:
        i = np.arange(chip.start, chip.stop)
        for row, (b, weights) in enumerate(zip(base, w, strict=True)):
            src = i[:, None] + b + offsets  # (pixels, 4)
            inside = (src >= chip.start) & (src < chip.stop)
            ok = np.all(inside | (weights == 0), axis=1)  # samples that count
            src = np.clip(src[ok], chip.start, chip.stop - 1)
            out[row, i[ok]] = flux[row, src] @ weights
    return out


def _observed_frame(
    seed: int, label: np.ndarray, wavelength: np.ndarray
) -> dict[str, np.ndarray]:
    """Radial velocities and continua of the stars, from a generator of their own
    (so that ``observed=True`` keeps every other draw of the seed): per star a
    velocity ``N(0, 50)`` km/s clipped at ±150, a flux level log-uniform on
    [50, 5000], and per detector the instrument's response (a shared throughput
    and a gentle quadratic blaze) times ``exp(a₁T₁ + a₂T₂ + a₃T₃)``, Chebyshev
    polynomials across the chip whose slope follows the star's Teff."""
    side = np.random.default_rng([seed, 2])
    n = len(label)
    rv = np.clip(_RV_SIGMA * side.standard_normal(n), -3 * _RV_SIGMA, 3 * _RV_SIGMA)
    level = np.exp(side.uniform(np.log(50.0), np.log(5000.0), n))
    chips = detector_slices(wavelength)
    continuum = np.empty((n, wavelength.size))
    for chip, response in zip(chips, _CHIP_RESPONSE, strict=True):
        x = np.linspace(-1.0, 1.0, chip.stop - chip.start)
        blaze = response * (1.0 - 0.12 * x**2 + side.uniform(-0.05, 0.05) * x)
        slope = -0.06 * (label[:, 0] - 4500.0) / 1000.0 + 0.03 * side.standard_normal(n)
        a2 = 0.02 * side.standard_normal(n)
        a3 = 0.01 * side.standard_normal(n)
        shape = slope[:, None] * x + a2[:, None] * (2 * x**2 - 1)
        shape += a3[:, None] * (4 * x**3 - 3 * x)
        continuum[:, chip] = level[:, None] * blaze * np.exp(shape)
    return {"rv": rv, "continuum": continuum, "chips": chips}


def apogee_like(
    n_stars: int,
    *,
    seed: int,
    dwarfs: float = 0.0,
    observed: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Realistic APOGEE-like red-giant spectra with labels, errors and known defects.

    The labels (Teff [K], logg, [Fe/H], [Mg/Fe]) of ``n_stars`` different real
    APOGEE DR17 giants, drawn without replacement from a table of 100,000 (those
    inside the emulator's label range; [α/M] stands in for [Mg/Fe]). Each star's
    continuum-normalised spectrum on the 7,214-pixel aspcapStar grid comes from the
    BinSpec++ emulator (Ting 2019, trained on real APOGEE spectra), with a
    macroturbulence ``v_macro ~ U(3, 10)`` km/s as a nuisance. Then:

    - each star has an SNR, log-uniform on [30, 300]; each pixel's reported error is
      ``U(0.8, 1.2) / SNR``; the observed flux is the true flux plus Normal noise of
      that size;
    - 72 pixels (1%) per star, chosen at random per star, are bad: flux NaN, error
      inf;
    - 150 pixels, the same for every star of a seed, receive extra Normal noise of
      standard deviation ``U(0.01, 0.05)`` (one per pixel) that the reported errors
      do **not** include;
    - label errors are uniform per star in Teff [30, 80] K, logg [0.03, 0.1],
      [Fe/H] [0.01, 0.03], [Mg/Fe] [0.01, 0.04]; the observed labels are the true
      ones plus Normal noise of that size.

    With ``dwarfs > 0`` that fraction of the stars are main-sequence and subgiant
    stars instead (the survey's other population; the real DR17 table holds giants
    only, so their labels are a simple model, see `dwarf_labels`), at random
    positions (their labels and places come from a second generator; ``dwarfs=0``
    gives exactly the giants-only data set of a seed).

    With ``observed=True`` the same stars come as a survey delivers them,
    un-normalised and in the observed frame, on the same pixel grid (now observed
    wavelengths): each star's spectrum is seen at a radial velocity ``v ~ N(0,
    50)`` km/s (clipped at ±150; `doppler_shift`, which leaves the pixels whose
    rest wavelength lies beyond their detector missing) and multiplied by a smooth
    positive continuum per detector (`_observed_frame`: the instrument's response
    times a stellar shape, flux levels from 50 to 5,000). The reported errors and
    the unreported noise scale with the continuum, so each star's SNR is kept; the
    noise draws are those of ``observed=False``. ``truth`` then holds two more
    ``(n_stars, 7214)`` float64 arrays.

    All draws come from ``numpy.random.default_rng(seed)``: a seed gives the same
    data set every time. Make the train and test sets from one call, by slicing.
    10,000 stars take about 6 s of CPU time (half of it the emulator) and 2 GB of
    memory (float64 arrays).

    Parameters
    ----------
    n_stars
        Number of stars, at most the 100,000 rows of the label table.
    seed
        Non-negative int seed.
    dwarfs
        Fraction of dwarfs and subgiants, in [0, 1] (default 0: giants only).
    observed
        Un-normalised, observed-frame spectra (default False: continuum-normalised
        and at rest).
    data_dir
        Directory holding ``NN_normalized_spectra.npz``, ``dr17_giant_labels.npz``
        and ``apogee_wavelength.npz``; default ``$POLLUX_DATA_DIR`` if set, else
        the copies shipped with pollux (``pollux/_data/apogee``, with their
        licences and provenance in the README.md there).

    Returns
    -------
    obs
        ``flux`` (n_stars, 7214), NaN at bad pixels; ``flux_err``, inf there;
        ``label`` (n_stars, 4); ``label_err``. All float64.
    truth
        ``flux`` (noise-free) and ``label``; ``label_names``; ``wavelength``
        (7214,) in vacuum Å; per star ``snr``, ``vmacro`` and ``table_index`` (the
        row of the label table; -1 for a dwarf); ``dwarf`` (n_stars,) bool;
        ``bad_pixels`` (n_stars, 7214) bool;
        ``unreported_pixels`` (150,) sorted pixel indices and ``unreported_sigma``
        (150,) their extra noise. With ``observed=True`` also ``rv`` (n_stars,)
        [km/s], ``continuum`` (n_stars, 7214) and ``flux_observed`` (the
        noise-free observed spectra, NaN where the shift leaves a pixel
        uncovered); ``flux`` stays the normalised rest-frame spectra.

    Examples
    --------
    >>> obs, truth = apogee_like(20, seed=0)
    >>> obs["flux"].shape, obs["label"].shape, truth["label_names"]
    ((20, 7214), (20, 4), ('teff', 'logg', 'fe_h', 'mg_fe'))
    >>> train, test = slice(0, 15), slice(15, None)
    >>> obs["flux"][train].shape, truth["snr"][test].shape
    ((15, 7214), (5,))
    >>> bool(np.all(np.isnan(obs["flux"]) == truth["bad_pixels"]))
    True
    """
    n_stars = check_positive_int(n_stars, "apogee_like(n_stars=...)")
    seed = check_nonnegative_int(seed, "apogee_like(seed=...)")
    data = _load_apogee(data_dir)
    table = np.asarray(data["labels"], dtype=np.float64)
    names = tuple(str(name) for name in data.get("label_names", ()))
    if table.ndim != 2 or table.shape[1] != 4 or names != APOGEE_LABEL_NAMES:
        msg = (
            f"apogee_like: the label table must have columns {APOGEE_LABEL_NAMES}, "
            f"got {names} with shape {table.shape}"
        )
        raise ValueError(msg)
    if n_stars > len(table):
        msg = (
            f"apogee_like(n_stars=...): at most {len(table)} stars (the rows of the "
            f"label table), got {n_stars}"
        )
        raise ValueError(msg)
    wavelength = np.asarray(data["wavelength"], dtype=np.float64)
    n_pix = len(wavelength)

    rng = np.random.default_rng(seed)
    # first, so that they depend on the seed alone
    unreported = np.sort(rng.choice(n_pix, size=_N_UNREPORTED, replace=False))
    unreported_sigma = rng.uniform(0.01, 0.05, size=_N_UNREPORTED)
    is_dwarf, dwarf = _dwarf_draws(dwarfs, n_stars, seed, table)
    index = np.full(n_stars, -1)
    index[~is_dwarf] = rng.choice(len(table), size=n_stars - len(dwarf), replace=False)
    label = np.empty((n_stars, 4))
    label[~is_dwarf], label[is_dwarf] = table[index[~is_dwarf]], dwarf
    vmacro = rng.uniform(3.0, 10.0, size=n_stars)
    snr = np.exp(rng.uniform(np.log(30.0), np.log(300.0), size=n_stars))
    lo, hi = _LABEL_ERR_RANGE
    label_err = rng.uniform(lo, hi, size=(n_stars, 4))
    label_obs = label + label_err * rng.standard_normal((n_stars, 4))

    true_flux = _emulate(data, np.column_stack([label, vmacro]))
    if true_flux.shape[1] != n_pix:
        msg = (
            f"apogee_like: the emulator gives {true_flux.shape[1]} pixels, the "
            f"wavelength grid has {n_pix}"
        )
        raise ValueError(msg)
    flux = np.empty_like(true_flux)
    flux_err = np.empty_like(true_flux)
    if not isinstance(observed, bool):
        msg = f"apogee_like(observed=...): expected True or False, got {observed!r}"
        raise TypeError(msg)
    if observed:
        frame = _observed_frame(seed, label, wavelength)
        log_step = float(np.median(np.diff(np.log10(wavelength))))
        seen = np.empty_like(true_flux)
    bad = np.zeros(true_flux.shape, dtype=bool)
    for start in range(0, n_stars, _CHUNK):  # drawn into the outputs, chunk by chunk
        rows = slice(start, min(start + _CHUNK, n_stars))
        err, obs_flux, bad_rows = flux_err[rows], flux[rows], bad[rows]  # views
        rng.random(out=err)  # U(0.8, 1.2) / SNR
        err *= 0.4
        err += 0.8
        err /= snr[rows, None]
        rng.standard_normal(out=obs_flux)
        extra = unreported_sigma * rng.standard_normal((len(obs_flux), _N_UNREPORTED))
        if observed:
            cont = frame["continuum"][rows]
            seen[rows] = cont * doppler_shift(
                true_flux[rows], frame["rv"][rows], log_step, frame["chips"]
            )
            err *= cont
            extra *= cont[:, unreported]
            mean = seen[rows]
        else:
            mean = true_flux[rows]
        obs_flux *= err
        obs_flux += mean
        obs_flux[:, unreported] += extra
        for row in bad_rows:  # 72 different pixels per star
            row[rng.choice(n_pix, size=_N_BAD, replace=False)] = True
        if observed:
            bad_rows |= np.isnan(mean)  # rest wavelength beyond its detector
        obs_flux[bad_rows] = np.nan
        err[bad_rows] = np.inf

    obs = {
        "flux": flux,
        "flux_err": flux_err,
        "label": label_obs,
        "label_err": label_err,
    }
    truth = {
        "flux": true_flux,
        "label": label,
        "label_names": APOGEE_LABEL_NAMES,
        "wavelength": wavelength,
        "snr": snr,
        "vmacro": vmacro,
        "table_index": index,
        "dwarf": is_dwarf,
        "bad_pixels": bad,
        "unreported_pixels": unreported,
        "unreported_sigma": unreported_sigma,
    }
    if observed:
        truth.update(rv=frame["rv"], continuum=frame["continuum"], flux_observed=seen)
    return obs, truth


def _emulator_jacobian(
    emulator: dict[str, np.ndarray], labels: np.ndarray
) -> np.ndarray:
    """``∂ flux / ∂ (Teff, logg, [Fe/H], [Mg/Fe], v_macro)`` of the BinSpec++
    network (n, 7214, 5), float64: ``Σ_h w1 σ'(u) w0 / (x_max − x_min)``."""
    w0 = np.asarray(emulator["w_array_0"], np.float64)  # (P, H, 5)
    b0 = np.asarray(emulator["b_array_0"], np.float64)  # (P, H)
    w1 = np.asarray(emulator["w_array_1"], np.float64)  # (P, H)
    x_min, x_max = emulator["x_min"], emulator["x_max"]
    x = (np.asarray(labels, np.float64) - x_min) / (x_max - x_min) - 0.5
    out = np.empty((len(x), w0.shape[0], w0.shape[2]))
    for i, xi in enumerate(x):
        sig = 1.0 / (1.0 + np.exp(-(w0 @ xi + b0)))
        out[i] = np.einsum("ph,phk->pk", w1 * sig * (1.0 - sig), w0)
    return out / (x_max - x_min)


def apogee_like_bound(
    truth: dict[str, Any],
    flux_err: Any,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    r"""The Cramér–Rao bound of each star's labels in `apogee_like` spectra: the
    smallest error any unbiased method can reach from that star's spectrum alone.

    With :math:`J` the emulator's Jacobian in (Teff, logg, [Fe/H], [Mg/Fe],
    v_macro) at the true labels and :math:`\sigma_p^2` each pixel's noise
    variance (its reported error squared, plus the unreported noise of the 150
    affected pixels; bad pixels carry no information), the Fisher matrix is
    :math:`F = J^\top \operatorname{diag}(\sigma^{-2}) J` and the bound of
    label :math:`k` is :math:`\sqrt{(F^{-1})_{kk}}`: v_macro, not a label, is
    marginalised (the full 5×5 matrix is inverted). The emulator is the
    generator, so the bound is exact for these spectra (linear in the labels
    near each star).

    Parameters
    ----------
    truth
        The ``truth`` of `apogee_like` (its ``label``, ``vmacro``,
        ``unreported_pixels`` and ``unreported_sigma``), or rows of it: the
        per-star entries sliced alike.
    flux_err
        The reported flux errors of the same stars (``obs["flux_err"]``; inf at
        bad pixels).
    data_dir
        As for `apogee_like`.

    Returns
    -------
    (n_stars, 4) array: the bound of Teff [K], logg, [Fe/H] and [Mg/Fe].

    Examples
    --------
    >>> obs, truth = apogee_like(3, seed=0)
    >>> bound = apogee_like_bound(truth, obs["flux_err"])
    >>> bound.shape, bool(np.all((bound > 0) & np.isfinite(bound)))
    ((3, 4), True)
    """
    labels = np.column_stack([truth["label"], truth["vmacro"]])
    err = np.asarray(flux_err, dtype=np.float64)
    if err.shape != (len(labels), 7214):
        msg = (
            f"apogee_like_bound(flux_err=...): expected shape ({len(labels)}, 7214) "
            f"(the stars of truth), got {err.shape}"
        )
        raise ValueError(msg)
    var = np.square(err)
    var[:, truth["unreported_pixels"]] += np.square(truth["unreported_sigma"])
    info = np.where(np.isfinite(var), 1.0 / var, 0.0)
    jac = _emulator_jacobian(_load_apogee(data_dir), labels)
    fisher = np.einsum("npk,np,npl->nkl", jac, info, jac)
    cov = np.linalg.inv(fisher)
    return np.sqrt(np.diagonal(cov, axis1=1, axis2=2)[:, :4])
