r"""Polynomial features of the latents and their Gaussian moments.

An output that is at most quadratic in the latents is linear in the features

.. math::

    \phi(z) = \big(z_i z_j\ (i \le j),\ z_1, \dots, z_K,\ 1\big),
    \qquad f_d(z) = \theta_d^\top \phi(z),

:math:`M = K(K+1)/2 + K + 1` of them, which are the products :math:`\tilde z_a \tilde
z_b` (:math:`a \le b`) of :math:`\tilde z = (z, 1)`. An affine output uses the last
:math:`K + 1` of them (or the :math:`K` linear ones without offset). Under a Gaussian
:math:`z \sim N(\mu, \Sigma)` the first two moments of :math:`\phi` are closed-form
(Isserlis' theorem, on :math:`\tilde z \sim N((\mu, 1), \Sigma \oplus 0)`):

.. math::

    E[\phi_{ab}] = m_a m_b + S_{ab}, \qquad
    \operatorname{cov}(\phi_{ab}, \phi_{cd}) = m_a m_c S_{bd} + m_a m_d S_{bc}
        + m_b m_c S_{ad} + m_b m_d S_{ac} + S_{ac} S_{bd} + S_{ad} S_{bc}.
"""

from __future__ import annotations

from functools import cache

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = [
    "feature_index",
    "features",
    "moments",
    "n_features",
    "outer_packed",
    "qab_from_theta",
    "sym_pack",
    "sym_unpack",
    "theta_from_qab",
    "theta_ridge",
]


def n_features(k: int) -> int:
    """Number ``M`` of quadratic features of ``k`` latents.

    >>> n_features(2)
    6
    """
    return k * (k + 1) // 2 + k + 1


