"""Fault injection: workers killed with SIGKILL during k-NN, result unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))

import faults  # noqa: E402


def test_knn_survives_repeated_sigkill(tmp_path):
    out = faults.run(train=20000, query=8000, block=4000, min_lost=0.2, interval=0.1,
                     store=f"file://{tmp_path}")
    assert out["identical"]
    assert out["fraction_lost"] >= 0.2 and out["kills"] >= 1
