from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from shardwren import cli, datasets
from shardwren.cli import main
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


def _user_files(tmp_path, rng=None):
    rng = rng or np.random.default_rng(0)
    X, Q = rng.random((300, 6)), rng.random((40, 6))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Q.npy", Q)
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 300))
    return X, Q


def _user_knn(runner, tmp_path, *extra):
    return runner.invoke(main, ["knn", "--train", str(tmp_path / "X.npy"), "--query",
                                str(tmp_path / "Q.npy"), "--workers", "1", "--block-size", "100",
                                "--store", f"file://{tmp_path}/store", *extra])


def test_knn_out_never_deletes_what_is_there(runner, tmp_path):
    """--out wiped its folder (zarr mode "w"): the user's X.npy, notes, or the training set."""
    import zarr

    _user_files(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for out, why in ((tmp_path, "is --train"), (tmp_path / "X.npy", "is --train"),
                     (tmp_path / "store", "the store"), (tmp_path / "store" / "r.zarr", "the store")):
        r = _user_knn(runner, tmp_path, "--out", str(out))
        assert r.exit_code != 0 and why in r.output, r.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    import shardwren
    from shardwren.matrix import ShardedMatrix

    ShardedMatrix.from_numpy(np.ones((4, 4)), "precious", (2, 2), store=f"file://{tmp_path}/s2")
    (tmp_path / "link").symlink_to(tmp_path)
    for target in (other, tmp_path / "s2", tmp_path / "s2" / "precious"):
        for flags in ([], ["--overwrite"]):  # not a k-NN result: never written into
            r = _user_knn(runner, tmp_path, "--out", str(target), *flags)
            assert r.exit_code != 0 and "is not a k-NN result" in r.output, r.output
    # the store named through a symlink is still the store
    r = _user_knn(runner, tmp_path, "--out", str(tmp_path / "link" / "store"), "--overwrite")
    assert r.exit_code != 0 and "the store" in r.output, r.output
    assert shardwren.open_store(f"file://{tmp_path}/s2").list("precious")
    assert (other / "keep.txt").read_text() == "mine"
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "X.npy").exists()
    out = tmp_path / "res.zarr"
    assert _user_knn(runner, tmp_path, "--out", str(out)).exit_code == 0
    r = _user_knn(runner, tmp_path, "--out", str(out), "--k", "2")
    assert r.exit_code != 0 and "--overwrite" in r.output  # an earlier result is kept
    assert zarr.open_group(str(out), mode="r")["indices"].shape == (40, 1)
    r = _user_knn(runner, tmp_path, "--out", str(out), "--k", "2", "--overwrite")
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(out), mode="r")["indices"].shape == (40, 2)
    (tmp_path / "empty").mkdir()
    assert _user_knn(runner, tmp_path, "--out", str(tmp_path / "empty")).exit_code == 0
    r = _user_knn(runner, tmp_path, "--out", "/proc/nope/r.zarr")
    assert r.exit_code != 0 and "not a writable folder" in r.output
    r = _user_knn(runner, tmp_path, "--out", str(tmp_path / "notes.txt"))
    assert r.exit_code != 0 and "is a file" in r.output
    r = _user_knn(runner, tmp_path, "--out", f"file://{tmp_path}/new/dir/r.zarr")
    assert r.exit_code == 0, r.output  # a file:// URL to a folder not made yet
    assert zarr.open_group(str(tmp_path / "new/dir/r.zarr"), mode="r")["indices"].shape == (40, 1)


def test_knn_inputs_are_checked_before_the_job(runner, tmp_path):
    _user_files(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros(10))
    r = _user_knn(runner, tmp_path, "--train-labels", str(tmp_path / "short.npy"))
    assert r.exit_code != 0 and "expected 300 labels" in r.output
    assert "-NN of" not in r.output  # refused before the k-NN ran
    r = _user_knn(runner, tmp_path, "--query-labels", str(tmp_path / "y.npy"))
    assert r.exit_code != 0 and "need --train-labels" in r.output
    for size in ("0", "-5"):
        r = _user_knn(runner, tmp_path, "--block-size", size)
        assert r.exit_code != 0 and "--block-size" in r.output
    r = runner.invoke(main, ["knn", "--train", str(tmp_path / "X.npy"), "--query",
                             str(tmp_path / "nope.npy"), "--store", f"file://{tmp_path}/store"])
    assert r.exit_code != 0 and "--query: no such file" in r.output
    import shardwren

    left = shardwren.open_store(f"file://{tmp_path}/store").list("tmp")
    assert not [k for k in left if k.count("/") >= 2]  # the sharded --train was removed


