"""Argument checks shared by the LuxModel entry points (run before any tracing)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .._params import LATENTS, SCATTER
from ..core.blocks import Block, count_observed, make_block
from ..data import PolluxData
from ..data.values import check_values
from ._setup import on_device

if TYPE_CHECKING:
    from ._protocol import Model


def check_data(data: Any, call: str) -> PolluxData:
    if not isinstance(data, PolluxData):
        msg = f"{call}(data=...): expected a PolluxData, got {type(data).__name__}"
        raise TypeError(msg)
    return data


def check_registered(model: Model, call: str) -> None:
    if not model.outputs:
        msg = (
            f"{call}: the model has no outputs; call "
            "model.register_output(name, transform) first"
        )
        raise ValueError(msg)


def resolve_names(
    model: Model,
    names: str | Iterable[str] | None,
    call: str,
    available: Iterable[str] | None = None,
    arg: str = "names",
) -> tuple[str, ...]:
    """The outputs to use: ``names`` checked, or all registered ones available."""
    check_registered(model, call)
    available = None if available is None else tuple(available)
    if names is None:
        chosen = tuple(n for n in model.outputs if available is None or n in available)
        if not chosen:
            msg = (
                f"{call}: the data holds none of the model's outputs "
                f"{list(model.outputs)} (data has {list(available or ())})"
            )
            raise ValueError(msg)
        return chosen
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, Iterable) or not all(isinstance(n, str) for n in names):
        msg = (
            f"{call}({arg}=...): expected an output name or a list of names, "
            f"got {names!r}"
        )
        raise TypeError(msg)
    chosen = tuple(names)
    if len(set(chosen)) != len(chosen):
        msg = f"{call}({arg}=...): names must not repeat, got {list(chosen)}"
        raise ValueError(msg)
    if not chosen:
        msg = f"{call}({arg}=...): give at least one output name"
        raise ValueError(msg)
    for name in chosen:
        if name not in model.outputs:
            msg = (
                f"{call}({arg}=...): {name!r} is not a registered output; "
                f"registered outputs are {list(model.outputs)}"
            )
            raise ValueError(msg)
        if available is not None and name not in available:
            msg = (
                f"{call}({arg}=...): the data has no output {name!r} "
                f"(data has {list(available)})"
            )
            raise ValueError(msg)
    return chosen


def _as_param_array(value: Any, where: str) -> jnp.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic inputs
        msg = f"{where}: expected an array, got {type(value).__name__}"
        raise TypeError(msg) from err
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        msg = f"{where}: expected a numeric array, got {type(value).__name__}"
        raise TypeError(msg)
    if not np.all(np.isfinite(arr)):
        msg = f"{where}: values must be finite (found NaN or inf)"
        raise ValueError(msg)
    return on_device(arr)


def check_params(
    model: Model,
    params: Any,
    n_stars: int | None,
    call: str,
    arg: str = "fixed_params",
    required: Iterable[str] = (),
) -> dict[str, Any]:
    """Validate a (partial) nested parameter dict; returns arrays of checked shape.

    ``required`` lists outputs whose transform parameters must all be present.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        msg = f"{call}({arg}=...): expected a dict like {{'flux': {{'A': ...}}}}"
        raise TypeError(msg)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == LATENTS:
            z = _as_param_array(value, f"{call}({arg}['latents'])")
            check_latents_shape(model, z, n_stars, f"{call}({arg}['latents'])")
            out[LATENTS] = z
            continue
        if key not in model.outputs:
            msg = (
                f"{call}({arg}=...): {key!r} is not a registered output; "
                f"registered outputs are {list(model.outputs)} (and 'latents')"
            )
            raise ValueError(msg)
        if not isinstance(value, Mapping):
            msg = f"{call}({arg}[{key!r}]): expected a dict of parameter arrays"
            raise TypeError(msg)
        transform = model.outputs[key]
        shapes = transform.param_shapes(model.latent_size, n_stars)
        per_star = transform.per_star_params()
        sub = {}
        for pname, pval in value.items():
            where = f"{call}({arg}[{key!r}][{pname!r}])"
            if pname not in shapes:
                msg = (
                    f"{where}: {type(transform).__name__} for {key!r} has no "
                    f"parameter {pname!r}; it has {sorted(shapes)}"
                )
                raise ValueError(msg)
            arr = _as_param_array(pval, where)
            if pname in per_star and n_stars is None:
                n = arr.shape[0] if arr.ndim else None
                expected = transform.param_shapes(model.latent_size, n)[pname]
            else:
                expected = shapes[pname]
            if tuple(arr.shape) != tuple(expected):
                msg = f"{where}: expected shape {expected}, got {tuple(arr.shape)}"
                raise ValueError(msg)
            if pname == SCATTER and bool(np.any(np.asarray(arr) < 0)):
                msg = f"{where}: the extra scatter 's' must be >= 0"
                raise ValueError(msg)
            sub[pname] = arr
        out[key] = sub
    for key in required:
        transform = model.outputs[key]
        missing = [p for p in transform.param_names if p not in out.get(key, {})]
        if missing:
            msg = f"{call}({arg}=...): output {key!r} is missing parameters {missing}"
            raise ValueError(msg)
    return out