@cache
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(a, b)`` into ``z̃ = (z, 1)`` of each feature ``z̃_a z̃_b``."""
    quad = [(i, j) for i in range(k) for j in range(i, k)]
    lin = [(i, k) for i in range(k)]
    pairs = np.array([*quad, *lin, (k, k)])
    return pairs[:, 0], pairs[:, 1]


def feature_index(kind: str, k: int) -> np.ndarray:
    """Positions in ``φ`` of the features an output of ``kind`` uses.

    ``kind`` is ``"linear"`` (``z``), ``"affine"`` (``z, 1``) or ``"quadratic"``
    (all).

    >>> feature_index("affine", 2).tolist()
    [3, 4, 5]
    """
    m = n_features(k)
    p = k * (k + 1) // 2
    if kind == "quadratic":
        return np.arange(m)
    if kind == "affine":
        return np.arange(p, m)
    if kind == "linear":
        return np.arange(p, p + k)
    msg = f"feature_index: unknown kind {kind!r}"
    raise ValueError(msg)


def _tilde(mean: Float[Array, "n k"]) -> Float[Array, "n k1"]:
    return jnp.concatenate([mean, jnp.ones((*mean.shape[:-1], 1), mean.dtype)], -1)


def features(z: Float[Array, "n k"]) -> Float[Array, "n m"]:
    """``φ(z)`` of each row.

    >>> features(jnp.array([[2.0, 3.0]])).tolist()
    [[4.0, 6.0, 9.0, 2.0, 3.0, 1.0]]
    """
    a, b = _pairs(z.shape[-1])
    zt = _tilde(z)
    return zt[..., a] * zt[..., b]


def moments(
    mean: Float[Array, "n k"], cov: Float[Array, "n k k"] | None
) -> tuple[Float[Array, "n m"], Float[Array, "n m m"] | None]:
    """``E[φ]`` and ``cov(φ)`` under ``z ~ N(mean, cov)`` (``cov=None``: a point,
    whose feature covariance is None)."""
    k = mean.shape[-1]
    a, b = _pairs(k)
    m = _tilde(mean)
    ma, mb = m[..., a], m[..., b]
    if cov is None:
        return ma * mb, None
    S = jnp.pad(cov, [(0, 0)] * (cov.ndim - 2) + [(0, 1), (0, 1)])
    first = ma * mb + S[..., a, b]
    Sac = S[..., a[:, None], a[None, :]]
    Sad = S[..., a[:, None], b[None, :]]
    Sbc = S[..., b[:, None], a[None, :]]
    Sbd = S[..., b[:, None], b[None, :]]
    mac, mad = ma[..., :, None] * ma[..., None, :], ma[..., :, None] * mb[..., None, :]
    mbc, mbd = mb[..., :, None] * ma[..., None, :], mb[..., :, None] * mb[..., None, :]
    cov_phi = mac * Sbd + mad * Sbc + mbc * Sad + mbd * Sac + Sac * Sbd + Sad * Sbc
    return first, cov_phi


def theta_from_qab(
    Q: Float[Array, "d k k"], A: Float[Array, "d k"], b: Float[Array, " d"]
) -> Float[Array, "d m"]:
    """Feature weights of ``zᵀQz + Az + b`` (only the symmetric part of ``Q`` acts).

    >>> Q = jnp.array([[[1.0, 2.0], [0.0, 3.0]]])
    >>> theta_from_qab(Q, jnp.array([[4.0, 5.0]]), jnp.array([6.0])).tolist()
    [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    """
    k = A.shape[-1]
    i, j = _pairs(k)
    p = k * (k + 1) // 2
    i, j = i[:p], j[:p]
    quad = jnp.where(i == j, Q[:, i, j], Q[:, i, j] + Q[:, j, i])
    return jnp.concatenate([quad, A, b[:, None]], axis=1)


def qab_from_theta(
    theta: Float[Array, "d m"], k: int
) -> tuple[Float[Array, "d k k"], Float[Array, "d k"], Float[Array, " d"]]:
    """Symmetric ``Q``, ``A`` and ``b`` of feature weights (inverse of
    `theta_from_qab` on symmetric ``Q``)."""
    i, j = _pairs(k)
    p = k * (k + 1) // 2
    i, j = i[:p], j[:p]
    half = jnp.where(i == j, theta[:, :p], 0.5 * theta[:, :p])
    Q = jnp.zeros((theta.shape[0], k, k), theta.dtype)
    Q = Q.at[:, i, j].set(half).at[:, j, i].set(half)
    return Q, theta[:, p : p + k], theta[:, p + k]


def theta_ridge(
    Q_ridge: tuple[Array, Array],
    A_ridge: tuple[Array, Array],
    b_ridge: tuple[Array, Array],
) -> tuple[Float[Array, "d m"], Float[Array, "d m"]]:
    r"""``(loc, precision)`` on the feature weights of Normal priors on ``Q``, ``A``
    and ``b`` with ``Q`` held symmetric.

    For :math:`i < j`, :math:`\theta = Q_{ij} + Q_{ji} = 2 Q_{ij}`, so the priors
    :math:`N(l_{ij}, p_{ij}^{-1/2})` and :math:`N(l_{ji}, p_{ji}^{-1/2})` give
    :math:`\theta` the precision :math:`(p_{ij} + p_{ji})/4` about
    :math:`2 (p_{ij} l_{ij} + p_{ji} l_{ji}) / (p_{ij} + p_{ji})`: the prior of
    ``Q`` restricted to symmetric matrices. When the priors of :math:`Q_{ij}` and
    :math:`Q_{ji}` agree (the default, and any prior symmetric in ``i, j``), this
    is also the MAP over a full ``Q`` (whose antisymmetric part only the prior sees,
    and which it sets to zero), so `LuxModel.fit` and `LuxModel.optimize` agree.
    """
    (Ql, Qp), (Al, Ap), (bl, bp) = Q_ridge, A_ridge, b_ridge
    k = Al.shape[-1]
    i, j = _pairs(k)
    p = k * (k + 1) // 2
    i, j = i[:p], j[:p]
    pij, pji = Qp[:, i, j], Qp[:, j, i]
    psum = pij + pji
    loc_off = 2 * (pij * Ql[:, i, j] + pji * Ql[:, j, i]) / jnp.where(psum > 0, psum, 1)
    prec = jnp.where(i == j, pij, psum / 4)
    loc = jnp.where(i == j, Ql[:, i, j], loc_off)
    return (
        jnp.concatenate([loc, Al, bl[:, None]], axis=1),
        jnp.concatenate([prec, Ap, bp[:, None]], axis=1),
    )


def sym_pack(
    X: Float[Array, "... m m"], doubled: bool = False
) -> Float[Array, "... t"]:
    """Upper triangle (row-major) of symmetric matrices; ``doubled`` counts each
    off-diagonal entry twice, so that ``sym_pack(X, True) · outer_packed(θ)`` is
    ``θᵀXθ``. Halves the work of the products over pairs of features.

    >>> X = jnp.array([[1.0, 2.0], [2.0, 3.0]])
    >>> sym_pack(X).tolist(), sym_pack(X, doubled=True).tolist()
    ([1.0, 2.0, 3.0], [1.0, 4.0, 3.0])
    """
    i, j = np.triu_indices(X.shape[-1])
    packed = X[..., i, j]
    return jnp.where(i == j, packed, 2 * packed) if doubled else packed


def sym_unpack(P: Float[Array, "... t"], m: int) -> Float[Array, "... m m"]:
    """Symmetric matrices from their `sym_pack` upper triangles (a gather).

    >>> sym_unpack(jnp.array([1.0, 2.0, 3.0]), 2).tolist()
    [[1.0, 2.0], [2.0, 3.0]]
    """
    return P[..., _unpack_index(m)]


@cache
def _unpack_index(m: int) -> np.ndarray:
    """``(m, m)`` positions in the `sym_pack` triangle of each matrix entry."""
    index = np.zeros((m, m), int)
    i, j = np.triu_indices(m)
    index[i, j] = index[j, i] = np.arange(len(i))
    return index


def outer_packed(theta: Float[Array, "d m"]) -> Float[Array, "d t"]:
    """``θ_p θ_q`` (p ≤ q) of each row: `sym_pack` of the row outer products."""
    i, j = np.triu_indices(theta.shape[-1])
    return theta[:, i] * theta[:, j]
