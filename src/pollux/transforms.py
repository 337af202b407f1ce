"""Transforms: parametrised maps from a star's latent vector to one output.

Every transform takes ``output_size`` and ``param_priors`` (numpyro distributions by
parameter name). A scalar prior is expanded to the parameter's shape automatically;
a prior that is already ``.expand``-ed to that shape is used as it is. The special
name ``s`` declares an extra scatter for the output, added in quadrature to the
reported errors: a scalar, or one value per output dimension, with a prior on
non-negative values (e.g. ``dist.HalfNormal(1.0).expand((output_size,))``).

Parameter shapes may name sizes only known later: ``"input_size"`` (the latent size,
or the previous transform's output in a `TransformSequence`), ``"output_size"`` and
``"n_stars"`` (one value per star, e.g. an unknown distance modulus).

A transform declares its structure for the fitting path that needs no sampling
(`LuxModel.fit`, `infer_latents`, `predict`): `~AbstractTransform.feature_kind`
names the features of the latents it is linear in, and the class methods
`~AbstractTransform.to_features` / `~AbstractTransform.from_features` map its named
parameters to and from the weights of those features. A subclass inherits them; a
transform that declares no features is fitted by `LuxModel.optimize` only.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, Float

from ._params import SCATTER, check_positive_int
from .core.features import qab_from_theta, theta_from_qab, theta_ridge

__all__ = [
    "AbstractTransform",
    "AffineTransform",
    "FunctionTransform",
    "LinearTransform",
    "OffsetTransform",
    "QuadraticTransform",
    "TransformSequence",
]

ShapeSpec = tuple[int | str, ...]


def _resolve(spec: ShapeSpec, sizes: Mapping[str, int | None], where: str) -> tuple:
    out = []
    for dim in spec:
        if isinstance(dim, str):
            size = sizes.get(dim)
            if size is None:
                msg = f"{where}: the size {dim!r} is not known here"
                raise ValueError(msg)
            out.append(int(size))
        else:
            out.append(int(dim))
    return tuple(out)


def expand_prior(
    prior: dist.Distribution, shape: tuple[int, ...], where: str
) -> dist.Distribution:
    """Expand ``prior`` to a distribution with a single event of ``shape``."""
    event = tuple(prior.event_shape)
    n_batch = len(shape) - len(event)
    if n_batch < 0 or tuple(shape[n_batch:]) != event:
        msg = (
            f"{where}: a prior with event shape {event} cannot describe a parameter "
            f"of shape {shape}"
        )
        raise ValueError(msg)
    batch = tuple(shape[:n_batch])
    if tuple(prior.batch_shape) != batch:
        try:
            prior = prior.expand(batch)
        except ValueError:
            msg = (
                f"{where}: prior batch shape {tuple(prior.batch_shape)} does not "
                f"broadcast to the parameter shape {batch}"
            )
            raise ValueError(msg) from None
    return prior.to_event(len(batch)) if batch else prior


def _check_scatter_prior(prior: Any, output_size: int, where: str) -> None:
    if not isinstance(prior, dist.Distribution):
        msg = f"{where}: prior for 's' must be a numpyro distribution"
        raise TypeError(msg)
    shape = tuple(prior.batch_shape) + tuple(prior.event_shape)
    if shape not in {(), (output_size,)}:
        msg = (
            f"{where}: the extra scatter 's' must be a scalar or have shape "
            f"({output_size},) (one per output dimension); its prior has shape {shape}"
        )
        raise ValueError(msg)
    if bool(prior.support.check(-1.0)):
        msg = (
            f"{where}: the prior for 's' must be on non-negative values (e.g. "
            f"HalfNormal), got {type(prior).__name__} with support {prior.support}"
        )
        raise ValueError(msg)


class AbstractTransform(eqx.Module):
    """Base class: ``apply(latents, **params) -> outputs`` plus parameter priors."""

    output_size: int = eqx.field(static=True)
    param_priors: dict[str, dist.Distribution]

    #: Shape of each parameter (names of sizes allowed, see the module docstring).
    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {}
    #: The features of the latents the output is linear in (`pollux.core.features`):
    #: ``"linear"`` (z), ``"affine"`` (z, 1), ``"quadratic"`` (z, 1 and the products
    #: zᵢzⱼ); None for any other map, which only `LuxModel.optimize` fits.
    feature_kind: ClassVar[str | None] = None
    #: Whether the output is affine in the latents: exact EM and exact posteriors.
    is_affine: ClassVar[bool] = False
    #: The largest latent size the closed-form path takes (None: any).
    max_latent_size: ClassVar[int | None] = None

    def __init__(
        self,
        output_size: int,
        param_priors: Mapping[str, dist.Distribution] | None = None,
    ):
        self.output_size = check_positive_int(
            output_size, f"{type(self).__name__}(output_size=...)"
        )
        self.param_priors = self._merge_priors(param_priors)

    def _default_priors(self) -> dict[str, dist.Distribution]:
        return {name: dist.Normal(0.0, 1.0) for name in self._shape_specs}

    def _merge_priors(
        self, param_priors: Mapping[str, dist.Distribution] | None
    ) -> dict[str, dist.Distribution]:
        where = f"{type(self).__name__}(param_priors=...)"
        if param_priors is None:
            param_priors = {}
        if not isinstance(param_priors, Mapping):
            msg = f"{where}: expected a dict of numpyro distributions"
            raise TypeError(msg)
        priors = self._default_priors()
        for name, prior in param_priors.items():
            if name == SCATTER:
                _check_scatter_prior(prior, self.output_size, where)
            elif name not in priors:
                msg = (
                    f"{where}: unknown parameter {name!r}; this transform has "
                    f"{sorted(priors)} (and the extra scatter 's')"
                )
                raise ValueError(msg)
            if not isinstance(prior, dist.Distribution):
                msg = f"{where}: prior for {name!r} must be a numpyro distribution"
                raise TypeError(msg)
            priors[name] = prior
        return priors

    # Parameters --------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the transform's parameters (without the scatter ``s``)."""
        return tuple(k for k in self.param_priors if k != SCATTER)

    @property
    def scatter_prior(self) -> dist.Distribution | None:
        """Prior of the extra scatter ``s``, or None when the output has none."""
        return self.param_priors.get(SCATTER)

    def param_shape_specs(self) -> dict[str, ShapeSpec]:
        """Shape of every parameter, possibly naming sizes known only later."""
        return dict(self._shape_specs)

    def param_shapes(
        self, input_size: int, n_stars: int | None = None
    ) -> dict[str, tuple[int, ...]]:
        """Concrete parameter shapes, ``s`` included when declared."""
        sizes = {
            "input_size": input_size,
            "output_size": self.output_size,
            "n_stars": n_stars,
        }
        where = f"{type(self).__name__}"
        shapes = {
            name: _resolve(spec, sizes, where)
            for name, spec in self.param_shape_specs().items()
        }
        if self.scatter_prior is not None:
            p = self.scatter_prior
            shapes[SCATTER] = tuple(p.batch_shape) + tuple(p.event_shape)
        return shapes

    def per_star_params(self) -> frozenset[str]:
        """Names of parameters that hold one value per star."""
        return frozenset(
            k for k, spec in self.param_shape_specs().items() if "n_stars" in spec
        )

    def expanded_priors(
        self, input_size: int, n_stars: int | None = None
    ) -> dict[str, dist.Distribution]:
        """Priors expanded to the parameter shapes (``s`` included)."""
        shapes = self.param_shapes(input_size, n_stars)
        return {
            name: expand_prior(
                self.param_priors[name], shapes[name], f"{type(self).__name__}: {name}"
            )
            for name in shapes
        }

    def check_input_size(self, input_size: int) -> None:
        """Raise if this transform cannot take inputs of ``input_size``."""
        del input_size

    def start_params(
        self, input_size: int, n_stars: int | None = None
    ) -> dict[str, Array]:
        """Where `LuxModel.optimize` starts the parameters the transform names
        (the others start at their prior's median, from a few random draws): none
        by default."""
        del input_size, n_stars
        return {}

    def apply(
        self, latents: Float[Array, "n_stars n_in"], **params: Array
    ) -> Float[Array, "n_stars n_out"]:
        """Map a batch of inputs (one row per star) to outputs."""
        raise NotImplementedError

    # Structure for the closed-form path (transforms with a feature_kind) ------
    @classmethod
    def to_features(cls, params: Mapping[str, Array]) -> Float[Array, "d m"]:
        """The weights ``θ`` of the features (one row per output dimension) of
        the named parameters ``params`` (``s`` left out)."""
        raise NotImplementedError(f"{cls.__name__} declares no feature weights")

    @classmethod
    def from_features(cls, theta: Float[Array, "d m"], k: int) -> dict[str, Array]:
        """The named parameters of feature weights (inverse of `to_features`)."""
        raise NotImplementedError(f"{cls.__name__} declares no feature weights")

    @classmethod
    def ridge_to_features(
        cls, ridges: Mapping[str, tuple[Array, Array]]
    ) -> tuple[Float[Array, "d m"], Float[Array, "d m"]]:
        """``(loc, precision)`` on the feature weights of the Normal priors
        ``{name: (loc, precision)}`` on the named parameters."""
        loc = cls.to_features({k: v[0] for k, v in ridges.items()})
        prec = cls.to_features({k: v[1] for k, v in ridges.items()})
        return loc, prec

    @classmethod
    def affine_parts(cls, params: Mapping[str, Any]) -> tuple[Any, Any | None]:
        """``(W, b)`` of an affine output ``y = W z + b`` (``b`` None: zero)."""
        raise NotImplementedError(f"{cls.__name__} is not affine in the latents")

    def affine_view(self) -> AbstractTransform:
        """This output with its terms beyond affine dropped (the start of a
        variational fit): the transform itself if it is affine."""
        if self.is_affine:
            return self
        raise NotImplementedError(f"{type(self).__name__} has no affine view")


