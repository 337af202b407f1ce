"""Lets the published Lux tutorials run unchanged from this folder
(``from helpers import make_simulated_linear_data``)."""

from pollux.datasets import make_simulated_linear_data

__all__ = ["make_simulated_linear_data"]
