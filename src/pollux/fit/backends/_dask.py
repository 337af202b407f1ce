r"""Closed-form fits of outputs held in Dask arrays.

The data stay where Dask keeps them, in chunks of stars. Each pass of an EM sweep
over the data (pass A: posterior, objective and M-step statistics; pass B: the
s-step sums; pass C when a prior needs it; `pollux.core.em`) runs the same jitted
kernels on every chunk, and only their sums, whose sizes do not depend on the
number of stars (:math:`O(D K^2)`), come back to the client; the client solves the
M-step and the s-step and sends the new parameters out. A sweep is the in-memory
arithmetic summed in another order.

With a `dask.distributed` client the chunks are persisted on its workers, and the
chunks a worker holds are summed by one task on that worker, so each pass moves
one set of sums per worker (and the parameters to each) across the network, never
the spectra; per-star results (the latent posterior) stay on the workers between
passes. The grouping is fixed for the whole fit; a lost worker's chunks and tasks
are recomputed by Dask from their lineage (the source arrays) in the same groups,
so the result does not depend on it. Without a client the chunks are computed by
Dask's local scheduler for each pass (from the source: memory stays bounded by a
few chunks and the posterior; persist the arrays first to keep them in memory).

The PCA start is `pollux.core.pca.pca_latents`'s: its products with the data run
per chunk and its QR and SVD steps on the client, on three gathered ``(N, K + 8)``
products, so the start, and the fit, are the in-memory ones. The posterior of the
training stars comes back to the client at the end (a `FitResult` holds it in
memory: ``N × K²`` numbers). The workers get the client's ``jax_enable_x64``
(`pollux.fit.backends._workers.X64Plugin`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..._params import LATENTS
from ...core import em, posterior, vem
from ...core.blocks import Block, count_observed
from ...core.chunks import pad_block, pad_rows
from ...core.features import n_features
from ...core.linalg import cholesky, inverse_from_cholesky
from ...core.pca import pca_scores
from ...core.problem import EMProblem
from ...data.values import is_lazy
from .._sizes import chunk_size_for
from ..checks import check_output, read_block
from ._base import Backend, Final, Prepared

__all__ = [
    "Chunk",
    "Dask",
    "DaskPasses",
    "DaskVEMPasses",
    "Runner",
    "chunks_of",
    "is_lazy_data",
]


def is_lazy_data(data, names: Sequence[str]) -> bool:
    """Whether any of the outputs ``names`` of ``data`` holds Dask arrays."""
    return any(data[name].lazy for name in names)


class Chunk(NamedTuple):
    """One Dask chunk of stars as the kernels see it: the blocks of every output
    and the fixed latents of its stars (or None), padded with missing stars to the
    size of the largest chunk (one compiled shape); ``n`` rows are real."""

    blocks: tuple[Block, ...]
    latents: Any
    n: int


def _load(
    rows: int,
    outputs: list[tuple[np.ndarray, np.ndarray | None]],
    latents: np.ndarray | None,
    checks: list[tuple[str, bool]],
    call: str,
    start: int,
) -> Chunk:
    """A chunk read from its Dask sources (stars ``start`` on), checked like
    in-memory data."""
    blocks = []
    for (values, err), (name, has_scatter) in zip(outputs, checks, strict=True):
        where = f"{call}: output {name!r}, stars {start} to {start + len(values) - 1}"
        block = read_block(values, err, name, has_scatter, where, call)
        blocks.append(pad_block(block, rows))
    n = len(outputs[0][0])
    z = None if latents is None else pad_rows(jnp.asarray(latents), rows, 0.0)
    return Chunk(tuple(blocks), z, n)


def _group(
    fn: Callable, args: tuple, chunks: list[Chunk], prev: Any, several: bool = False
) -> tuple:
    """``fn(chunk, state, *args) -> (sums, keep)`` over a group of chunks:
    the sum of their sums (numpy) and what each keeps. ``prev`` is the result of
    an earlier `_group` call on the same chunks (its kept states), or None; with
    ``several``, a tuple of such results (``state``: a tuple of what each kept)."""
    if prev is None:
        states = [None] * len(chunks)
    elif several:
        states = list(zip(*(p[1] for p in prev), strict=True))
    else:
        states = prev[1]
    total, kept = None, []
    for chunk, state in zip(chunks, states, strict=True):
        sums, keep = fn(chunk, state, *args)
        total = sums if total is None else jax.tree.map(operator.add, total, sums)
        kept.append(keep)
    return jax.device_get(total), kept


def _nbytes(tree: Any) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


class Runner:
    """Passes of a per-chunk function over the chunks of Dask arrays.

    Parameters
    ----------
    parts
        One `dask.delayed` `Chunk` per chunk of stars.
    client
        A `dask.distributed.Client` (the chunks are persisted on its workers and
        grouped by worker), or None (Dask's local scheduler, one group per chunk,
        chunks computed for each pass).
    """

    def __init__(self, parts: list, client: Any = None):
        self.client = client
        #: Bytes of parameters sent and of sums received by the client, and
        #: the passes run (`FitResult.stats` of a Dask fit).
        self.traffic = {"bytes_sent": 0, "bytes_received": 0, "passes": 0}
        if client is None:
            self.parts = parts
            self.groups = [(None, [i]) for i in range(len(parts))]
            return
        from distributed import wait

        self.parts = client.compute(parts)
        wait(self.parts)
        for fut in self.parts:
            if fut.status == "error":
                fut.result()  # raises the chunk's error (e.g. a refused value)
        where = client.who_has(self.parts)
        by_worker: dict[str, list[int]] = {}
        for i, fut in enumerate(self.parts):
            # (no holder: lost since; Dask recomputes it where it runs the group)
            holder = min(where[fut.key], default=None)
            by_worker.setdefault(holder, []).append(i)
        self.groups = sorted(by_worker.items(), key=lambda item: item[1][0])

    def run(
        self, fn: Callable, *args: Any, states: list | tuple | None = None
    ) -> tuple[Any, list]:
        """``fn(chunk, state, *args) -> (sums, keep)`` on every chunk: the sums
        added over all chunks (in a fixed order) and a handle per group on what
        the chunks keep (``states`` of a later call; a tuple of several such
        handles gives ``fn`` a tuple of states)."""
        args = jax.device_get(args)
        several = isinstance(states, tuple)
        if states is None:
            states = [None] * len(self.groups)
        elif several:
            states = list(zip(*states, strict=True))
        if self.client is None:
            import dask

            tasks = [
                dask.delayed(_group, pure=False)(
                    fn, args, [self.parts[i] for i in idx], prev, several
                )
                for (_, idx), prev in zip(self.groups, states, strict=True)
            ]
            results = list(dask.compute(*tasks))
            sums = [r[0] for r in results]
        else:
            results = [
                self.client.submit(
                    _group,
                    fn,
                    args,
                    [self.parts[i] for i in idx],
                    prev,
                    several,
                    workers=None if worker is None else [worker],
                    allow_other_workers=True,
                    pure=False,
                )
                for (worker, idx), prev in zip(self.groups, states, strict=True)
            ]
            sums = self.client.gather(
                [
                    self.client.submit(operator.itemgetter(0), r, pure=False)
                    for r in results
                ]
            )
        total = sums[0]
        for s in sums[1:]:
            total = jax.tree.map(operator.add, total, s)
        self.traffic["bytes_sent"] += _nbytes(args) * len(self.groups)
        self.traffic["bytes_received"] += _nbytes(sums)
        self.traffic["passes"] += 1
        return total, results

    def collect(self, states: list) -> list:
        """What every chunk kept (in chunk order), brought to the client."""
        if self.client is not None:
            states = self.client.gather(states)
        kept = [None] * len(self.parts)
        for (_, idx), state in zip(self.groups, states, strict=True):
            for i, keep in zip(idx, state[1], strict=True):
                kept[i] = keep
        return kept


# ----------------------------------------------------------------------------------
# Per-chunk work (runs on the workers)
# ----------------------------------------------------------------------------------
def _problem(template: EMProblem, chunk: Chunk) -> EMProblem:
    return dataclasses.replace(
        template, blocks=chunk.blocks, fixed_latents=chunk.latents
    )


_floor_sums = jax.jit(em.floor_sums)
_posterior_pass = jax.jit(em.posterior_pass, static_argnames=("unweighted",))
_s_sum_pass = jax.jit(em.s_sum_pass)
_s_value_pass = jax.jit(em.s_value_pass)


def _w_constants(chunk: Chunk, state, template: EMProblem):
    """The observed count of each output and the sums of the s floors."""
    problem = _problem(template, chunk)
    counts = tuple(count_observed((b,)) for b in problem.blocks)
    return (counts, _floor_sums(problem)), None


def _w_pass_a(chunk: Chunk, state, template: EMProblem, params):
    """Pass A; keeps the posterior (or the fixed latents) of the chunk's stars."""
    a = _posterior_pass(_problem(template, chunk), params)
    return (a.nll, a.stats), (a.mean, a.cov)


