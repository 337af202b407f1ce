"""The interface every back-end provides, and the named results it hands back.

A back-end is where the stars of a closed-form (affine) call live and where the
passes over them run: in memory on one device (`Local`), sharded over several
devices (`Sharded`), or in the chunks of Dask arrays (`Dask`). The drivers of
`pollux.fit` compose the same steps for each of them:

``prepare`` → ``start`` → ``sweeps`` (until settled) → ``final``; and
``posterior`` / ``predictive`` for labelling. The variational EM of quadratic
outputs (`pollux.core.vem`) has the same four steps: ``vem_prepare`` →
``vem_start`` → ``vem_sweeps`` → ``vem_final``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from ...core.problem import EMProblem

__all__ = ["Backend", "Final", "Prepared"]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A fit ready to run on a back-end.

    Attributes
    ----------
    problem
        The `EMProblem` (its blocks: the stars where the kernels see them).
    params
        Start parameters (fixed values, zeros elsewhere): also the structure a
        checkpoint is read into.
    observed
        Observed values of each output (their sum scales the stopping rule;
        an output without any is refused by the fit).
    n_stars
        The caller's stars (the problem may hold padding beyond them).
    state
        What the back-end keeps between steps (e.g. its runner of Dask chunks).
    """

    problem: EMProblem
    params: tuple
    observed: tuple[int, ...]
    n_stars: int
    state: Any = None

    @property
    def n_obs(self) -> int:
        """Observed values in all outputs."""
        return sum(self.observed)


@dataclasses.dataclass(frozen=True)
class Final:
    """The end of a fit: objective, posterior of the caller's stars (or their
    fixed latents with zero covariance) and the row covariances of each output."""

    loss: Any
    mean: Any
    cov: Any
    row_covs: tuple


class Backend(abc.ABC):
    """Where the passes of closed-form calls run (see the module docstring)."""

    #: The back-end's name in `FitResult.stats`.
    name: ClassVar[str]

    @property
    def n_devices(self) -> int:
        """Devices the stars are split over."""
        return 1

    @abc.abstractmethod
    def prepare(
        self, plan: Any, model: Any, data: Any, problem_for: Callable
    ) -> Prepared:
        """The fit of ``plan`` on this back-end; ``problem_for(blocks, chunk_size,
        fixed_latents)`` builds the `EMProblem` and start parameters."""

    @abc.abstractmethod
    def start(self, prepared: Prepared) -> tuple:
        """Deterministic start parameters: a regression of the free outputs on
        PCA latents (`pollux.core.pca.pca_scores`) or on the fixed latents."""

    @abc.abstractmethod
    def sweeps(self, prepared: Prepared, n_steps: int, accelerate: bool) -> Callable:
        """``run(params, prev_loss, threshold, max_steps)`` → ``(params, losses,
        n_done, settled)``: up to ``n_steps`` EM iterations (SQUAREM cycles when
        ``accelerate``) until one changes the objective by at most ``threshold``
        (`pollux.core.em.run_until_settled`)."""

    @abc.abstractmethod
    def final(self, prepared: Prepared, params: tuple) -> Final:
        """Objective, posterior and row covariances at the final parameters."""

    def stats(self, prepared: Prepared) -> dict[str, Any]:
        """What the fit cost on this back-end (for `FitResult.stats`)."""
        return {"backend": self.name, "devices": self.n_devices}

    @abc.abstractmethod
    def vem_prepare(
        self, plan: Any, model: Any, data: Any, problem_for: Callable
    ) -> Prepared:
        """The variational fit of ``plan`` on this back-end; ``problem_for(blocks,
        chunk_size, fixed_latents)`` builds the `VEMProblem` and start parameters."""

    @abc.abstractmethod
    def vem_start(self, prepared: Prepared, params: tuple, mean: Any, cov: Any) -> Any:
        """The start state: ``params`` and the latent posterior ``(mean, cov)``
        of the caller's stars (ignored with fixed latents), placed where the
        stars are."""

    @abc.abstractmethod
    def vem_sweeps(
        self, prepared: Prepared, n_steps: int, n_inner: int, accelerate: bool
    ) -> Callable:
        """``run(state, prev_loss, threshold, max_steps)`` as ``sweeps``, for
        variational sweeps (SQUAREM cycles when ``accelerate``) of ``n_inner``
        E-step updates."""

    @abc.abstractmethod
    def vem_final(self, prepared: Prepared, state: Any, n_inner: int) -> tuple:
        """``(params, Final)``: the E-step at the final parameters."""

    @abc.abstractmethod
    def posterior(self, plan: Any, model: Any, data: Any, affine: tuple) -> tuple:
        """``(mean, cov)`` of every star's latents at fixed ``(Ws, bs, s2s)``."""

    @abc.abstractmethod
    def predictive(
        self, plan: Any, mean: Any, cov: Any, affine: tuple, row_covs: dict
    ) -> dict[str, tuple]:
        """``{output: (mean, err)}`` of each output of ``plan`` under the latent
        posterior ``(mean, cov)``."""
