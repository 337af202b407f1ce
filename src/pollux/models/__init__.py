"""Models: `LuxModel` and its transforms."""

from . import transforms
from .lux import LuxModel

__all__ = ["LuxModel", "transforms"]