def _w_start_a(chunk: Chunk, state, template: EMProblem, params):
    """The start regression's statistics on the latents ``state`` (kept)."""
    a = _posterior_pass(
        _problem(template, chunk), params, latents=state, unweighted=True
    )
    return a.stats, (state, None)


def _w_s_sums(chunk: Chunk, state, template: EMProblem, params, t0):
    mean, cov = state
    return _s_sum_pass(_problem(template, chunk), params, mean, cov, t0), state


def _w_s_values(chunk: Chunk, state, template: EMProblem, params, cands):
    mean, cov = state
    return _s_value_pass(_problem(template, chunk), params, mean, cov, cands), state


def _centred(chunk: Chunk, means: np.ndarray) -> np.ndarray:
    """The chunk's mean-centred outputs, zero where missing (padding included)."""
    x = np.concatenate([np.asarray(b.values) for b in chunk.blocks], axis=1)
    mask = np.concatenate([np.asarray(b.mask) for b in chunk.blocks], axis=1)
    return np.where(mask, x - means, 0).astype(x.dtype)


def _w_pca_means(chunk: Chunk, state):
    sums, counts = [], []
    seen = np.zeros(chunk.blocks[0].values.shape[0], bool)
    for b in chunk.blocks:
        mask = np.asarray(b.mask)
        sums.append(np.where(mask, np.asarray(b.values), 0).sum(axis=0))
        counts.append(mask.sum(axis=0))
        seen |= mask.any(axis=1)
    return (np.concatenate(sums), np.concatenate(counts), seen.sum()), None