class LinearTransform(AbstractTransform):
    r"""Linear map :math:`y = A z`, with ``A`` of shape ``(output_size, input_size)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> t = LinearTransform(output_size=3)
    >>> t.apply(jnp.ones((5, 2)), A=jnp.ones((3, 2))).shape
    (5, 3)
    """

    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {"A": ("output_size", "input_size")}
    feature_kind: ClassVar[str | None] = "linear"
    is_affine: ClassVar[bool] = True

    def apply(self, latents, **params):
        return latents @ params["A"].T

    @classmethod
    def to_features(cls, params):
        return params["A"]

    @classmethod
    def from_features(cls, theta, k):
        return {"A": theta}

    @classmethod
    def affine_parts(cls, params):
        return params["A"], None


class AffineTransform(AbstractTransform):
    r"""Affine map :math:`y = A z + b`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> t = AffineTransform(output_size=2)
    >>> t.apply(jnp.zeros((4, 3)), A=jnp.ones((2, 3)), b=jnp.array([1.0, 2.0]))[0].tolist()
    [1.0, 2.0]
    """

    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {
        "A": ("output_size", "input_size"),
        "b": ("output_size",),
    }
    feature_kind: ClassVar[str | None] = "affine"
    is_affine: ClassVar[bool] = True

    def apply(self, latents, **params):
        return latents @ params["A"].T + params["b"]

    @classmethod
    def to_features(cls, params):
        return jnp.concatenate([params["A"], params["b"][:, None]], axis=1)

    @classmethod
    def from_features(cls, theta, k):
        return {"A": theta[:, :k], "b": theta[:, k]}

    @classmethod
    def affine_parts(cls, params):
        return params["A"], params["b"]