def require_scatter(
    model: Model, params: Mapping[str, Any], names: Iterable[str], call: str
) -> None:
    """Refuse parameters without the ``s`` that an output's transform declares."""
    for name in names:
        if (
            model.outputs[name].scatter_prior is not None
            and SCATTER not in params[name]
        ):
            msg = (
                f"{call}(params=...): output {name!r} declares an extra scatter 's' "
                f"but params[{name!r}] has no 's'"
            )
            raise ValueError(msg)


def check_latents_shape(model: Model, z: Any, n_stars: int | None, where: str) -> None:
    shape = tuple(np.shape(z))
    if len(shape) != 2 or shape[1] != model.latent_size:
        msg = (
            f"{where}: latents must have shape (n_stars, {model.latent_size}) "
            f"(latent_size={model.latent_size}), got {shape}"
        )
        raise ValueError(msg)
    if n_stars is not None and shape[0] != n_stars:
        msg = f"{where}: latents are for {shape[0]} stars but the data has {n_stars}"
        raise ValueError(msg)


@jax.jit
def _any_zero_error(block: Block) -> jax.Array:
    """Whether an observed value has zero error: one fused pass, no (N, D)
    temporaries (``np.asarray`` of the arrays would keep a host copy of them)."""
    return jnp.any((block.errors == 0) & block.mask)


def check_output(
    model: Model, name: str, out: Any, fixed: Mapping[str, Any], call: str
) -> bool:
    """The checks of output ``name`` that need no values: its size, and a
    variance (errors or an extra scatter). Returns whether it has a scatter."""
    t = model.outputs[name]
    if out.size != t.output_size:
        msg = (
            f"{call}: output {name!r} has {out.size} dimensions in the data "
            f"but its transform has output_size={t.output_size}"
        )
        raise ValueError(msg)
    has_scatter = t.scatter_prior is not None or SCATTER in fixed.get(name, {})
    if not has_scatter and out.err is None:
        msg = (
            f"{call}: output {name!r} has no reported errors and no extra scatter "
            "'s'; give OutputData(err=...) or add an 's' prior to its transform"
        )
        raise ValueError(msg)
    return has_scatter


def check_variance_defined(block: Block, name: str, has_scatter: bool, call: str):
    """Refuse observed values with zero error in an output without a scatter."""
    if not has_scatter and block.errors is not None and bool(_any_zero_error(block)):
        msg = (
            f"{call}: output {name!r} has observed values with zero error and no "
            "extra scatter 's'; the likelihood would be infinite. Give positive "
            "errors or add an 's' prior to its transform"
        )
        raise ValueError(msg)


