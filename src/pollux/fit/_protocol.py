"""What the fitting layer needs of a model: a latent size and named outputs.

The drivers never import the model objects (`pollux.models`); any object with
these attributes is fitted the same way — a `LuxModel`, the `LuxModel` inside a
`CannonModel`, or a `Definition` built here (the affine twin of a quadratic fit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import equinox as eqx

from ..transforms import AbstractTransform

__all__ = ["Definition", "Model", "RefittableModel"]


@runtime_checkable
class Model(Protocol):
    """A latent-variable model as the drivers see it."""

    @property
    def latent_size(self) -> int: ...

    @property
    def outputs(self) -> Mapping[str, AbstractTransform]: ...


class RefittableModel(Model, Protocol):
    """A `Model` with the fitting calls that held-out refits repeat per fold."""

    def fit(self, data: Any, **kwargs: Any) -> Any: ...

    def infer_latents(self, data: Any, params: Any, names: Any = None) -> Any: ...

    def predict(
        self, posterior: Any, params: Any, names: Any = None, **kw: Any
    ) -> Any: ...


class Definition(eqx.Module):
    """A model by its definition alone: the latent size and the outputs.

    >>> from pollux.transforms import LinearTransform
    >>> Definition(2, {"flux": LinearTransform(output_size=3)}).latent_size
    2
    """

    latent_size: int = eqx.field(static=True)
    outputs: dict[str, AbstractTransform]
