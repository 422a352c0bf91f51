from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from shardwren import cli, datasets
from shardwren.errors import DatasetNotFoundError


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDWREN_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SHARDWREN_WORKERS", "2")
    return CliRunner()


def test_help_explains(runner):
    out = runner.invoke(cli.main, ["--help"])
    assert out.exit_code == 0 and "knn" in out.output and "demo" in out.output
    out = runner.invoke(cli.main, ["knn", "--help"])
    for opt in ("--dataset", "--k", "--block-size", "--workers", "--backend", "--store",
                "--materialize-distances", "--train-vs-train", "--data-dir", "--method", "pruned"):
        assert opt in out.output


def test_missing_dataset_error_lists_places(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDWREN_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SHARDWREN_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        datasets.load("mnist", data_dir=tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg and ".cache/shardwren/mnist" in msg
    assert "/usr/share/datasets/mnist" in msg and "SHARDWREN_DATA_DIR" in msg


def test_demo_falls_back_to_digits(runner, monkeypatch):
    def unavailable(name, data_dir=None, download=True):
        raise DatasetNotFoundError(f"{name} not found (test)")

    monkeypatch.setattr(datasets, "load", unavailable)
    out = runner.invoke(cli.main, ["demo"])
    assert out.exit_code == 0, out.output
    assert "scikit-learn's 8x8 digits" in out.output
    assert "1. 100 tasks" in out.output and "the same accuracy" in out.output
    assert "4. the same with pruning" in out.output and "auto k-NN" in out.output
    assert "DIFFERENT" not in out.output


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("SHARDWREN_DATA_DIR", "/x"), "mnist")),
                    reason="MNIST not available: set SHARDWREN_DATA_DIR")
@pytest.mark.parametrize("method,phases", [("brute", ("tiles",)), ("pruned", ("pruned (exact;", "fit", "query"))])
def test_knn_command_on_mnist(runner, method, phases):
    out = runner.invoke(cli.main, ["knn", "--dataset", "mnist", "--k", "1", "--method", method])
    assert out.exit_code == 0, out.output
    assert "accuracy 0.9691 on 10000 points" in out.output and "tasks" in out.output
    for phase in phases:
        assert phase in out.output


def test_knn_command_refuses_pruned_materialised(runner):
    out = runner.invoke(cli.main, ["knn", "--materialize-distances", "--method", "pruned"])
    assert out.exit_code != 0 and "drop --method" in out.output


def test_demo_says_where_it_looked_for_mnist(tmp_path, monkeypatch, capsys):
    """Regression: the demo quoted only the error's first line, which ended in "in:" and
    so printed an empty list of the places searched ("Looked for ... in:;")."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHARDWREN_OFFLINE", "1")
    monkeypatch.delenv("SHARDWREN_DATA_DIR", raising=False)
    real_load = datasets.load

    def mnist_only(name, data_dir=None, download=True):
        if name != "mnist":  # whatever this machine has, the demo goes on to its last resort
            raise DatasetNotFoundError(f"{name} not found (test)")
        return real_load(name, data_dir, download)

    monkeypatch.setattr(datasets, "load", mnist_only)
    tiny = (np.zeros((4, 2), np.float32), np.zeros(4, np.int64)) * 2
    monkeypatch.setattr(cli, "_digits", lambda: tiny)
    assert cli._demo_data(str(tmp_path / "data"))[0] == "scikit-learn digits"
    out = capsys.readouterr().out
    places = [tmp_path / "data" / "mnist", tmp_path / "data",
              tmp_path / "home" / ".cache" / "shardwren" / "mnist", "/usr/share/datasets/mnist"]
    assert f"mnist not found in {', '.join(map(str, places))}; not downloaded: SHARDWREN_OFFLINE is set" \
        in out, out
    assert "in:;" not in out
