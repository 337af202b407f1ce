"""The numerical core: pure, jitted kernels over arrays.

It knows nothing of `LuxModel` or `PolluxData`: outputs arrive as `Block` arrays
and affine parameters as ``(W, b, s)``. Modules, one concept each:

- `blocks` — `Block` (values, squared errors, mask) and the masked Gaussian
  likelihood;
- `posterior` — the exact latent posterior (E-step), its evidence, and predictive
  moments;
- `mstep` — ridge-regularised row-wise solves for ``W`` and ``b``;
- `sstep` — the monotone update of an output's extra scatter;
- `problem` — `EMProblem`, the data and fixed ingredients of a fit;
- `em` — EM sweeps, SQUAREM and the compiled loop;
- `chunks` — loops over chunks of stars and compensated sums (bounded memory);
- `pca` — deterministic start latents.

Batched factorisations use `linalg` (loops of array operations, no LAPACK calls;
see its docstring for why).
"""

from .blocks import Block, gaussian_loglike, make_block
from .em import em_chunk, em_iteration, final_state, initialize
from .linalg import cho_solve, cholesky
from .mstep import m_step_affine, ridge_solve, row_covariances
from .pca import pca_latents
from .posterior import latent_posterior, posterior_moments, predictive
from .problem import EMProblem, OutputSpec
from .sstep import s_step

__all__ = [
    "Block",
    "EMProblem",
    "OutputSpec",
    "cho_solve",
    "cholesky",
    "em_chunk",
    "em_iteration",
    "final_state",
    "gaussian_loglike",
    "initialize",
    "latent_posterior",
    "m_step_affine",
    "make_block",
    "pca_latents",
    "posterior_moments",
    "predictive",
    "ridge_solve",
    "row_covariances",
    "s_step",
]
