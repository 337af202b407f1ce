"""Real APOGEE spectra through a trained model, against direct emulator fits.

Labels the six real files of ``examples/data/real_spectra`` with a model file
(``pollux train examples/train_apogee_like.toml`` writes one), and fits each
spectrum directly with the BinSpec++ emulator that made the training spectra
(least squares over Teff, logg, [Fe/H], [Mg/Fe], v_macro; needs scipy). The
emulator's own reduced χ² is the best a model trained on ``apogee_like`` data can
reach on a real spectrum: the rest is how well the emulator imitates real spectra.

    python benchmarks/real_spectra.py apogee-model.pollux [--extra-err 0.005]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import pollux as plx
from pollux.datasets import _emulate, _load_apogee
from pollux.readers import read_spectra

REAL = Path(__file__).parents[1] / "examples" / "data" / "real_spectra"


def emulator_fit(emulator, flux, err) -> tuple[np.ndarray, float]:
    """Best single-star emulator labels and the reduced χ² of that fit."""
    from scipy.optimize import least_squares

    ok = np.isfinite(flux) & np.isfinite(err)

    def resid(x):
        return ((_emulate(emulator, x[None])[0] - flux) / err)[ok]

    best = None
    for teff in (4000.0, 4800.0, 5600.0, 6300.0):
        for logg in (1.5, 2.5, 4.0, 4.5):
            res = least_squares(
                resid,
                np.array([teff, logg, -0.2, 0.1, 6.0]),
                bounds=(emulator["x_min"], emulator["x_max"]),
                x_scale=[100.0, 0.3, 0.1, 0.05, 2.0],
                diff_step=1e-3,  # the network runs in float32
            )
            if best is None or res.cost < best.cost:
                best = res
    return best.x, 2 * best.cost / (ok.sum() - 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--extra-err", type=float, default=0.0)
    args = parser.parse_args()
    trained = plx.load(args.model)
    files = sorted(REAL.glob("*.fits.gz")) + sorted(REAL.glob("*.npz"))
    spectra = read_spectra(files, wavelength=trained.wavelength["flux"])
    extra = {"flux": args.extra_err} if args.extra_err else None
    labels = trained.label({"flux": (spectra.flux, spectra.err)}, extra_err=extra)
    table = labels.table()
    emulator = _load_apogee()
    print(
        f"{'spectrum':40s} | {'Lux: Teff logg [Fe/H] [Mg/Fe]':33s} chi2_r flags | "
        "emulator: Teff logg [Fe/H] [Mg/Fe] vmacro chi2_r"
    )
    for i, star in enumerate(spectra.ids):
        err = np.hypot(spectra.err[i], args.extra_err)
        x, chi2 = emulator_fit(emulator, spectra.flux[i], err)
        print(
            f"{star[:40]:40s} | {table['TEFF'][i]:5.0f} {table['LOGG'][i]:5.2f} "
            f"{table['FE_H'][i]:6.2f} {table['MG_FE'][i]:6.2f} "
            f"{table['REDUCED_CHI2'][i]:12.2f} {labels.reasons[i] or '-':s} | "
            f"{x[0]:5.0f} {x[1]:5.2f} {x[2]:6.2f} {x[3]:6.2f} {x[4]:5.1f} {chi2:6.2f}"
        )


if __name__ == "__main__":
    main()
