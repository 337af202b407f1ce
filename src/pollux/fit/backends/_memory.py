"""Stars in memory: on one device (`Local`), or sharded over several JAX devices
(`Sharded`: the closed-form kernels, and the variational EM of quadratic
outputs, under `jax.shard_map`).

With `Sharded`, every device holds ``N / n_devices`` stars (padded with missing stars to a
multiple) and runs the chunked kernels on them; the sums over stars (the M-step
and s-step statistics, the objective) are summed over the devices with
`jax.lax.psum` (`EMProblem.axis_name`), so every device takes the same steps and
the parameters stay replicated. During the sweeps only those O(D K²) sums cross
between devices, never the spectra. Per-star results (posteriors, predictions)
stay sharded; so do the variational EM's per-star posteriors, and SQUAREM's
step length sums their changes over the devices. (The PCA start values are
computed once per fit on the default device, from the caller's arrays, which
live there already.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..._params import LATENTS
from ...core import em, posterior, vem
from ...core.blocks import count_observed
from ...core.chunks import pad_rows
from ...core.features import n_features
from ...core.linalg import cholesky, inverse_from_cholesky
from ...core.pca import pca_latents
from ...core.problem import EMProblem
from .._setup import on_device
from .._sizes import chunk_size_for, pad_blocks, padded_rows
from ..checks import blocks_for
from ._base import Backend, Final, Prepared

__all__ = ["AXIS", "Local", "Sharded", "check_devices"]

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
def _vem_chunk(mesh: Mesh, n_steps: int, n_inner: int, accelerate: bool) -> Callable:
    def run(blocks, fixed, rest, params, mean, prec, prev, threshold, left):
        state = vem.VState(params, mean, prec)
        problem = _local(rest, blocks, fixed)
        args = (prev, threshold, left, n_steps, n_inner, accelerate)
        out, losses, n_run, done = vem.vem_chunk(problem, state, *args)
        return out.params, out.mean, out.prec, losses, n_run, done

    specs = (_STARS, _STARS, _ALL, _ALL, _STARS, _STARS, _ALL, _ALL, _ALL)
    return _mapped(run, mesh, specs, (_ALL, _STARS, _STARS, _ALL, _ALL, _ALL))


@functools.cache
def _vem_final(mesh: Mesh, n_inner: int) -> Callable:
    def run(blocks, fixed, rest, params, mean, prec):
        problem = _local(rest, blocks, fixed)
        out, loss, row_covs = vem.vem_final(
            problem, vem.VState(params, mean, prec), n_inner
        )
        return out.mean, out.prec, loss, row_covs

    specs = (_STARS, _STARS, _ALL, _ALL, _STARS, _STARS)
    return _mapped(run, mesh, specs, (_STARS, _STARS, _ALL, _ALL))


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


class Local(Backend):
    """The stars in memory on the default device: the core kernels as they are."""

    name = "local"

    # The kernels; `Sharded` runs the same ones under shard_map.
    def place(self, tree: Any) -> Any:
        """Per-star arrays where the kernels read them."""
        return tree

    def for_devices(self, problem: EMProblem) -> EMProblem:
        """``problem`` as the kernels of this back-end sum over its stars."""
        return problem

    def _em_chunk(self, problem, params, prev, threshold, left, n_steps, accelerate):
        return em.em_chunk(problem, params, prev, threshold, left, n_steps, accelerate)

    def _final_state(self, problem, params):
        return em.final_state(problem, params)

    def _initialize(self, problem, params, latents):
        return em.initialize(problem, params, latents)

    def _vem_chunk(self, problem, state, prev, threshold, left, n_steps, n_inner, acc):
        args = (prev, threshold, left, n_steps, n_inner, acc)
        return vem.vem_chunk(problem, state, *args)

    def _vem_final(self, problem, state, n_inner):
        return vem.vem_final(problem, state, n_inner)

    def _posterior_moments(self, blocks, Ws, bs, s2s, chunk_size):
        return posterior.posterior_moments(blocks, Ws, bs, s2s, chunk_size=chunk_size)

    def _predictive(self, mean, cov, W, b, s2, row_cov, chunk_size):
        return posterior.predictive(mean, cov, W, b, s2, row_cov, chunk_size=chunk_size)

    # The steps of the interface.
    def blocks(
        self, plan, model, data, k: int | None = None
    ) -> tuple[tuple, int, int, int]:
        """The checked blocks of ``data`` padded for the devices, the caller's
        stars, the padded stars and the chunk size (for per-star matrices of
        size ``k + 1``, by default the latents')."""
        blocks = blocks_for(model, data, plan.names, plan.fixed, plan.call)
        n, dtype = blocks[0].values.shape[0], blocks[0].values.dtype
        blocks, n_pad, n_local = pad_blocks(blocks, self.n_devices)
        widths = (b.values.shape[1] for b in blocks)
        k = plan.k if k is None else k
        size = chunk_size_for(plan.chunk_size, n_local, widths, k, dtype)
        return blocks, n, n_pad, size

    def _prepare(self, plan, model, data, problem_for, k: int) -> Prepared:
        """The problem of the placed blocks (`blocks`, per-star matrices of size
        ``k + 1``) with the fixed latents padded and placed alike; its state
        holds ``(blocks, chunk size, padded stars, latent size)``."""
        blocks, n, n_pad, size = self.blocks(plan, model, data, k)
        dtype = blocks[0].values.dtype
        z_fixed = plan.fixed.get(LATENTS)
        if z_fixed is not None:
            z_fixed = self.place(pad_rows(on_device(z_fixed, dtype), n_pad, 0.0))
        problem, params = problem_for(self.place(blocks), size, z_fixed)
        return Prepared(
            problem=self.for_devices(problem),
            params=params,
            observed=tuple(int(count_observed((b,))) for b in blocks),
            n_stars=n,
            state=(blocks, size, n_pad, plan.k),
        )

    def prepare(self, plan, model, data, problem_for) -> Prepared:
        return self._prepare(plan, model, data, problem_for, plan.k)

    def start(self, prepared: Prepared) -> tuple:
        problem, params = prepared.problem, prepared.params
        if not any(s.A_free for s in problem.specs):
            return params
        blocks, size, _, k = prepared.state
        z0 = problem.fixed_latents
        if z0 is None:  # on the default device, from the caller's arrays
            z0 = pca_latents(blocks, k, size)
        return self._initialize(problem, params, z0)

    def sweeps(self, prepared: Prepared, n_steps: int, accelerate: bool):
        problem = prepared.problem
        return lambda p, prev, threshold, left: self._em_chunk(
            problem, p, prev, threshold, left, n_steps, accelerate
        )

    def final(self, prepared: Prepared, params: tuple) -> Final:
        problem, n = prepared.problem, prepared.n_stars
        post, loss, row_covs = self._final_state(problem, params)
        if problem.fixed_latents is not None:
            z = problem.fixed_latents[:n]
            k = z.shape[1]
            return Final(loss, z, jnp.zeros((n, k, k), z.dtype), row_covs)
        return Final(loss, post.mean[:n], post.cov[:n], row_covs)

    def posterior(self, plan, model, data, affine) -> tuple:
        blocks, n, _, size = self.blocks(plan, model, data)
        mean, cov = self._posterior_moments(self.place(blocks), *affine, size)
        return mean[:n], cov[:n]

    def predictive(self, plan, mean, cov, affine, row_covs) -> dict[str, tuple]:
        n, k = mean.shape[0], plan.k
        dtype = mean.dtype
        widths = [W.shape[0] for W in affine[0]]
        row = (2 * sum(widths) + k + k * k) * np.dtype(dtype).itemsize
        n_pad, n_local = padded_rows(n, row, self.n_devices)
        z_mean, z_cov = self.place(
            (pad_rows(mean, n_pad, 0.0), pad_rows(cov, n_pad, 0.0))
        )
        size = chunk_size_for(plan.chunk_size, n_local, [max(widths)], k, dtype)
        out = {}
        for name, W, b, s2 in zip(plan.names, *affine, strict=True):
            C = row_covs.get(name)
            C = None if C is None else C.astype(dtype)
            mu, err = self._predictive(z_mean, z_cov, W, b, s2, C, size)
            out[name] = (mu[:n], err[:n])
        return out

    # The variational EM of quadratic outputs (`pollux.core.vem`).
    def vem_prepare(self, plan, model, data, problem_for) -> Prepared:
        k = n_features(plan.k) - 1
        return self._prepare(plan, model, data, problem_for, k)

    def vem_start(self, prepared: Prepared, params: tuple, mean, cov) -> vem.VState:
        problem, n, n_pad = prepared.problem, prepared.n_stars, prepared.state[2]
        k, dtype = problem.k, problem.blocks[0].values.dtype
        if problem.fixed_latents is not None:
            prec = self.place(jnp.zeros((n_pad, k, k), dtype))
            return vem.VState(params, problem.fixed_latents, prec)
        prec = inverse_from_cholesky(cholesky(jnp.asarray(cov, dtype)))
        # padding stars: the prior, which they keep (they have no data)
        eye = jnp.broadcast_to(jnp.eye(k, dtype=dtype), (n_pad - n, k, k))
        mean = pad_rows(jnp.asarray(mean, dtype), n_pad, 0.0)
        return vem.VState(params, *self.place((mean, jnp.concatenate([prec, eye]))))

    def vem_sweeps(
        self, prepared: Prepared, n_steps: int, n_inner: int, accelerate: bool
    ) -> Callable:
        problem = prepared.problem
        return lambda state, prev, threshold, left: self._vem_chunk(
            problem, state, prev, threshold, left, n_steps, n_inner, accelerate
        )

    def vem_final(self, prepared: Prepared, state: vem.VState, n_inner: int):
        problem, n = prepared.problem, prepared.n_stars
        state, loss, row_covs = self._vem_final(problem, state, n_inner)
        mean = state.mean[:n]
        if problem.fixed_latents is not None:
            cov = jnp.zeros((n, problem.k, problem.k), mean.dtype)
        else:
            cov = inverse_from_cholesky(cholesky(state.prec[:n]))
        return state.params, Final(loss, mean, cov, row_covs)


class Sharded(Local):
    """The stars split over the devices of ``mesh``: the same kernels under
    `jax.shard_map`, the sums over stars completed by a ``psum`` (module
    docstring)."""

    name = "sharded"

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    def place(self, tree: Any) -> Any:
        return jax.device_put(tree, NamedSharding(self.mesh, _STARS))

    def for_devices(self, problem: EMProblem) -> EMProblem:
        return dataclasses.replace(problem, axis_name=AXIS)

    def _em_chunk(self, problem, params, prev, threshold, left, n_steps, accelerate):
        blocks, fixed, rest = _split(problem)
        fn = _em_chunk(self.mesh, n_steps, accelerate)
        return fn(blocks, fixed, rest, params, prev, threshold, left)

    def _final_state(self, problem, params):
        blocks, fixed, rest = _split(problem)
        return _final_state(self.mesh)(blocks, fixed, rest, params)

    def _initialize(self, problem, params, latents):
        blocks, fixed, rest = _split(problem)
        return _initialize(self.mesh)(blocks, fixed, rest, params, latents)

    def _vem_chunk(self, problem, state, prev, threshold, left, n_steps, n_inner, acc):
        blocks, fixed, rest = _split(problem)
        fn = _vem_chunk(self.mesh, n_steps, n_inner, acc)
        params, mean, prec, *out = fn(
            blocks, fixed, rest, *state, prev, threshold, left
        )
        return (vem.VState(params, mean, prec), *out)

    def _vem_final(self, problem, state, n_inner):
        blocks, fixed, rest = _split(problem)
        mean, prec, loss, row_covs = _vem_final(self.mesh, n_inner)(
            blocks, fixed, rest, *state
        )
        return vem.VState(state.params, mean, prec), loss, row_covs

    def _posterior_moments(self, blocks, Ws, bs, s2s, chunk_size):
        return _posterior_moments(self.mesh, chunk_size)(blocks, Ws, bs, s2s)

    def _predictive(self, mean, cov, W, b, s2, row_cov, chunk_size):
        return _predictive(self.mesh, chunk_size)(mean, cov, W, b, s2, row_cov)