class QuadraticTransform(AbstractTransform):
    r"""Quadratic map :math:`y_d = z^\top Q_d z + A_d \cdot z + b_d`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> t = QuadraticTransform(output_size=1)
    >>> z = jnp.array([[1.0, 2.0]])
    >>> t.apply(z, Q=jnp.ones((1, 2, 2)), A=jnp.zeros((1, 2)), b=jnp.zeros(1)).tolist()
    [[9.0]]
    """

    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {
        "Q": ("output_size", "input_size", "input_size"),
        "A": ("output_size", "input_size"),
        "b": ("output_size",),
    }
    feature_kind: ClassVar[str | None] = "quadratic"
    #: The features grow as K²/2 and each EM sweep's products as K⁴ (K = 10: 66).
    max_latent_size: ClassVar[int | None] = 10

    def apply(self, latents, **params):
        quad = jnp.einsum("ni,dij,nj->nd", latents, params["Q"], latents)
        return quad + latents @ params["A"].T + params["b"]

    @classmethod
    def to_features(cls, params):
        return theta_from_qab(params["Q"], params["A"], params["b"])

    @classmethod
    def from_features(cls, theta, k):
        Q, A, b = qab_from_theta(theta, k)
        return {"Q": Q, "A": A, "b": b}

    @classmethod
    def ridge_to_features(cls, ridges):
        return theta_ridge(ridges["Q"], ridges["A"], ridges["b"])

    def affine_view(self) -> AffineTransform:
        """An `AffineTransform` with this output's priors on ``A``, ``b`` and ``s``."""
        priors = {p: v for p, v in self.param_priors.items() if p != "Q"}
        return AffineTransform(self.output_size, param_priors=priors)