def _w_pca_product(chunk: Chunk, state, means, v):
    """``X v`` (kept)."""
    return 0, _centred(chunk, means) @ v


def _w_pca_project(chunk: Chunk, q, means):
    """``Xᵀ q`` for the chunk's rows ``q`` of an ``(N, r)`` matrix."""
    return _centred(chunk, means).T @ q, None


def _w_fixed_latents(chunk: Chunk, state):
    return 0, chunk.latents


# The variational EM of quadratic outputs: the chunks keep ``(mean, prec, cov)``
# of their stars' posteriors from pass to pass (``cov`` None with fixed latents).
@functools.partial(jax.jit, static_argnames=("n_inner",))
def _vem_posterior(problem, params, mean, prec, n_inner):
    return vem.InMemoryV(problem).posterior(params, (mean, prec), n_inner)


_vem_s_sums = jax.jit(lambda problem, *a: vem.InMemoryV(problem).s_sums(*a))
_vem_s_values = jax.jit(lambda problem, *a: vem.InMemoryV(problem).s_values(*a))
_diff_sq = jax.jit(vem.diff_sq)
_extrapolated_stars = jax.jit(vem.extrapolated_stars)


def _w_vem_a(chunk: Chunk, stars, template, params, n_inner: int):
    """Variational pass A from the chunk's posteriors ``stars`` (the new ones kept)."""
    problem = _problem(template, chunk)
    nll, sums, (mean, prec), (_, cov) = _vem_posterior(
        problem, params, stars[0], stars[1], n_inner=n_inner
    )
    return (nll, sums), (mean, prec, cov)


def _w_vem_s_sums(chunk: Chunk, stars, template, params, t0):
    problem = _problem(template, chunk)
    return _vem_s_sums(problem, params, (stars[0], stars[2]), t0), None


def _w_vem_s_values(chunk: Chunk, stars, template, params, cands):
    problem = _problem(template, chunk)
    return _vem_s_values(problem, params, (stars[0], stars[2]), cands), None


def _w_star_sq(chunk: Chunk, stars):
    """SQUAREM's ``(|r|², |v|²)`` of the chunk's three successive posteriors."""
    return _diff_sq(*((mean, prec) for mean, prec, _ in stars)), None


