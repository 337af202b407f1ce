"""Shared builders of the closed-form tests: a tiny two-output problem (flux and
labels, missing and garbage values), its models and fixed parameters (not a test
module: test modules import from here, never from each other)."""

from __future__ import annotations

import functools

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit import LatentPosterior  # noqa: E402
from pollux.models.transforms import (  # noqa: E402
    AffineTransform,
    LinearTransform,
    QuadraticTransform,
)

N, K, D1, D2 = 40, 2, 6, 2
FULL = N - 1  # the star with every value masked
MAX_ITER = 30  # EM iterations of the shared fits (tol=0)

# Tolerances for float64 comparisons of two exact computations done differently
# (Cholesky/Woodbury here, dense solves in pollux.testing): each errs by about
# cond · eps, with eps = 2.2e-16 and condition numbers up to ~1e5 (noise precisions
# to 1/0.02² against a unit prior): ~2e-11; 1e-9 leaves a margin of 50.
RTOL64, ATOL64 = 1e-9, 1e-11


# ----------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------
@functools.cache
def _truth(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K))
    W1 = rng.normal(size=(D1, K))
    b1 = rng.normal(size=D1)
    W2 = rng.normal(size=(D2, K))
    e1 = rng.uniform(0.05, 0.3, size=(N, D1))
    e2 = rng.uniform(0.02, 0.1, size=(N, D2))
    # Extra scatter beyond the reported errors: 0.1 (flux), 0.2 (labels).
    y1 = z @ W1.T + b1 + rng.normal(size=(N, D1)) * np.hypot(e1, 0.1)
    y2 = z @ W2.T + rng.normal(size=(N, D2)) * np.hypot(e2, 0.2)
    # Masks: NaN data (finite error) and infinite errors (finite data).
    nan1 = rng.uniform(size=(N, D1)) < 0.1
    inf1 = ~nan1 & (rng.uniform(size=(N, D1)) < 0.05)
    nan2 = rng.uniform(size=(N, D2)) < 0.1
    inf2 = ~nan2 & (rng.uniform(size=(N, D2)) < 0.05)
    nan2[3] = True  # a star without labels
    inf2[3] = False
    nan1[FULL] = True  # a star with nothing observed at all
    inf1[FULL] = False
    inf2[FULL], nan2[FULL] = True, False
    return {
        "z": z,
        "W1": W1,
        "b1": b1,
        "W2": W2,
        "y1": y1,
        "y2": y2,
        "e1": e1,
        "e2": e2,
        "nan1": nan1,
        "inf1": inf1,
        "nan2": nan2,
        "inf2": inf2,
    }


def _masked(y, e, nan, inf, garbage=None):
    """Apply a mask: NaN data where ``nan``, infinite error where ``inf``."""
    y, e = y.copy(), e.copy()
    y[nan] = np.nan
    e[inf] = np.inf
    if garbage is not None:  # same missing set, written differently
        y[nan] = garbage
        e[nan] = np.inf
    return y, e


def make_data(seed: int = 0, garbage=None, shift: float = 0.0, dtype=np.float64):
    t = _truth(seed)
    y1, e1 = _masked(t["y1"] + shift, t["e1"], t["nan1"], t["inf1"], garbage)
    y2, e2 = _masked(t["y2"], t["e2"], t["nan2"], t["inf2"], garbage)
    return PolluxData(
        flux=OutputData(y1.astype(dtype), err=e1.astype(dtype)),
        label=OutputData(y2.astype(dtype), err=e2.astype(dtype)),
    )


def _scatter_prior(kind: str, d: int):
    if kind == "none":
        return None
    if kind == "scalar":
        return dist.HalfNormal(1.0)
    return dist.HalfNormal(1.0).expand((d,))


def make_model(flux_s: str = "vector", label_s: str = "scalar") -> plx.LuxModel:
    """Affine flux (non-trivial Normal priors) and linear labels."""
    model = plx.LuxModel(latent_size=K)
    flux_priors = {"A": dist.Normal(0.1, 2.0), "b": dist.Normal(0.0, 10.0)}
    label_priors = {}
    if (p := _scatter_prior(flux_s, D1)) is not None:
        flux_priors["s"] = p
    if (p := _scatter_prior(label_s, D2)) is not None:
        label_priors["s"] = p
    model.register_output("flux", AffineTransform(D1, param_priors=flux_priors))
    model.register_output("label", LinearTransform(D2, param_priors=label_priors))
    return model


def make_quadratic_model(fixed_latents: bool = False) -> plx.LuxModel:
    """Quadratic flux with a per-pixel scatter (HalfNormal, or a Gamma prior,
    whose s-step checks a Newton step with a second data pass) and affine labels."""
    from pollux.models.transforms import QuadraticTransform

    model = plx.LuxModel(latent_size=K)
    s_prior = dist.Gamma(2.0, 10.0) if fixed_latents else dist.HalfNormal(1.0)
    model.register_output(
        "flux", QuadraticTransform(D1, param_priors={"s": s_prior.expand((D1,))})
    )
    model.register_output(
        "label", AffineTransform(D2, param_priors={"s": dist.HalfNormal(1.0)})
    )
    return model