class OffsetTransform(AbstractTransform):
    r"""One free offset per star, added to every dimension: :math:`y_n = x_n + c_n`.

    Use it last in a `TransformSequence`, e.g. apparent magnitudes =
    absolute magnitudes (linear in the latents) + an unknown distance modulus.
    The input size must equal ``output_size``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> mags = TransformSequence(
    ...     LinearTransform(output_size=3),
    ...     OffsetTransform(output_size=3,
    ...                     param_priors={"offset": dist.Normal(10.0, 5.0)}))
    >>> mags.param_shapes(input_size=8, n_stars=100)
    {'0:A': (3, 8), '1:offset': (100,)}
    """

    _shape_specs: ClassVar[dict[str, ShapeSpec]] = {"offset": ("n_stars",)}

    def check_input_size(self, input_size: int) -> None:
        if input_size != self.output_size:
            msg = (
                f"OffsetTransform: input size {input_size} must equal output_size "
                f"{self.output_size} (it only adds one offset per star)"
            )
            raise ValueError(msg)

    def apply(self, latents, **params):
        return latents + params["offset"][:, None]


class FunctionTransform(AbstractTransform):
    """A user function ``func(z, **params) -> y`` of one star's latent vector.

    Parameters
    ----------
    output_size
        Length of the output vector.
    func
        Function of one latent vector (shape ``(input_size,)``) and keyword
        parameters, returning shape ``(output_size,)``. With ``vmap=False`` it gets
        the whole batch ``(n_stars, input_size)`` instead (needed for per-star
        parameters).
    param_priors
        A prior for every parameter of ``func`` (plus optional ``s``).
    param_shapes
        Parameter shapes; defaults to each prior's own shape. Shapes may use
        ``"input_size"``, ``"output_size"`` and ``"n_stars"``.
    vmap
        Map ``func`` over stars (default) or call it on the batch.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> t = FunctionTransform(
    ...     output_size=2, func=lambda z, w: jnp.tanh(w @ z),
    ...     param_priors={"w": dist.Normal(0.0, 1.0)},
    ...     param_shapes={"w": ("output_size", "input_size")})
    >>> t.apply(jnp.zeros((3, 4)), w=jnp.ones((2, 4))).shape
    (3, 2)
    """

    func: Callable[..., Array] = eqx.field(static=True)
    shape_specs: dict[str, ShapeSpec] = eqx.field(static=True)
    vmap: bool = eqx.field(static=True)

    def __init__(
        self,
        output_size: int,
        func: Callable[..., Array],
        param_priors: Mapping[str, dist.Distribution] | None = None,
        param_shapes: Mapping[str, ShapeSpec] | None = None,
        vmap: bool = True,
    ):
        if not callable(func):
            msg = f"FunctionTransform(func=...): expected a callable, got {func!r}"
            raise TypeError(msg)
        self.output_size = check_positive_int(
            output_size, "FunctionTransform(output_size=...)"
        )
        self.func = func
        self.vmap = bool(vmap)
        priors = dict(param_priors or {})
        for name, prior in priors.items():
            if not isinstance(prior, dist.Distribution):
                msg = (
                    f"FunctionTransform(param_priors=...): prior for {name!r} must be "
                    "a numpyro distribution"
                )
                raise TypeError(msg)
        shapes = {k: tuple(v) for k, v in (param_shapes or {}).items()}
        for name in shapes:
            if name not in priors:
                msg = (
                    f"FunctionTransform(param_shapes=...): {name!r} has a shape but no "
                    "prior; give it one in param_priors"
                )
                raise ValueError(msg)
        for name, prior in priors.items():
            if name != SCATTER and name not in shapes:
                shapes[name] = tuple(prior.batch_shape) + tuple(prior.event_shape)
        self.shape_specs = {k: v for k, v in shapes.items() if k != SCATTER}
        sig_names = _func_param_names(func)
        if sig_names is not None:
            missing = set(self.shape_specs) - set(sig_names)
            if missing:
                msg = (
                    f"FunctionTransform: parameters {sorted(missing)} have priors but "
                    "are not arguments of func"
                )
                raise ValueError(msg)
        self.param_priors = priors
        if SCATTER in priors:
            _check_scatter_prior(priors[SCATTER], self.output_size, "FunctionTransform")

    def param_shape_specs(self) -> dict[str, ShapeSpec]:
        return dict(self.shape_specs)

    def apply(self, latents, **params):
        params = {k: v for k, v in params.items() if k in self.shape_specs}
        if not self.vmap:
            return self.func(latents, **params)
        return jax.vmap(lambda z: self.func(z, **params))(latents)


