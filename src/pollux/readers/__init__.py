"""Readers of users' spectrum and label files.

`read_spectra` reads APOGEE FITS files (apStar, apVisit, aspcapStar) and spectra
stored as arrays (npz, HDF5, zarr) into one `Spectra`, resampled (`resample`) onto
the model's wavelength grid and continuum-normalised (`normalize_continuum`) where
needed. `read_table` reads label columns from FITS/CSV/ECSV tables and `read_arrays`
named arrays from npz/HDF5/zarr files. Every problem with a file is a ValueError or
TypeError (FileNotFoundError for a missing path) on one line that names the function,
the file, the item in it (HDU, header card, array, column), what is wrong and what to
do; what a file holds is checked (`pollux.io.checks`) before it is used.

Examples
--------
>>> import numpy as np
>>> from pollux.readers import Spectra, resample
>>> s = Spectra(np.array([1.0, 2.0, 4.0]), np.ones((2, 3)), np.full((2, 3), 0.1))
>>> resample(s, np.array([1.5, 3.0])).flux.shape
(2, 2)
"""

from ._arrays import read_arrays
from ._continuum import apogee_continuum_pixels, apogee_wavelength, normalize_continuum
from ._fits import APOGEE_PIXMASK, BAD_PIXMASK, BAD_PIXMASK_BITS
from ._read import read_spectra
from ._resample import resample
from ._spectra import Spectra
from ._tables import LabelTable, read_table

__all__ = [
    "APOGEE_PIXMASK",
    "BAD_PIXMASK",
    "BAD_PIXMASK_BITS",
    "LabelTable",
    "Spectra",
    "apogee_continuum_pixels",
    "apogee_wavelength",
    "normalize_continuum",
    "read_arrays",
    "read_spectra",
    "read_table",
    "resample",
]
