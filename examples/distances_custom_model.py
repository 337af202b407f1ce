"""Distances learned with the model: a term of your own in `LuxModel.optimize`.

Each simulated star has spectra and labels (linear in its latents) and an
apparent magnitude ``m = M + μ``: an absolute magnitude ``M = a·z + b`` that the
latents predict (``a``, ``b`` unknown) plus a distance modulus ``μ`` known only to
±0.3 mag from its parallax. The model has no output for magnitudes; a
``custom_model`` function adds the sites ``a``, ``b`` and one ``μ`` per star, and
the magnitudes' likelihood, to the numpyro model that `optimize` fits. The spectra
pin down each star's latents, hence ``M``, so the fitted ``μ`` is far better than
the parallax's.

Run it from anywhere: ``python examples/distances_custom_model.py`` (~20 s).
"""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import pollux as plx
from pollux.models.transforms import LinearTransform

N_STARS, K, N_FLUX = 300, 3, 32
obs, truth = plx.datasets.make_simulated_linear_data(
    n_stars=N_STARS, n_latents=K, n_labels=2, n_flux=N_FLUX, rng=1
)
data = plx.data.PolluxData(
    flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
    label=plx.data.OutputData(obs["label"], err=obs["label_err"]),
)

rng = np.random.default_rng(2)
a_true, b_true = np.array([0.5, -0.3, 0.2]), 1.0
mu_true = rng.uniform(8.0, 12.0, N_STARS)
m_err, plx_err = 0.02, 0.3
m_obs = truth["latents"] @ a_true + b_true + mu_true + m_err * rng.normal(size=N_STARS)
mu_parallax = mu_true + plx_err * rng.normal(size=N_STARS)


def magnitudes(latents, params, data):
    """Called inside the numpyro model, after the outputs' likelihoods."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    mu = numpyro.sample("mu", dist.Normal(mu_parallax, plx_err).to_event(1))
    predicted = latents @ a + b + mu
    numpyro.factor("m:loglike", dist.Normal(predicted, m_err).log_prob(m_obs).sum())


model = plx.LuxModel(latent_size=K)
model.register_output("flux", LinearTransform(N_FLUX))
model.register_output("label", LinearTransform(2))
params, _ = model.optimize(
    data,
    num_steps=20_000,
    rng_key=jax.random.PRNGKey(0),
    optimizer=numpyro.optim.Adam(1e-2),
    custom_model=magnitudes,
    svi_run_kwargs={"progress_bar": False},
)

mu = np.asarray(params["mu"])  # the sites of custom_model: top level of params
rms = np.sqrt(np.mean((mu - mu_true) ** 2))
rms_parallax = np.sqrt(np.mean((mu_parallax - mu_true) ** 2))
print(f"distance modulus RMS error: {rms:.3f} mag (parallax alone: {rms_parallax:.3f})")