def _func_param_names(func: Callable) -> tuple[str, ...] | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params[1:])


class TransformSequence(AbstractTransform):
    """Composition: the output of each transform is the input of the next.

    Parameters of member ``i`` are named ``"i:name"`` (e.g. ``"0:A"``). The extra
    scatter ``s`` of the composed output may be declared on the last member or via
    ``param_priors={"s": ...}`` here.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> seq = TransformSequence(LinearTransform(4), AffineTransform(2))
    >>> seq.output_size, seq.param_names
    (2, ('0:A', '1:A', '1:b'))
    """

    transforms: tuple[AbstractTransform, ...]

    def __init__(
        self,
        *transforms: AbstractTransform | tuple[AbstractTransform, ...],
        param_priors: Mapping[str, dist.Distribution] | None = None,
    ):
        if len(transforms) == 1 and isinstance(transforms[0], (tuple, list)):
            transforms = tuple(transforms[0])
        if not transforms:
            msg = "TransformSequence(): give at least one transform"
            raise ValueError(msg)
        for i, t in enumerate(transforms):
            if not isinstance(t, AbstractTransform):
                msg = f"TransformSequence(): member {i} is not a transform: {t!r}"
                raise TypeError(msg)
            if i < len(transforms) - 1 and t.scatter_prior is not None:
                msg = (
                    f"TransformSequence(): member {i} declares 's', but only the final "
                    "output can have an extra scatter; declare it on the last member"
                )
                raise ValueError(msg)
        for prev, nxt in itertools.pairwise(transforms):
            nxt.check_input_size(prev.output_size)
        self.transforms = tuple(transforms)
        self.output_size = transforms[-1].output_size
        extra = dict(param_priors or {})
        if set(extra) - {SCATTER}:
            msg = (
                "TransformSequence(param_priors=...): only 's' can be given here; "
                "set member priors on the members"
            )
            raise ValueError(msg)
        priors: dict[str, dist.Distribution] = {}
        for i, t in enumerate(transforms):
            for name, prior in t.param_priors.items():
                if name != SCATTER:
                    priors[f"{i}:{name}"] = prior
        scatter = extra.get(SCATTER, transforms[-1].scatter_prior)
        if scatter is not None:
            _check_scatter_prior(scatter, self.output_size, "TransformSequence")
            priors[SCATTER] = scatter
        self.param_priors = priors

    def check_input_size(self, input_size: int) -> None:
        self.transforms[0].check_input_size(input_size)

    def start_params(
        self, input_size: int, n_stars: int | None = None
    ) -> dict[str, Array]:
        out: dict[str, Array] = {}
        prev = input_size
        for i, t in enumerate(self.transforms):
            out.update(
                {f"{i}:{k}": v for k, v in t.start_params(prev, n_stars).items()}
            )
            prev = t.output_size
        return out

    def param_shape_specs(self) -> dict[str, ShapeSpec]:
        """Member specs under ``"i:name"``, with each member's own sizes filled in
        (only the first member's ``"input_size"`` is left to resolve)."""
        specs: dict[str, ShapeSpec] = {}
        prev: int | None = None
        for i, t in enumerate(self.transforms):
            sizes = {"output_size": t.output_size, "input_size": prev}
            for name, spec in t.param_shape_specs().items():
                specs[f"{i}:{name}"] = tuple(
                    sizes[d] if isinstance(d, str) and sizes.get(d) is not None else d
                    for d in spec
                )
            prev = t.output_size
        return specs

    def apply(self, latents, **params):
        out = latents
        for i, t in enumerate(self.transforms):
            prefix = f"{i}:"
            sub = {
                k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)
            }
            out = t.apply(out, **sub)
        return out
