"""Write ``model_v1.pollux`` and the predictions it must keep giving.

Run once per model-file format version (``python tests/data/make_model_v1.py``);
the files it writes are committed, and ``tests/models/test_modelfile.py`` checks
that every later pollux still loads them and predicts the same numbers.
"""

from pathlib import Path

import jax
import numpy as np
import numpyro.distributions as dist

import pollux as plx
from pollux.models.transforms import LinearTransform, QuadraticTransform

HERE = Path(__file__).parent


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=120, n_latents=2, n_labels=2, n_flux=8, rng=3
    )
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["flux"]),
        ),
        label=plx.data.OutputData(
            obs["label"],
            err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["label"]),
        ),
    )
    model = plx.LuxModel(latent_size=2)
    model.register_output("flux", LinearTransform(8))
    model.register_output(
        "label",
        QuadraticTransform(2, param_priors={"s": dist.HalfNormal(1.0).expand((2,))}),
    )
    pre = data.preprocess()
    result = model.fit(pre[:100], progress=False, max_iter=20)
    path = model.save(
        HERE / "model_v1.pollux",
        result,
        data=data,
        columns={"label": ["TEFF", "LOGG"]},
        wavelength=np.linspace(15100.0, 16900.0, 8),
        overwrite=True,
    )
    trained = plx.load(path)
    labels = trained.label({"flux": (obs["flux"][100:], obs["flux_err"][100:])})
    np.savez(
        path.with_suffix(".expected.npz"),
        flux=obs["flux"][100:],
        flux_err=obs["flux_err"][100:],
        label=np.asarray(labels.predictions["label"].data),
        label_err=np.asarray(labels.predictions["label"].err),
    )
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
