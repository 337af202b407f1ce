"""Shared fixtures for the pollux test suite.

float64 is switched on at import (as in the tutorials); the float32 path is tested in
a fresh interpreter where x64 stays off (`run_fresh`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import pollux as plx  # noqa: E402

# The shared builders of the model tests (tests/models/builders.py, not a test
# module) import as `builders` whatever pytest's import mode: its default mode puts
# tests/models on sys.path only when it imports a test module from there.
# Likewise tests/fuzz/fuzzing.py (what the fuzzing tests share).
for _shared in ("models", "fuzz"):
    _folder = str(Path(__file__).parent / _shared)
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

# Tiny problem sizes: every SVI test compiles its own model, so keep arrays small.
N_STARS = 48
N_LATENTS = 2
N_LABELS = 2
N_FLUX = 6


def make_data(
    n_stars: int = N_STARS,
    n_latents: int = N_LATENTS,
    n_labels: int = N_LABELS,
    n_flux: int = N_FLUX,
    seed: int = 0,
):
    """Simulated observations wrapped as a (not yet preprocessed) PolluxData."""
    obs, truth = plx.datasets.make_simulated_linear_data(
        n_stars=n_stars,
        n_latents=n_latents,
        n_labels=n_labels,
        n_flux=n_flux,
        rng=seed,
    )
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
    return data, obs, truth


@pytest.fixture(scope="session")
def simulated():
    """``(data, obs, truth)``: raw PolluxData, the observed arrays and the truth."""
    return make_data()


@pytest.fixture(scope="session")
def raw_data(simulated):
    """PolluxData in physical units (flux + label, with errors and preprocessors)."""
    return simulated[0]


@pytest.fixture(scope="session")
def pre_data(raw_data):
    """The same data, preprocessed (model units)."""
    return raw_data.preprocess()


@pytest.fixture(scope="session")
def obs(simulated):
    return simulated[1]


@pytest.fixture(scope="session")
def truth(simulated):
    return simulated[2]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _run_fresh(script: str, *args: str, timeout: float = 300, env: dict | None = None):
    """Run ``script`` in a fresh Python (JAX on the CPU, x64 off unless ``env`` says
    otherwise) with a hard ``timeout``; return the JSON object it printed on its
    last line that starts with ``RESULT``. Fails, never hangs, if the script does
    not finish in time."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "0"}
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")[-3000:]
        pytest.fail(f"the script did not finish within {timeout} s (a hang?):\n{out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert lines, proc.stdout[-3000:]
    return json.loads(lines[-1][len("RESULT") :])


@pytest.fixture(scope="session")
def run_fresh():
    """`_run_fresh`: a script in a fresh interpreter, with a timeout, JSON back."""
    return _run_fresh
