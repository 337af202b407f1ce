"""The command line: `pollux --version` and a short `pollux demo` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pollux
from pollux import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_version_is_printed():
    proc = subprocess.run(
        [sys.executable, "-m", "pollux.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert pollux.__version__ in proc.stdout


def test_demo_with_few_steps_writes_figures_and_a_summary(tmp_path, capsys):
    assert cli.main(["demo", "--steps", "50", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "50" in printed  # it says how many steps it took
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_steps"] == 50
    rows = {(r["model"], r["method"], r["mode"]): r for r in summary["rows"]}
    # The study's finding: learning the extra flux scatter makes labels better.
    m1 = rows[("model 1", "optimize", "flux only")]["rmse"]
    m2 = rows[("model 2", "optimize", "flux only")]["rmse"]
    assert all(b < 0.5 * a for a, b in zip(m1, m2, strict=True))
    assert min(summary["s_corr"].values()) > 0.95
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_demo_refuses_a_bad_step_count(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0", "--out", str(tmp_path)])
