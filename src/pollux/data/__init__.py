"""Data containers and preprocessors."""

from ._containers import OutputData, PolluxData
from ._preprocessor import (
    AbstractPreprocessor,
    NullPreprocessor,
    ShiftScalePreprocessor,
)

__all__ = [
    "AbstractPreprocessor",
    "NullPreprocessor",
    "OutputData",
    "PolluxData",
    "ShiftScalePreprocessor",
]
