"""The tutorial script runs unchanged apart from imports and data loading."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
needs_mnist = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("SHARDWREN_DATA_DIR", "/nonexistent"), "mnist")),
    reason="MNIST not available: set SHARDWREN_DATA_DIR to a folder holding mnist/")


@needs_mnist
def test_tutorial_runs_and_pywren_matches_local(tmp_path):
    env = dict(os.environ, SHARDWREN_STORE=str(tmp_path / "store"), SHARDWREN_PROGRESS="false")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pywren_tutorial.py"),
                          "--subset", "12000"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    accs = [float(a) for a in re.findall(r"^Accuracy is\s+([\d.]+)", out.stdout, re.M)]
    assert len(accs) == 2 and accs[0] == accs[1] > 0.9  # PyWren == local, as in the notebook
    assert "Training Accuracy is  1.0" in out.stdout
    assert "section 1: 100" in out.stdout


def test_pywren_compat_names():
    from shardwren import matrix, pywren
    from shardwren.pywren import wrenconfig

    for name in ("default_executor", "wait", "ALL_COMPLETED", "ANY_COMPLETED", "ALWAYS",
                 "get_all_results"):
        assert hasattr(pywren, name)
    bucket = wrenconfig.default()["s3"]["bucket"]
    assert bucket.startswith("file://") or "://" in bucket
    assert matrix.ShardedMatrix.__name__ == "ShardedMatrix"
