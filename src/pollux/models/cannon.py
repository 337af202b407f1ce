r"""`CannonModel`: The Cannon (Ness et al. 2015), built from Lux's parts.

The quadratic Cannon models each pixel as a quadratic polynomial of the
(standardised) labels with its own extra scatter,

.. math::

    f_{nd} = \theta_d^\top \phi(\ell_n) + \varepsilon_{nd}, \qquad
    \varepsilon_{nd} \sim N(0, \sigma_{nd}^2 + s_d^2),

which is a `LuxModel` whose latents *are* the labels: training is
`LuxModel.fit` with the latents held at the training labels (weighted least
squares per pixel alternating with the scatter's s-step), and the test step finds
each star's labels by batched Gauss–Newton from several starts, with
uncertainties from the curvature (the inverse Gauss–Newton Hessian).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from .._params import LATENTS, SCATTER, check_positive_int
from ..core.features import feature_index
from ..core.linalg import cholesky, inverse_from_cholesky
from ..core.variational import map_modes, star_stats
from ..data import OutputData, PolluxData
from ..fit import FitResult
from ..fit.checks import blocks_for, check_data, check_params
from ..fit.polynomial import polynomial_thetas
from ..transforms import QuadraticTransform
from ._save import save_model
from .lux import LuxModel

__all__ = ["CannonModel"]


class CannonModel:
    """The quadratic Cannon with per-pixel scatter, with `LuxModel`'s conventions.

    Parameters
    ----------
    n_labels
        Number of labels.
    flux_size
        Number of pixels.
    flux, label
        Names of the flux and label outputs in the data.

    Examples
    --------
    >>> import numpy as np
    >>> import pollux as plx
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.normal(size=(300, 2))
    >>> flux = np.concatenate([labels, labels**2, labels[:, :1] * labels[:, 1:]], 1)
    >>> err = np.full_like(flux, 0.01)
    >>> data = plx.data.PolluxData(
    ...     flux=plx.data.OutputData(flux + err * rng.normal(size=flux.shape), err=err),
    ...     label=plx.data.OutputData(labels, err=np.full_like(labels, 0.01)))
    >>> cannon = plx.CannonModel(n_labels=2, flux_size=5)
    >>> result = cannon.fit(data[:200], progress=False)
    >>> pred = cannon.predict(data[200:], result)
    >>> bool(np.sqrt(np.mean((pred["label"].data - labels[200:]) ** 2)) < 0.02)
    True
    """

    def __init__(
        self, n_labels: int, flux_size: int, *, flux: str = "flux", label: str = "label"
    ):
        self.n_labels = check_positive_int(n_labels, "CannonModel(n_labels=...)")
        check_positive_int(flux_size, "CannonModel(flux_size=...)")
        self.flux, self.label = flux, label
        flat = dist.ImproperUniform(dist.constraints.real, (), ())
        self.model = LuxModel(latent_size=self.n_labels)
        self.model.register_output(
            flux,
            QuadraticTransform(
                flux_size,
                param_priors={
                    "Q": flat,
                    "A": flat,
                    "b": flat,
                    SCATTER: dist.HalfNormal(jnp.ones(flux_size)),
                },
            ),
        )

    def __repr__(self) -> str:
        t = self.model.outputs[self.flux]
        return f"CannonModel(n_labels={self.n_labels}, flux_size={t.output_size})"

    @property
    def latent_size(self) -> int:
        """The latents of a Cannon are its labels: ``n_labels``."""
        return self.n_labels

    @property
    def outputs(self):
        """The outputs of the underlying `LuxModel` (the flux)."""
        return self.model.outputs

    def definition(self) -> dict[str, Any]:
        """What a model file stores of this model (`pollux.io`)."""
        return {
            "kind": "CannonModel",
            "n_labels": self.n_labels,
            "flux_size": self.model.outputs[self.flux].output_size,
            "flux": self.flux,
            "label": self.label,
        }

    def fit(
        self,
        data: PolluxData,
        *,
        max_iter: int = 100,
        tol: float = 1e-6,
        progress: bool = True,
    ) -> FitResult:
        """Train: per-pixel quadratic fits to the training labels, with scatter.

        ``data`` (preprocessed) holds the flux and the labels; the labels must be
        complete. Returns the `FitResult` of the underlying `LuxModel` fit
        (``params["latents"]`` are the training labels).
        """
        call = "CannonModel.fit"
        data = check_data(data, call)
        for name in (self.flux, self.label):
            if name not in data.names:
                msg = f"{call}(data=...): the data has no output {name!r}"
                raise ValueError(msg)
        labels = np.asarray(data[self.label].data)
        if labels.shape[1] != self.n_labels:
            msg = (
                f"{call}(data=...): {self.label!r} has {labels.shape[1]} columns, "
                f"the model was made for n_labels={self.n_labels}"
            )
            raise ValueError(msg)
        if not np.all(np.isfinite(labels)):
            msg = (
                f"{call}(data=...): The Cannon needs every training star's labels; "
                f"{self.label!r} has missing values (drop those stars first)"
            )
            raise ValueError(msg)
        return self.model.fit(
            data,
            names=[self.flux],
            fixed_params={LATENTS: labels},
            max_iter=max_iter,
            tol=tol,
            progress=progress,
        )

    def save(
        self,
        path: Any,
        result: FitResult,
        *,
        data: PolluxData | None = None,
        columns: Any = None,
        wavelength: Any = None,
        overwrite: bool = False,
    ) -> Any:
        """Write the trained Cannon to a model file (as `LuxModel.save`)."""
        return save_model(
            self,
            path,
            result,
            data=data,
            columns=columns,
            wavelength=wavelength,
            overwrite=overwrite,
        )

    def predict(self, data: PolluxData, result: FitResult) -> PolluxData:
        """Test step: labels of each star from its flux alone, with uncertainties.

        Gauss–Newton from the origin and ±1.5 along each label axis (flat prior);
        the best end point is the estimate, the inverse Gauss–Newton Hessian its
        covariance. Returns a `PolluxData` with the label output (model units:
        ``data.unprocess(pred)`` gives physical ones).
        """
        call = "CannonModel.predict"
        data = check_data(data, call)
        if not isinstance(result, FitResult):
            msg = f"{call}(result=...): expected the FitResult of CannonModel.fit"
            raise TypeError(msg)
        if self.flux not in data.names:
            msg = f"{call}(data=...): the data has no output {self.flux!r}"
            raise ValueError(msg)
        params = check_params(
            self.model,
            {self.flux: result.params.get(self.flux, {})},
            len(data),
            call,
            "result.params",
            required=[self.flux],
        )
        blocks = blocks_for(self.model, data, [self.flux], params, call)
        dtype = blocks[0].values.dtype
        thetas, _, s2s = polynomial_thetas(self.model, params, [self.flux], dtype)
        kind = self.model.outputs[self.flux].feature_kind
        mean, cov = _test_step(blocks, thetas, s2s, self.n_labels, kind)
        err = jnp.sqrt(jnp.diagonal(cov, axis1=1, axis2=2))
        return PolluxData(**{self.label: OutputData(mean, err=err, preprocessed=True)})


@partial(jax.jit, static_argnames=("k", "kind"))
def _test_step(blocks, thetas, s2s, k: int, kind: str) -> tuple[Any, Any]:
    stats = star_stats(blocks, thetas, (feature_index(kind, k),), s2s, k)
    eye = 1.5 * np.eye(k)
    starts = jnp.asarray(
        np.concatenate([np.zeros((1, k)), eye, -eye]), blocks[0].values.dtype
    )
    modes = map_modes(stats, starts, 30, prior_precision=0.0)
    return modes.mean, inverse_from_cholesky(cholesky(modes.prec))