def _w_extrapolate(chunk: Chunk, stars, alpha):
    """SQUAREM's extrapolated posteriors of the chunk's stars (kept)."""
    mean, prec = _extrapolated_stars(*((m, p) for m, p, _ in stars), alpha)
    return 0, (mean, prec, None)


def _w_vem_fixed(chunk: Chunk, state):
    """The fixed latents of the chunk's stars, with zero precision (kept)."""
    z = chunk.latents
    return 0, (z, jnp.zeros((*z.shape, z.shape[1]), z.dtype), None)


# ----------------------------------------------------------------------------------
# The fit (on the client)
# ----------------------------------------------------------------------------------
_row_covariances = jax.jit(em.row_covs)


class _Centred:
    """Products with the mean-centred outputs of the chunks for
    `pollux.core.pca.pca_scores`: the products run per chunk, the small QR and
    SVD steps on the client, on the gathered ``(N, K + 8)`` products (the data
    never move). The same start as in memory."""

    def __init__(self, runner: Runner, rows: list[int], d: int, dtype):
        (sums, counts, n_seen), _ = runner.run(_w_pca_means)
        self.runner, self.rows, self.d, self.dtype = runner, rows, d, dtype
        self.means = (sums / np.maximum(counts, 1)).astype(dtype)
        self.n = sum(rows)
        self.n_seen = max(int(n_seen), 1)

    def split(self, x: np.ndarray) -> list:
        """Per group of the runner: the rows of ``x`` of each of its chunks
        (padded), as states of the runner."""
        return [
            (None, [part for (part,) in parts])
            for _, parts in _per_chunk(self.runner, self.rows, (x,), (0,))
        ]

    def matmul(self, v):
        _, states = self.runner.run(_w_pca_product, self.means, np.asarray(v))
        kept = self.runner.collect(states)
        return jnp.asarray(
            np.concatenate([y[:m] for y, m in zip(kept, self.rows, strict=True)])
        )

    def rmatmul(self, q):
        total, _ = self.runner.run(
            _w_pca_project, self.means, states=self.split(np.asarray(q))
        )
        return jnp.asarray(total)


@functools.cache
def _host(fn: Callable) -> Callable:
    """A client step between passes, compiled once (traced eagerly, its loops
    would be traced again at every call)."""
    return jax.jit(fn)


class _ChunkPasses:
    """What both kinds of passes over the chunks of a `Runner` share: the
    problem (``problem.blocks`` hold no stars: they give the shapes and dtype),
    the observed counts and the s floors; the sums come back to the client,
    which runs the steps between passes (``host``)."""

    host = staticmethod(_host)
    #: The workers' passes B and C (the s-step's sums and values).
    s_sum_pass: Callable
    s_value_pass: Callable

    def __init__(self, runner: Runner, problem: Any):
        self.runner, self.problem = runner, problem
        (counts, floor_sums), _ = runner.run(_w_constants, problem)
        #: Observed values of each output.
        self.observed = tuple(int(c) for c in counts)
        self.floors = _host(em.floors_from_sums)(problem, floor_sums)

    def s_sums(self, params: tuple, kept: list, t0: dict):
        sums, _ = self.runner.run(
            self.s_sum_pass, self.problem, params, t0, states=kept
        )
        return sums

    def s_values(self, params: tuple, kept: list, cands: dict):
        values, _ = self.runner.run(
            self.s_value_pass, self.problem, params, cands, states=kept
        )
        return values


class DaskPasses(_ChunkPasses):
    """The passes of `pollux.core.em.sweep_with` over the chunks of a `Runner`."""

    s_sum_pass = staticmethod(_w_s_sums)
    s_value_pass = staticmethod(_w_s_values)

    def posterior(self, params: tuple):
        """Pass A; the posterior stays on the workers (states of the runner)."""
        (nll, stats), states = self.runner.run(_w_pass_a, self.problem, params)
        return nll, stats, states

    def sweep(self, params: tuple):
        """One EM sweep, as the compiled one (`pollux.core.em.sweep_with`)."""
        return em.sweep_with(self, self.problem, self.floors, params)

    def initialize(self, params: tuple, latent_states: list) -> tuple:
        """`pollux.core.em.initialize` on the chunks (latents kept per chunk)."""
        stats, states = self.runner.run(
            _w_start_a, self.problem, params, states=latent_states
        )
        new = _host(em.m_solve)(self.problem, params, stats)
        new = em.s_steps_with(self, self.problem, self.floors, new, states)
        return tuple(
            q if spec.A_free else p
            for spec, p, q in zip(self.problem.specs, params, new, strict=True)
        )


