"""Trained models kept in files: `save_model`, `load`, `TrainedModel` (the
public home of these names; they live in `_save`, `_load` and `_trained`)."""

from ..io import model_file_info
from ._load import load
from ._save import save_model
from ._trained import FLAGS, Labels, TrainedModel

__all__ = ["FLAGS", "Labels", "TrainedModel", "load", "model_file_info", "save_model"]
