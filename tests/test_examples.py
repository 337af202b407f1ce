"""The examples that are not run elsewhere, run as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.slow
def test_distances_custom_model_beats_the_parallaxes():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "distances_custom_model.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    found = re.search(r"RMS error: ([\d.]+) mag \(parallax alone: ([\d.]+)\)", out)
    assert found, out
    rms, rms_parallax = map(float, found.groups())
    # the magnitudes (±0.02) fix μ far better than the parallaxes (±0.3)
    assert rms < 0.1 < 0.25 < rms_parallax