def blocks_for(
    model: Model,
    data: PolluxData,
    names: Iterable[str],
    fixed: Mapping[str, Any],
    call: str,
) -> tuple[Block, ...]:
    """Checked kernel blocks of the outputs ``names`` of ``data`` for ``model``."""
    blocks = []
    for name in names:
        out = data[name]
        has_scatter = check_output(model, name, out, fixed, call)
        if out.lazy:  # Dask arrays, read into memory here
            where = f"{call}: output {name!r}"
            block = read_block(out.data, out.err, name, has_scatter, where, call)
        else:  # (OutputData checked its values)
            block = make_block(out.data, out.err)
            check_variance_defined(block, name, has_scatter, call)
        blocks.append(block)
    return tuple(blocks)


def read_block(
    values: Any, err: Any, name: str, has_scatter: bool, where: str, call: str
) -> Block:
    """A `Block` of ``values`` and ``err`` read into memory (from Dask arrays),
    checked as `OutputData` checks its arrays (``where`` names them)."""
    values = np.asarray(values)
    err = None if err is None else np.asarray(err)
    check_values(values, err, f"{where}: the data", f"{where}: the errors")
    block = make_block(values, err)
    check_variance_defined(block, name, has_scatter, call)
    return block


def observed_count(output: Any) -> int:
    """Values of an in-memory output that are observed (data not NaN, error
    finite; the rule of `pollux.core.blocks.make_block`)."""
    values, err = output.data, output.err
    if isinstance(values, np.ndarray) and (err is None or isinstance(err, np.ndarray)):
        mask = ~np.isnan(values)
        if err is not None:
            mask &= np.isfinite(err)
        return int(np.count_nonzero(mask))
    # on the device, one compiled kernel (no small programs per operation)
    return int(count_observed((make_block(values, err),)))


def require_observed(
    counts: Mapping[str, int], call: str, *, each: bool, fixed: Iterable[str] = ()
) -> None:
    """Refuse a call with nothing observed to work from: in any output that is
    fitted (``each``: a fit, whose outputs without data would keep their prior),
    or in all the outputs together (a posterior)."""
    fixed = set(fixed)
    empty = [name for name, n in counts.items() if n == 0 and name not in fixed]
    if each and empty:
        msg = (
            f"{call}(data=...): no value of the output {empty[0]!r} is observed "
            "(every value is NaN or has an infinite error), so its parameters "
            "cannot be fitted; give data for it, or leave it out with names=..."
        )
        raise ValueError(msg)
    if not each and counts and not any(counts.values()):
        msg = (
            f"{call}(data=...): no value of {sorted(counts)} is observed (every "
            "value is NaN or has an infinite error): there is nothing to infer "
            "the latents from"
        )
        raise ValueError(msg)


def require_stars(n: int, call: str, arg: str = "data") -> None:
    """Refuse a call on zero stars."""
    if n == 0:
        msg = f"{call}({arg}=...): there are no stars (0 rows); give at least one"
        raise ValueError(msg)


def fully_fixed(model: Model, fixed: Mapping[str, Any]) -> set[str]:
    """The outputs whose every parameter is fixed (nothing of theirs is fitted)."""
    return {
        name
        for name, t in model.outputs.items()
        if name in fixed
        and all(
            p in fixed[name]
            for p in (*t.param_names, *([SCATTER] if t.scatter_prior else []))
        )
    }


def require_data(
    data: PolluxData, names: Iterable[str], call: str, *, each: bool, fixed=()
) -> None:
    """Refuse data with no stars, or (in memory) nothing observed in
    ``names`` (`require_observed`; Dask data are counted where they are read)."""
    names = tuple(names)
    require_stars(len(data), call)
    if not any(data[name].lazy for name in names):
        counts = {name: observed_count(data[name]) for name in names}
        require_observed(counts, call, each=each, fixed=fixed)