class DaskVEMPasses(_ChunkPasses):
    """The passes of `pollux.core.vem.sweep_with` (and of its SQUAREM cycle)
    over the chunks of a `Runner`; the workers keep their stars' posteriors
    (``stars``: a handle per group, as `Runner.run` returns them)."""

    s_sum_pass = staticmethod(_w_vem_s_sums)
    s_value_pass = staticmethod(_w_vem_s_values)

    def posterior(self, params: tuple, stars: list, n_inner: int):
        (nll, sums), kept = self.runner.run(
            _w_vem_a, self.problem, params, n_inner, states=stars
        )
        return nll, sums, kept, kept

    def star_sq(self, t0: list, t1: list, t2: list):
        sums, _ = self.runner.run(_w_star_sq, states=(t0, t1, t2))
        return sums

    def extrapolate(self, t0: list, t1: list, t2: list, alpha) -> list:
        _, kept = self.runner.run(_w_extrapolate, alpha, states=(t0, t1, t2))
        return kept

    squarem_sweeps = staticmethod(vem.squarem_sweeps)

    @staticmethod
    def select(ok, a: Any, b: Any) -> Any:
        return a if bool(ok) else b


def _per_chunk(runner: Runner, rows: list[int], arrays: tuple, fills: tuple) -> list:
    """Per group of ``runner``: the rows of each of ``arrays`` that belong to
    each of its chunks, padded to the largest chunk with ``fills`` (a row), as
    the states of a later `Runner.run`."""
    pad, bounds = max(rows), np.concatenate([[0], np.cumsum(rows)])

    def rows_of(x, fill, i):
        part = x[bounds[i] : bounds[i + 1]]
        extra = np.broadcast_to(fill, (pad - rows[i], *x.shape[1:]))
        return np.concatenate([part, extra.astype(x.dtype)])

    return [
        (
            None,
            [
                tuple(rows_of(x, f, i) for x, f in zip(arrays, fills, strict=True))
                for i in idx
            ],
        )
        for _, idx in runner.groups
    ]


def chunks_of(
    data, names: Sequence[str], model, fixed: dict, call: str
) -> tuple[list, list[int]]:
    """One delayed `Chunk` per chunk of stars of the outputs ``names`` (all
    rechunked to the rows of the first Dask-backed one), and the number of
    stars of each."""
    import dask
    import dask.array as da

    def lazy(x):
        return x if x is None or is_lazy(x) else da.from_array(np.asarray(x))

    arrays, checks = [], []
    for name in names:
        out = data[name]
        has_scatter = check_output(model, name, out, fixed, call)
        arrays.append((lazy(out.data), lazy(out.err)))
        checks.append((name, has_scatter))
    dtype = arrays[0][0].dtype
    first = next(name for name in names if data[name].lazy)
    rows = data[first].data.chunks[0]
    offsets = np.concatenate([[0], np.cumsum(rows)])

    def split(x):
        if x is None:
            return [None] * len(rows)
        x = x.astype(dtype).rechunk({0: rows, 1: -1})
        return list(x.to_delayed().ravel())

    per_output = [(split(v), split(e)) for v, e in arrays]
    z = fixed.get(LATENTS)
    load = dask.delayed(_load, pure=True)
    parts = [
        load(
            max(rows),
            [(vs[c], es[c]) for vs, es in per_output],
            None if z is None else np.asarray(z[offsets[c] : offsets[c + 1]], dtype),
            checks,
            call,
            int(offsets[c]),
        )
        for c in range(len(rows))
    ]
    return parts, list(rows)


