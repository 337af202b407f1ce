"""Label six real APOGEE spectra with a model trained on APOGEE-like data, in Python.

The same flow as the README's command lines (``pollux train`` then ``pollux
predict``), through the library: train a small quadratic Lux model on the built-in
APOGEE-like spectra, save it to a model file, load it back, read the real spectra
(apStar and apVisit FITS files, binspec npz files) onto the model's wavelength
grid, label them, and draw their model fits.

    python examples/label_real_spectra.py          # about 2 minutes

Figures and the model file go to ``examples/output/``.
"""

from pathlib import Path

import numpy as np

import pollux as plx
from pollux import plot
from pollux.models.transforms import QuadraticTransform
from pollux.readers import read_spectra

HERE = Path(__file__).parent
OUT = HERE / "output"
REAL = HERE / "data" / "real_spectra"
COLUMNS = ["TEFF", "LOGG", "FE_H", "MG_FE"]


def train(path: Path) -> None:
    """Fit a quadratic Lux model on APOGEE-like giants and dwarfs; save it."""
    import numpyro.distributions as dist

    obs, truth = plx.datasets.apogee_like(800, seed=1, dwarfs=0.3)
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data_percentiles(
                obs["flux"]
            ),
        ),
        label=plx.data.OutputData(
            obs["label"],
            err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["label"]),
        ),
    )
    model = plx.LuxModel(latent_size=5)
    for name, size in (("flux", 7214), ("label", 4)):
        scatter = {"s": dist.HalfNormal(1.0).expand((size,))}
        model.register_output(name, QuadraticTransform(size, param_priors=scatter))
    result = model.fit(data.preprocess(), max_iter=40)
    model.save(
        path,
        result,
        data=data,  # its preprocessors are stored, not its arrays
        columns={"label": COLUMNS},
        wavelength={"flux": truth["wavelength"]},
        overwrite=True,
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / "apogee-example.pollux"
    if not path.exists():
        train(path)
    trained = plx.load(path)
    wave = trained.wavelength["flux"]
    files = sorted(REAL.glob("*.fits.gz")) + sorted(REAL.glob("*.npz"))
    spectra = read_spectra(files, wavelength=wave)  # resampled, normalised
    labels = trained.label({"flux": (spectra.flux, spectra.err)}, clip=5.0)
    table = labels.table()
    print(f"{'star':46s} {'Teff':>6s} {'logg':>5s} {'[Fe/H]':>6s} {'chi2_r':>6s} flags")
    for i, star in enumerate(spectra.ids):
        print(
            f"{star:46s} {table['TEFF'][i]:6.0f} {table['LOGG'][i]:5.2f} "
            f"{table['FE_H'][i]:6.2f} {table['REDUCED_CHI2'][i]:6.2f} "
            f"{labels.reasons[i]}"
        )
    z = labels.posterior.mean
    model_flux = trained.lux.predict_outputs(z, trained.result.params, names=["flux"])
    model_flux = trained.preprocessors["flux"].inverse_transform(model_flux["flux"])
    plot.residual_spectra(
        wave,
        spectra.flux,
        np.asarray(model_flux),
        err=spectra.err,
        ids=list(range(len(spectra))),
        max_stars=len(spectra),
        path=OUT / "real_spectra_fits.png",
    )
    print(f"Figure: {OUT / 'real_spectra_fits.png'}")


if __name__ == "__main__":
    main()