def test_knn_predictions_break_ties_as_the_classifier_does(runner, tmp_path):
    """The CLI voted with ties to the nearest label; the estimators (and scikit-learn) give
    them to the smallest."""
    import zarr

    from shardwren.linalg import KNeighborsClassifier

    rng = np.random.default_rng(3)
    X, Q = _user_files(tmp_path, rng)
    y = np.load(tmp_path / "y.npy")
    want = KNeighborsClassifier(n_neighbors=4).fit(X, y).predict(Q)
    for ties in ("smallest", "nearest"):
        out = tmp_path / f"{ties}.zarr"
        r = _user_knn(runner, tmp_path, "--k", "4", "--train-labels", str(tmp_path / "y.npy"),
                      "--out", str(out), "--vote-ties", ties)
        assert r.exit_code == 0, r.output
        got = zarr.open_group(str(out), mode="r")["predictions"][:]
        assert np.array_equal(got, want) == (ties == "smallest")


def test_matmul_out_never_destroys_an_input(runner, tmp_path):
    from shardwren.matrix import ShardedMatrix

    store = f"file://{tmp_path}/s"
    rng = np.random.default_rng(1)
    A = rng.standard_normal((30, 30))
    ShardedMatrix.from_numpy(A, "A", (10, 10), store=store)
    ShardedMatrix.from_numpy(A[:, :20], "B", (10, 10), store=store)
    for out in ("A", "B"):
        for flags in ([], ["--overwrite"]):
            r = runner.invoke(main, ["matmul", f"{store}/A", f"{store}/B", f"{store}/{out}",
                                     "--workers", "1", *flags])
            assert r.exit_code != 0 and "would destroy it" in r.output, r.output
    np.testing.assert_array_equal(ShardedMatrix("A", store=store).numpy(), A)
    assert runner.invoke(main, ["matmul", f"{store}/A", f"{store}/B", f"{store}/C",
                                "--workers", "1"]).exit_code == 0
    r = runner.invoke(main, ["matmul", f"{store}/A", f"{store}/B", f"{store}/C", "--workers", "1"])
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = runner.invoke(main, ["matmul", f"{store}/A", f"{store}/B", f"{store}/C", "--workers", "1",
                             "--overwrite"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(ShardedMatrix("C", store=store).numpy(), A @ A[:, :20])


def test_errors_end_in_one_line_not_a_traceback(runner, tmp_path, monkeypatch):
    """ConfigError and other project errors escaped the commands as tracebacks; plan sizes
    of 0 or below divided by zero or printed negative plans; mnist8m --rows 10**15 built a
    list of 2.5e11 block numbers until the kernel killed it."""
    monkeypatch.setenv("SHARDWREN_WORKERS", "abc")
    out = runner.invoke(cli.main, ["plan", "calibrate"])
    assert out.exit_code == 1 and "ConfigError: setting 'workers'" in out.output
    assert not isinstance(out.exception, cli.ShardwrenError)  # handled, not raised
    monkeypatch.delenv("SHARDWREN_WORKERS")
    for args in (["plan", "knn", "--train-rows", "0", "--query-rows", "5"],
                 ["plan", "knn", "--train-rows", "5", "--query-rows", "5", "--workers", "-3"],
                 ["plan", "matmul", "--n", "-100"],
                 ["plan", "matmul", "--n", "100", "--block-size", "0"]):
        out = runner.invoke(cli.main, args)
        assert out.exit_code == 2 and "is not in the range" in out.output, args
    out = runner.invoke(cli.main, ["knn", "--plot", str(tmp_path / "no" / "t.png")])
    assert out.exit_code == 2 and "is not a folder" in out.output  # before the job, not after
    out = runner.invoke(cli.main, ["datasets", "mnist8m", "--key", "../escape"])
    assert out.exit_code == 1 and "invalid store key" in out.output
    store = f"file://{tmp_path}/st"
    out = runner.invoke(cli.main, ["datasets", "mnist8m", "--rows", str(10**15), "--store", store])
    assert out.exit_code == 1 and "more than 10000000" in out.output
    assert not (tmp_path / "st" / "mnist8m").exists()  # refused before anything was created