def fixed_params_of(config: str):
    t = _truth()
    if config == "partly_fixed":  # flux: A fixed, b and s free; label: s fixed
        return {"flux": {"A": t["W1"]}, "label": {"s": np.float64(0.05)}}
    if config == "fixed_latents":  # latents and flux b fixed
        return {"latents": t["z"], "flux": {"b": t["b1"]}}
    return None


CONFIGS = {
    "plain": ("none", "none"),
    "scatter": ("vector", "scalar"),
    "partly_fixed": ("vector", "scalar"),
    "fixed_latents": ("scalar", "vector"),
}


def random_params(flux_s: str, label_s: str, seed: int = 5):
    rng = np.random.default_rng(seed)
    params = {
        "flux": {"A": rng.normal(size=(D1, K)), "b": rng.normal(size=D1)},
        "label": {"A": rng.normal(size=(D2, K))},
    }
    for name, kind, d in (("flux", flux_s, D1), ("label", label_s, D2)):
        if kind == "scalar":
            params[name]["s"] = np.float64(0.2)
        elif kind == "vector":
            params[name]["s"] = rng.uniform(0.05, 0.5, size=d)
    return params


def big_problem():
    """A problem whose plain EM runs long (hundreds of stars, slow convergence)."""
    rng = np.random.default_rng(5)
    n = 600
    z = rng.normal(size=(n, 2))
    y1 = z @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(n, 6))
    y2 = z @ rng.normal(size=(2, 2)) + 0.3 * rng.normal(size=(n, 2))
    return PolluxData(
        flux=OutputData(y1, err=np.full_like(y1, 0.1)),
        label=OutputData(y2, err=np.full_like(y2, 0.05)),
    )


#: Chunked or padded against plain: a converged fit, and one star's exact values.
RTOL_FIT = 1e-7
RTOL_STAR = 1e3 * np.finfo(np.float64).eps


# ----------------------------------------------------------------------------------
# One model per output kind (the equivalence matrix, also run in a subprocess)
# ----------------------------------------------------------------------------------
#: The kind of each output of `kind_model`: both outputs of that kind, except that a
#: quadratic flux goes with linear labels (the Lux set-up).
KINDS = {
    "linear": {"flux": "linear", "label": "linear"},
    "affine": {"flux": "affine", "label": "affine"},
    "quadratic": {"flux": "quadratic", "label": "linear"},
}
_TRANSFORMS = {
    "linear": LinearTransform,
    "affine": AffineTransform,
    "quadratic": QuadraticTransform,
}


def kind_model(kind: str) -> plx.LuxModel:
    """Flux and labels of the output kinds ``KINDS[kind]`` with non-trivial Normal
    priors on the weights and HalfNormal scatter priors (one per flux pixel, one
    shared by the labels)."""
    model = plx.LuxModel(latent_size=K)
    for name, d in (("flux", D1), ("label", D2)):
        out = KINDS[kind][name]
        priors = {"A": dist.Normal(0.1, 2.0)}
        if out != "linear":
            priors["b"] = dist.Normal(0.0, 10.0)
        if out == "quadratic":
            priors["Q"] = dist.Normal(-0.1, 1.5)
        scatter = dist.HalfNormal(1.0)
        priors["s"] = scatter.expand((d,)) if name == "flux" else scatter
        model.register_output(name, _TRANSFORMS[out](d, param_priors=priors))
    return model


def kind_params(kind: str, seed: int = 7, q_scale: float = 0.3):
    """Parameters of `kind_model` (``q_scale=0``: a quadratic flux with ``Q = 0``)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, d in (("flux", D1), ("label", D2)):
        out = KINDS[kind][name]
        p = {"A": rng.normal(size=(d, K))}
        if out != "linear":
            p["b"] = rng.normal(size=d)
        if out == "quadratic":
            p["Q"] = q_scale * rng.normal(size=(d, K, K))  # not symmetric
        p["s"] = rng.uniform(0.05, 0.5, size=d) if name == "flux" else np.float64(0.2)
        params[name] = p
    return params


def n_features(out: str) -> int:
    """Features of one row of an output of kind ``out``: z; (z, 1); or the K(K+1)/2
    products, z and 1."""
    return {"linear": K, "affine": K + 1, "quadratic": K * (K + 1) // 2 + K + 1}[out]


def kind_param_cov(kind: str, seed: int = 8):
    """Small random SPD covariances of each output's rows (as `FitResult.param_cov`)."""
    rng = np.random.default_rng(seed)
    cov = {}
    for name, d in (("flux", D1), ("label", D2)):
        m = n_features(KINDS[kind][name])
        Y = rng.normal(size=(d, m, m))
        cov[name] = 0.01 * Y @ np.swapaxes(Y, 1, 2) / m
    return cov


def fixed_posterior(seed: int = 9) -> LatentPosterior:
    """A Gaussian posterior of N stars' latents (random means, SPD covariances)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, K, K))
    cov = 0.1 * X @ np.swapaxes(X, 1, 2) + 0.05 * np.eye(K)
    return LatentPosterior(rng.normal(size=(N, K)), cov)
