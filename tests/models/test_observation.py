"""Observation transforms (`pollux.observation`): the Doppler shift against the
float64 reference of `pollux.datasets`, the continuum against numpy's Chebyshev
series, and `optimize` recovering velocities and continua it was not told."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.datasets import apogee_like, doppler_shift  # noqa: E402
from pollux.models.transforms import (  # noqa: E402
    AffineTransform,
    ContinuumTransform,
    DopplerTransform,
    TransformSequence,
)

LOG_STEP = 6e-6


def test_doppler_matches_the_float64_reference_on_apogee_spectra():
    _, truth = apogee_like(6, seed=1)
    wave = truth["wavelength"]
    rv = np.array([-140.0, -33.3, -0.4, 0.0, 12.5, 99.9])
    t = DopplerTransform(wave)
    got = np.asarray(t.apply(jnp.asarray(truth["flux"]), rv=jnp.asarray(rv)))
    ref = doppler_shift(
        truth["flux"],
        rv,
        LOG_STEP,
        [slice(0, 2920), slice(2920, 5320), slice(5320, 7214)],
    )
    ok = np.isfinite(ref)
    assert ok.sum() > 6 * (7214 - 3 * 40)
    # float64; the two take the grid's log step from its float64 wavelengths
    # (medians over other pixels: ~1e-11 apart), which moves δ by ~1e-9 pixel
    np.testing.assert_allclose(got[ok], ref[ok], rtol=0, atol=1e-9)
    # where the reference is uncovered, the edge pixel's neighbourhood stands in
    assert np.all(np.isfinite(got))


def test_doppler_checks_its_grid():
    with pytest.raises(ValueError, match=r"DopplerTransform\(wavelength=\.\.\.\)"):
        DopplerTransform(np.linspace(15000.0, 16000.0, 100))  # uniform in λ, not log λ
    with pytest.raises(ValueError, match="increasing"):
        DopplerTransform(np.array([3.0, 2.0, 1.0] * 4))


def test_continuum_is_a_chebyshev_series_per_detector():
    _, truth = apogee_like(2, seed=1)
    wave = truth["wavelength"]
    t = ContinuumTransform(wave, degree=3)
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=(2, 12))
    x = rng.uniform(0.5, 1.0, size=(2, wave.size))
    got = np.asarray(t.apply(jnp.asarray(x), coeffs=jnp.asarray(coeffs)))
    for c, chip in enumerate([slice(0, 2920), slice(2920, 5320), slice(5320, 7214)]):
        w = wave[chip]
        u = 2 * (w - w[0]) / (w[-1] - w[0]) - 1
        for n in range(2):
            cont = np.polynomial.chebyshev.chebval(u, coeffs[n, 4 * c : 4 * c + 4])
            np.testing.assert_allclose(
                got[n, chip], x[n, chip] * cont, rtol=1e-12, atol=1e-12
            )
    with pytest.raises(ValueError, match=r"ContinuumTransform\(degree=\.\.\.\)"):
        ContinuumTransform(wave, degree=11)


def _lines(n_pix: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A rest-frame mean spectrum with 25 absorption lines and two directions in
    which the lines' depths vary."""
    pix = np.arange(n_pix)
    centres = rng.uniform(10, n_pix - 10, 25)
    profiles = np.exp(-0.5 * ((pix[:, None] - centres) / 1.5) ** 2)  # (pix, line)
    b = 1.0 - profiles @ rng.uniform(0.1, 0.4, 25)
    A = profiles @ (0.03 * rng.normal(size=(25, 2)))
    return b, A


def test_optimize_recovers_velocities_and_continua():
    """Known rest-frame flux model, unknown latents, velocities and continua:
    `optimize` recovers the velocities to a small fraction of a pixel (4.1 km/s)
    and the continua to a fraction of the noise."""
    rng = np.random.default_rng(3)
    n, n_pix, sigma = 12, 400, 0.01
    wave = 15500.0 * 10 ** (LOG_STEP * np.arange(n_pix))
    b, A = _lines(n_pix, rng)
    z = rng.normal(size=(n, 2))
    rv = rng.uniform(-3.0, 3.0, n)  # within a line width of the start (rv = 0)
    coeffs = np.column_stack([rng.uniform(0.8, 1.2, n), 0.05 * rng.normal(size=n)])
    u = np.linspace(-1, 1, n_pix)
    shifted = doppler_shift(z @ A.T + b, rv, LOG_STEP, [slice(0, n_pix)])
    y = (coeffs[:, :1] + coeffs[:, 1:] * u) * shifted + sigma * rng.normal(
        size=(n, n_pix)
    )
    y[:, :4] = y[:, -4:] = np.nan  # beyond the shifted rest-frame grid
    data = plx.data.PolluxData(flux=plx.data.OutputData(y, err=np.full_like(y, sigma)))
    model = plx.LuxModel(latent_size=2)
    model.register_output(
        "flux",
        TransformSequence(
            AffineTransform(n_pix), DopplerTransform(wave), ContinuumTransform(wave, 1)
        ),
    )
    params, result = model.optimize(
        data,
        num_steps=1500,
        rng_key=0,
        optimizer=numpyro.optim.Adam(0.01),
        fixed_params={"flux": {"0:A": A, "0:b": b}},
        svi_run_kwargs={"progress_bar": False},
    )
    fitted = params["flux"]
    # expected precision: σ_v ≈ σ / |∂f/∂v| over the lines' flanks ≈ 0.03 km/s
    # (seen: at most 0.06 over the 12 stars); started at the prior mean rv = 0
    assert np.max(np.abs(np.asarray(fitted["1:rv"]) - rv)) < 0.2
    np.testing.assert_allclose(np.asarray(fitted["2:coeffs"]), coeffs, atol=0.01)
    assert float(result.losses[-1]) < float(result.losses[0])


def test_observation_transforms_round_trip_through_the_model_file_codec():
    from pollux.io._codec import FileFormatError, decode, encode

    wave = 15000.0 * 10 ** (LOG_STEP * np.arange(60))
    t = TransformSequence(
        AffineTransform(60),
        DopplerTransform(wave, param_priors={"rv": dist.Normal(10.0, 30.0)}),
        ContinuumTransform(wave, 3),
    )
    tree, arrays = encode({"flux": t}, "test")
    back = decode(tree, arrays)["flux"]
    assert back.param_shapes(4, 3) == t.param_shapes(4, 3)
    assert back.transforms[1].wavelength == t.transforms[1].wavelength
    assert float(back.transforms[1].param_priors["rv"].loc) == 10.0
    rng = np.random.default_rng(0)
    p = {
        "0:A": rng.normal(size=(60, 4)),
        "0:b": np.ones(60),
        "1:rv": np.array([-5.0, 0.3, 40.0]),
        "2:coeffs": rng.normal(size=(3, 4)),
    }
    x = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(
        np.asarray(back.apply(x, **p)), np.asarray(t.apply(x, **p))
    )
    member = tree["flux"]["$transform"]["members"][2]
    member["degree"] = 99
    with pytest.raises(FileFormatError, match="degree"):
        decode(tree, arrays)