def client() -> Any:
    """The default `dask.distributed` client (its workers set to the client's
    ``jax_enable_x64``), or None."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    from ._workers import X64Plugin

    client.register_plugin(X64Plugin(bool(jax.config.jax_enable_x64)))
    return client


# ----------------------------------------------------------------------------------
# Posteriors and predictions of Dask-backed data: Dask arrays, chunk by chunk
# ----------------------------------------------------------------------------------
def _moments(chunk: Chunk, affine: tuple, size: int) -> tuple[np.ndarray, np.ndarray]:
    mean, cov = posterior.posterior_moments(chunk.blocks, *affine, chunk_size=size)
    return np.asarray(mean)[: chunk.n], np.asarray(cov)[: chunk.n]


def _predictive(mean, cov, W, b, s2, row_cov, size) -> np.ndarray:
    mu, err = posterior.predictive(mean, cov, W, b, s2, row_cov, chunk_size=size)
    return np.stack([np.asarray(mu), np.asarray(err)])


# ----------------------------------------------------------------------------------
# The back-end
# ----------------------------------------------------------------------------------
class Dask(Backend):
    """The stars in the chunks of Dask arrays: on the workers of ``client`` (a
    `dask.distributed.Client`), or computed by Dask's local scheduler (None)."""

    name = "dask"

    def __init__(self, client: Any = None):
        self.client = client

    def _prepare(self, plan, model, data, problem_for, passes_of, k: int) -> Prepared:
        """The chunks of ``data`` on the runner, the problem of no stars (its
        kernel chunk size for per-star matrices of size ``k + 1``) and the
        passes (``passes_of(runner, problem)``) over them."""
        parts, rows = chunks_of(data, plan.names, model, plan.fixed, plan.call)
        runner = Runner(parts, self.client)
        empty = tuple(
            Block(jnp.zeros((0, model.outputs[name].output_size), plan.dtype), None)
            for name in plan.names
        )
        widths = (b.values.shape[1] for b in empty)
        size = chunk_size_for(plan.chunk_size, max(rows), widths, k, plan.dtype)
        problem, params = problem_for(empty, size, None)
        passes = passes_of(runner, problem)
        return Prepared(
            problem=problem,
            params=params,
            observed=passes.observed,
            n_stars=sum(rows),
            state=(passes, rows, LATENTS in plan.fixed, plan.k),
        )

    def prepare(self, plan, model, data, problem_for) -> Prepared:
        return self._prepare(plan, model, data, problem_for, DaskPasses, plan.k)

    def start(self, prepared: Prepared) -> tuple:
        passes, rows, fixed_latents, k = prepared.state
        params = prepared.params
        if not any(s.A_free for s in prepared.problem.specs):
            return params
        if fixed_latents:
            _, latents = passes.runner.run(_w_fixed_latents)
        else:
            d = sum(b.values.shape[1] for b in prepared.problem.blocks)
            x = _Centred(
                passes.runner, rows, d, prepared.problem.blocks[0].values.dtype
            )
            latents = x.split(np.asarray(pca_scores(x, k)))
        return passes.initialize(params, latents)

    def sweeps(self, prepared: Prepared, n_steps: int, accelerate: bool):
        """One iteration per call (the client sees every iteration anyway): the
        compiled loop's SQUAREM cycle and stopping rule, run from the client."""
        passes = prepared.state[0]
        step = (
            functools.partial(em.squarem_cycle, passes.sweep, traced=False)
            if accelerate
            else passes.sweep
        )
        return lambda params, prev, threshold, left: em.run_until_settled(
            step, params, prev, threshold, left, 1, traced=False
        )

    def final(self, prepared: Prepared, params: tuple) -> Final:
        passes, rows, fixed_latents, k = prepared.state
        problem = prepared.problem
        nll, stats, states = passes.posterior(params)
        loss = nll + _host(em.neg_log_prior)(problem, params)
        row_covs = _row_covariances(problem, stats, params)
        kept = passes.runner.collect(states)
        mean = np.concatenate(
            [np.asarray(m)[:r] for (m, _), r in zip(kept, rows, strict=True)]
        )
        n = sum(rows)
        if fixed_latents:
            cov = np.zeros((n, k, k), mean.dtype)
        else:
            cov = np.concatenate(
                [np.asarray(c)[:r] for (_, c), r in zip(kept, rows, strict=True)]
            )
        return Final(loss, mean, cov, row_covs)

    def vem_prepare(self, plan, model, data, problem_for) -> Prepared:
        k = n_features(plan.k) - 1
        return self._prepare(plan, model, data, problem_for, DaskVEMPasses, k)

    def vem_start(self, prepared: Prepared, params: tuple, mean, cov) -> tuple:
        """``(params, stars)``: the start posteriors sent to the chunks of their
        stars (padding stars: the prior, which they keep)."""
        passes, rows, fixed_latents, k = prepared.state
        if fixed_latents:
            _, stars = passes.runner.run(_w_vem_fixed)
            return params, stars
        dtype = np.dtype(prepared.problem.blocks[0].values.dtype)
        prec = inverse_from_cholesky(cholesky(jnp.asarray(cov, dtype)))
        arrays = (np.asarray(mean, dtype), np.asarray(prec))
        eye = np.eye(k, dtype=dtype)
        parts = _per_chunk(passes.runner, rows, arrays, (0, eye))
        return params, [(None, [(m, p, None) for m, p in kept]) for _, kept in parts]

    def vem_sweeps(
        self, prepared: Prepared, n_steps: int, n_inner: int, accelerate: bool
    ) -> Callable:
        """One iteration per call, run from the client (as `sweeps`)."""
        passes, _, fixed_latents, _ = prepared.state
        problem = prepared.problem
        iteration = (
            vem.squarem_cycle_with
            if accelerate and not fixed_latents
            else vem.sweep_with
        )

        def step(state):
            params, stars, loss = iteration(
                passes, problem, passes.floors, *state, n_inner
            )
            return (params, stars), loss

        return lambda state, prev, threshold, left: em.run_until_settled(
            step, state, prev, threshold, left, 1, traced=False
        )

    def vem_final(self, prepared: Prepared, state: tuple, n_inner: int) -> tuple:
        passes, rows, fixed_latents, k = prepared.state
        params, stars = state
        stars, loss, row_covs = vem.final_with(
            passes, prepared.problem, params, stars, n_inner
        )
        kept = passes.runner.collect(stars)

        def rows_of(j):
            return np.concatenate(
                [np.asarray(st[j][:r]) for st, r in zip(kept, rows, strict=True)]
            )

        mean = rows_of(0)
        cov = np.zeros((len(mean), k, k), mean.dtype) if fixed_latents else rows_of(2)
        return params, Final(loss, mean, cov, row_covs)

    def stats(self, prepared: Prepared) -> dict[str, Any]:
        runner = prepared.state[0].runner
        return {
            "backend": self.name,
            "workers": len(runner.groups),
            **runner.traffic,
        }

    def posterior(self, plan, model, data, affine) -> tuple:
        """Posterior means ``(N, K)`` and covariances ``(N, K, K)`` as Dask
        arrays with the data's chunks of stars (computed on demand, where the
        data are)."""
        import dask
        import dask.array as da

        parts, rows = chunks_of(data, plan.names, model, plan.fixed, plan.call)
        k, dtype = plan.k, np.dtype(plan.dtype)
        widths = [model.outputs[name].output_size for name in plan.names]
        size = chunk_size_for(plan.chunk_size, max(rows), widths, k, dtype)
        affine = jax.device_get(affine)
        means, covs = [], []
        for part, r in zip(parts, rows, strict=True):
            mean, cov = dask.delayed(_moments, nout=2, pure=True)(part, affine, size)
            means.append(da.from_delayed(mean, (r, k), dtype))
            covs.append(da.from_delayed(cov, (r, k, k), dtype))
        return da.concatenate(means), da.concatenate(covs)

    def predictive(self, plan, mean, cov, affine, row_covs) -> dict[str, tuple]:
        """Predictive means and errors ``(N, D)`` of each output, as Dask arrays
        chunked like the posterior ``mean`` (a Dask array)."""
        import dask
        import dask.array as da

        rows = mean.chunks[0]
        means = mean.rechunk((rows, -1)).to_delayed().ravel()
        covs = cov.rechunk((rows, -1, -1)).to_delayed().ravel()
        dtype = np.dtype(plan.dtype)
        out = {}
        for name, W, b, s2 in zip(plan.names, *affine, strict=True):
            C = row_covs.get(name)
            C = None if C is None else C.astype(dtype)
            d = W.shape[0]
            size = chunk_size_for(plan.chunk_size, max(rows), [d], plan.k, dtype)
            fixed = jax.device_get((W, b, s2, C))
            parts = [
                da.from_delayed(
                    dask.delayed(_predictive, pure=True)(m, c, *fixed, size),
                    (2, r, d),
                    mean.dtype,
                )
                for m, c, r in zip(means, covs, rows, strict=True)
            ]
            both = da.concatenate(parts, axis=1)
            out[name] = (both[0], both[1])
        return out
