"""The capacity model (shardwren.capacity, `shardwren plan`): its arithmetic and its CLI.

How close its predictions come to measured runs is checked by benchmarks/bench_scale.py
(measured / model beside every figure) and written up in docs/capacity.md: timings do not
belong in tests.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shardwren import capacity
from shardwren.cli import main


def test_knn_estimates_grow_with_the_data_and_shrink_with_workers():
    p = capacity.DEV_MACHINE
    for method in ("brute", "pruned"):
        small = capacity.knn(60_000, 10_000, 784, 1, 2, method, p, itemsize=1)
        big = capacity.knn(960_000, 10_000, 784, 1, 2, method, p, itemsize=1)
        wide = capacity.knn(960_000, 10_000, 784, 1, 64, method, p, itemsize=1)
        assert big.wall_s > 5 * small.wall_s  # 16x the rows; fixed costs (the fit) do not grow
        assert big.bytes_read > small.bytes_read
        assert wide.wall_s < big.wall_s / 8
        assert big.worker_peak >= p.worker_base_bytes + big.peak_task_memory
        assert big.worker_peak <= p.worker_base_bytes + p.cache_bytes + big.peak_task_memory
    # Pruned reads the training data about once per 20,000-query group; brute force's
    # workers each read what they touch once (their cache), never tasks x data.
    pr = capacity.knn(960_000, 10_000, 784, 1, 2, "pruned", p, itemsize=1)
    assert pr.bytes_read < 1.5 * 960_000 * 784
    assert pr.wall_s < capacity.knn(960_000, 10_000, 784, 1, 2, "brute", p, itemsize=1).wall_s


def test_exact_distances_and_m_are_charged():
    p = capacity.DEV_MACHINE
    few = capacity.knn(960_000, 10_000, 784, 1, 2, "pruned", p, m=32, exact_per_query=10)
    many = capacity.knn(960_000, 10_000, 784, 1, 2, "pruned", p, m=32, exact_per_query=10_000)
    wide = capacity.knn(960_000, 10_000, 784, 1, 2, "pruned", p, m=128, exact_per_query=10)
    assert many.wall_s > few.wall_s and wide.wall_s > few.wall_s


def test_lambda_costs_money_and_local_does_not():
    est = capacity.knn(60_000, 60_000, 784, 1, 1000, "brute", capacity.LAMBDA)
    assert est.usd is not None and est.usd > 0
    assert est.wall_s >= capacity.LAMBDA.startup_s
    assert capacity.knn(60_000, 10_000, 784, workers=2, profile=capacity.DEV_MACHINE).usd is None
    mm = capacity.matmul(65_536, 65_536, 65_536, 1000, capacity.LAMBDA)
    assert mm.tasks == 16 * 16 and mm.usd > 0 and "TFLOP" in mm.job


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="brute.*pruned"):
        capacity.knn(10, 10, 4, method="hnsw")


def test_profile_round_trips_through_a_file(tmp_path):
    path = tmp_path / "p.json"
    capacity.LAMBDA.save(path)
    assert capacity.Profile.load(path) == capacity.LAMBDA
    assert json.loads(path.read_text())["name"] == "aws-lambda-10GB"


def test_plan_cli(tmp_path):
    r = CliRunner().invoke(main, ["plan", "knn", "--train-rows", "8100000", "--query-rows",
                                  "10000", "--itemsize", "1", "--m", "128",
                                  "--exact-per-query", "380"])
    assert r.exit_code == 0, r.output
    assert "1-NN pruned, 10,000 queries x 8,100,000 rows" in r.output and "per worker" in r.output
    walls = {}
    for flag in ("--integers", "--no-integers"):
        r = CliRunner().invoke(main, ["plan", "knn", "--train-rows", "60000", "--query-rows",
                                      "10000", "--exact-per-query", "3000", "--profile",
                                      "lambda", flag])
        assert r.exit_code == 0, r.output
        walls[flag] = float(r.output.split(" s wall")[0].rsplit(" ", 1)[1])
    assert walls["--integers"] < walls["--no-integers"]
    # --dtype: float16 (2 bytes) is not taken for integers, int16 is
    size = ["plan", "knn", "--train-rows", "60000", "--query-rows", "10000",
            "--exact-per-query", "3000", "--profile", "lambda"]
    for dtype, flag in (("int16", "--integers"), ("float16", "--no-integers")):
        r = CliRunner().invoke(main, size + ["--dtype", dtype])
        assert r.exit_code == 0, r.output
        assert r.output == CliRunner().invoke(main, size + ["--itemsize", "2", flag]).output
    r = CliRunner().invoke(main, ["plan", "knn", "--train-rows", "10", "--query-rows", "10",
                                  "--dtype", "uint8", "--itemsize", "4"])
    assert r.exit_code != 0 and "contradicts --dtype uint8" in r.output
    r = CliRunner().invoke(main, ["plan", "knn", "--train-rows", "10", "--query-rows", "10",
                                  "--dtype", "pixels"])
    assert r.exit_code != 0 and "'pixels' is not a numpy dtype" in r.output
    r = CliRunner().invoke(main, ["plan", "matmul", "--n", "65536", "--workers", "1000",
                                  "--profile", "lambda"])
    assert r.exit_code == 0 and "$" in r.output, r.output
    r = CliRunner().invoke(main, ["plan", "knn", "--train-rows", "10", "--query-rows", "10",
                                  "--profile", str(tmp_path / "missing.json")])
    assert r.exit_code != 0 and "not local, lambda or a profile file" in r.output


def test_calibrate_measures_this_machine(executor):
    prof = capacity.calibrate(executor, name="test")
    assert prof.name == "test"
    for field in ("gemm32_s_per_flop", "gemm32_thin_s_per_flop", "select_s_per_pair",
                  "exact_s_per_feature", "project_s_per_feature", "read_bytes_per_s",
                  "write_bytes_per_s", "task_overhead_s", "exact_int_s_per_feature"):
        assert 0 < getattr(prof, field) < float("inf"), field
    assert prof.worker_base_bytes > 10 << 20  # a worker process's own RSS, measured
    # the model prices integer rows at the integer path's cost (no timing compared here:
    # a profile where that path is half the price, then which rows get it)
    half = capacity.scaled(prof, exact_int_s_per_feature=prof.exact_s_per_feature / 2)
    many = dict(method="pruned", profile=half, exact_per_query=5000)
    assert capacity.knn(60_000, 10_000, 784, itemsize=4, integers=True, **many).task_s < \
        capacity.knn(60_000, 10_000, 784, itemsize=4, **many).task_s
    assert capacity.knn(60_000, 10_000, 784, itemsize=1, **many).task_s < \
        capacity.knn(60_000, 10_000, 784, itemsize=1, integers=False, **many).task_s
    est = capacity.knn(60_000, 10_000, 784, profile=prof)
    assert est.wall_s > 0


def test_a_profile_saved_by_an_older_calibration_is_flagged(tmp_path, monkeypatch):
    """A calibration saved before exact distances were timed with their fold (and the
    integer path) under-prices them: estimates from it say so."""
    from dataclasses import asdict

    monkeypatch.setenv("SHARDWREN_HOME", str(tmp_path))
    doc = asdict(capacity.DEV_MACHINE)
    del doc["exact_int_s_per_feature"]
    capacity.profile_path().write_text(json.dumps(doc))
    prof = capacity.local_profile()
    assert capacity.STALE_NOTE in prof.notes
    assert capacity.STALE_NOTE in str(capacity.knn(60_000, 10_000, 784, profile=prof))
    capacity.DEV_MACHINE.save(capacity.profile_path())
    assert capacity.STALE_NOTE not in capacity.local_profile().notes


@pytest.mark.parametrize("method", ["brute", "pruned"])
def test_small_integers_stored_wide_are_cached_narrowed(method):
    """Pixels stored as float32 are cached as 8- or 16-bit integers: the model counts
    two bytes per cached raw value for them, not four (sizes within the cache)."""
    wide = capacity.knn(30_000, 5_000, 784, method=method, itemsize=4, integers=False)
    narrow = capacity.knn(30_000, 5_000, 784, method=method, itemsize=4, integers=True)
    rows = 35_000 if method == "brute" else 30_000 / 2 + 5_000 * 1.5 + 4000
    assert wide.worker_peak - narrow.worker_peak == pytest.approx(rows * 784 * 2, rel=0.2)


def test_the_stored_dtype_decides_the_integer_path():
    """float16 and int16 are both 2 bytes: only int16 takes the integer path's price."""
    half = capacity.scaled(capacity.LAMBDA,
                           exact_int_s_per_feature=capacity.LAMBDA.exact_s_per_feature / 2)
    kw = dict(method="pruned", profile=half, exact_per_query=5000)
    f16 = capacity.knn(60_000, 10_000, 784, dtype="float16", **kw)
    i16 = capacity.knn(60_000, 10_000, 784, dtype="int16", **kw)
    assert f16.task_s == capacity.knn(60_000, 10_000, 784, itemsize=2, integers=False, **kw).task_s
    assert i16.task_s == capacity.knn(60_000, 10_000, 784, itemsize=2, integers=True, **kw).task_s
    assert i16.task_s < f16.task_s
    # an explicit integers= wins (float16 pixels hold small integers)
    assert capacity.knn(60_000, 10_000, 784, dtype="float16", integers=True, **kw).task_s == \
        i16.task_s
