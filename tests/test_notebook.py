"""examples/tutorial.ipynb runs top to bottom (nbclient, a real Jupyter kernel): on MNIST
from SHARDWREN_DATA_DIR (a subset by default, all of it with -m slow), and on the
small-dataset fallback (scikit-learn's digits) when MNIST is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "tutorial.ipynb"
HAS_MNIST = os.path.isdir(os.path.join(os.environ.get("SHARDWREN_DATA_DIR", "/nonexistent"), "mnist"))


def run_notebook(tmp_path, monkeypatch, **env: str):
    monkeypatch.setenv("SHARDWREN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SHARDWREN_PROGRESS", "false")
    monkeypatch.setenv("SHARDWREN_WORKERS", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _output_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def _has_image(nb) -> bool:
    return any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not available: set SHARDWREN_DATA_DIR")
def test_notebook_on_an_mnist_subset(tmp_path, monkeypatch):
    nb = run_notebook(tmp_path, monkeypatch, SHARDWREN_TUTORIAL_SUBSET="6000")
    text = _output_text(nb)
    assert "MNIST (6000, 784) (1000, 784)" in text
    assert text.count("Accuracy is") == 4  # local, tutorial map, fused, pruned (asserted equal)
    assert _has_image(nb)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not available: set SHARDWREN_DATA_DIR")
def test_notebook_on_full_mnist(tmp_path, monkeypatch):
    nb = run_notebook(tmp_path, monkeypatch, SHARDWREN_TUTORIAL_SUBSET="0")
    text = _output_text(nb)
    assert "MNIST (60000, 784) (10000, 784)" in text
    assert "Accuracy is  0.9691" in text  # 1-NN on raw MNIST pixels
    assert _has_image(nb)


def test_notebook_falls_back_to_digits_without_mnist(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    home = tmp_path / "home"  # no ~/.cache/shardwren/mnist either
    home.mkdir()
    nb = run_notebook(tmp_path, monkeypatch, SHARDWREN_DATA_DIR=str(tmp_path / "no-data"),
                      SHARDWREN_OFFLINE="1", HOME=str(home), SHARDWREN_TUTORIAL_SUBSET="0")
    text = _output_text(nb)
    assert "using scikit-learn's 8x8 digits" in text and "digits (1400, 64)" in text
    assert text.count("Accuracy is") == 4
    assert _has_image(nb)
