"""Stars sharded over several JAX devices: the closed-form kernels under
`jax.shard_map`.

Every device holds ``N / n_devices`` stars (padded with missing stars to a
multiple) and runs the chunked kernels on them; the sums over stars (the M-step
and s-step statistics, the objective) are summed over the devices with
`jax.lax.psum` (`EMProblem.axis_name`), so every device takes the same steps and
the parameters stay replicated. During the sweeps only those O(D K²) sums cross
between devices, never the spectra. Per-star results (posteriors, predictions)
stay sharded. (The PCA start values are computed once per fit on the default
device, from the caller's arrays, which live there already.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ...core import em, posterior
from ...core.problem import EMProblem

__all__ = [
    "AXIS",
    "check_devices",
    "em_chunk",
    "final_state",
    "initialize",
    "n_devices",
    "posterior_moments",
    "predictive",
    "shard_stars",
    "sharded_problem",
]

AXIS = "stars"
_STARS, _ALL = P(AXIS), P()


def check_devices(devices: Any, call: str) -> Mesh | None:
    """The mesh of ``devices`` (an integer: the first that many of `jax.devices`;
    or a sequence or array of devices); None for None (the default device)."""
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, (bool, np.bool_, str)) or not isinstance(
        devices, (int, np.integer, np.ndarray, Sequence)
    ):
        msg = (
            f"{call}(devices=...): expected a number of devices or a list of JAX "
            f"devices, got {type(devices).__name__}"
        )
        raise TypeError(msg)
    if isinstance(devices, (int, np.integer)):
        count = int(devices)
        if not 1 <= count <= len(available):
            msg = (
                f"{call}(devices=...): JAX sees {len(available)} device(s) "
                f"({available[0].platform}), got devices={count}; on a CPU, "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N (set before "
                "JAX starts) makes N devices"
            )
            raise ValueError(msg)
        devices = available[:count]
    elif isinstance(devices, np.ndarray):
        devices = devices.ravel().tolist()
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        msg = f"{call}(devices=...): expected a non-empty list of JAX devices"
        raise TypeError(msg)
    if len(set(devices)) != len(devices):
        msg = f"{call}(devices=...): a device is listed twice"
        raise ValueError(msg)
    return Mesh(np.array(devices), (AXIS,))


def n_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def shard_stars(tree: Any, mesh: Mesh | None) -> Any:
    """Every array of ``tree`` split along its first axis (stars) over ``mesh``
    (``tree`` itself when ``mesh`` is None)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, _STARS))


def _local(problem: EMProblem, blocks: tuple, fixed: Any) -> EMProblem:
    return eqx.tree_at(
        lambda p: (p.blocks, p.fixed_latents),
        problem,
        (blocks, fixed),
        is_leaf=lambda x: x is None,
    )


def _split(problem: EMProblem) -> tuple[tuple, Any, EMProblem]:
    """``(blocks, fixed latents, the rest)``: per-star parts and replicated ones."""
    rest = _local(problem, (), None)
    return problem.blocks, problem.fixed_latents, rest


@functools.cache
def _em_chunk(mesh: Mesh, n_steps: int, accelerate: bool) -> Callable:
    def run(blocks, fixed, rest, params, prev, threshold, left):
        problem = _local(rest, blocks, fixed)
        return em.em_chunk(problem, params, prev, threshold, left, n_steps, accelerate)

    specs = (_STARS, _STARS, _ALL, _ALL, _ALL, _ALL, _ALL)
    return _mapped(run, mesh, specs, _ALL)


@functools.cache
def _final_state(mesh: Mesh) -> Callable:
    def run(blocks, fixed, rest, params):
        return em.final_state(_local(rest, blocks, fixed), params)

    out = (posterior.PosteriorStats(_STARS, _STARS, _ALL), _ALL, _ALL)
    return _mapped(run, mesh, (_STARS, _STARS, _ALL, _ALL), out)


@functools.cache
def _initialize(mesh: Mesh) -> Callable:
    def run(blocks, fixed, rest, params, latents):
        return em.initialize(_local(rest, blocks, fixed), params, latents)

    return _mapped(run, mesh, (_STARS, _STARS, _ALL, _ALL, _STARS), _ALL)


@functools.cache
def _posterior_moments(mesh: Mesh, chunk_size: int) -> Callable:
    def run(blocks, Ws, bs, s2s):
        return posterior.posterior_moments(blocks, Ws, bs, s2s, chunk_size=chunk_size)

    return _mapped(run, mesh, (_STARS, _ALL, _ALL, _ALL), _STARS)


@functools.cache
def _predictive(mesh: Mesh, chunk_size: int) -> Callable:
    def run(mean, cov, W, b, s2, row_cov):
        return posterior.predictive(mean, cov, W, b, s2, row_cov, chunk_size=chunk_size)

    return _mapped(run, mesh, (_STARS, _STARS, _ALL, _ALL, _ALL, _ALL), _STARS)


def _mapped(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Callable:
    return jax.jit(
        jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
    )


# The kernels of `pollux.core`, on one device when ``mesh`` is None, else with the
# stars sharded over ``mesh``: then the problem's ``axis_name`` is `AXIS`
# (`sharded_problem`) and its per-star arrays are sharded (`shard_stars`).
def em_chunk(mesh, problem, params, prev, threshold, left, n_steps, accelerate):
    if mesh is None:
        return em.em_chunk(problem, params, prev, threshold, left, n_steps, accelerate)
    blocks, fixed, rest = _split(problem)
    fn = _em_chunk(mesh, n_steps, accelerate)
    return fn(blocks, fixed, rest, params, prev, threshold, left)


def final_state(mesh, problem, params):
    if mesh is None:
        return em.final_state(problem, params)
    blocks, fixed, rest = _split(problem)
    return _final_state(mesh)(blocks, fixed, rest, params)


def initialize(mesh, problem, params, latents):
    if mesh is None:
        return em.initialize(problem, params, latents)
    blocks, fixed, rest = _split(problem)
    return _initialize(mesh)(blocks, fixed, rest, params, latents)


def posterior_moments(mesh, blocks, Ws, bs, s2s, chunk_size):
    if mesh is None:
        return posterior.posterior_moments(blocks, Ws, bs, s2s, chunk_size=chunk_size)
    return _posterior_moments(mesh, chunk_size)(blocks, Ws, bs, s2s)


def predictive(mesh, mean, cov, W, b, s2, row_cov, chunk_size):
    if mesh is None:
        return posterior.predictive(mean, cov, W, b, s2, row_cov, chunk_size=chunk_size)
    return _predictive(mesh, chunk_size)(mean, cov, W, b, s2, row_cov)


def sharded_problem(problem: EMProblem) -> EMProblem:
    """``problem`` whose sums over stars also run over the devices of `AXIS`."""
    return dataclasses.replace(problem, axis_name=AXIS)
