"""Files: the model-file format (a zip of JSON and ``.npy`` arrays) and fit
checkpoints.

It knows transforms, priors and preprocessors (the classes it may store) and
nothing of the model objects or the fitting layer: a model hands it its own
definition (`write_model_file`), and `pollux.models` rebuilds the objects from
what `read_model_file` returns.
"""

from ._checkpoint import Checkpoint, fingerprint
from ._codec import FileFormatError, decode, encode
from ._modelfile import (
    FORMAT,
    FORMAT_VERSION,
    UNREADABLE,
    model_file_info,
    preprocessors_of,
    read_manifest,
    read_model_file,
    write_model_file,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "UNREADABLE",
    "Checkpoint",
    "FileFormatError",
    "decode",
    "encode",
    "fingerprint",
    "model_file_info",
    "preprocessors_of",
    "read_manifest",
    "read_model_file",
    "write_model_file",
]
