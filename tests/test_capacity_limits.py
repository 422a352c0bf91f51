"""Plans whose tasks cannot fit a serverless platform's limits (Lambda: 15 min, 10 GB) are refused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from shardwren import capacity
from shardwren.cli import main
from shardwren.errors import ConfigError, MemoryPlanError


def test_matmul_blocks_that_fit_lambda_pass():
    est = capacity.matmul(65536, 65536, 65536, 100, capacity.LAMBDA, block=4096)
    assert capacity.limits_exceeded(est, capacity.LAMBDA) == []
    assert 0 < est.slowest_task_s < capacity.LAMBDA.max_task_s
    capacity.check_limits(est, capacity.LAMBDA)


def test_matmul_blocks_too_big_for_lambda_are_refused():
    est = capacity.matmul(65536, 65536, 65536, 100, capacity.LAMBDA, block=32768)
    problems = capacity.limits_exceeded(est, capacity.LAMBDA)
    assert len(problems) == 2 and "900 s" in problems[0] and "GB" in problems[1]
    with pytest.raises(MemoryPlanError, match="smaller block size"):
        capacity.check_limits(est, capacity.LAMBDA)


def test_task_too_long_alone_is_a_config_error():
    slow = capacity.scaled(capacity.LAMBDA, gemm32_s_per_flop=1 / 1e9)  # a very slow platform
    est = capacity.matmul(65536, 65536, 65536, 100, slow, block=4096)
    assert est.peak_task_memory < slow.memory_per_worker
    with pytest.raises(ConfigError, match="past the 900 s"):
        capacity.check_limits(est, slow)


def test_local_profile_has_no_time_limit():
    est = capacity.matmul(65536, 65536, 65536, 2, capacity.DEV_MACHINE, block=4096)
    assert not any("past" in p for p in capacity.limits_exceeded(est, capacity.DEV_MACHINE))


def test_plan_cli_refuses_a_block_size_that_does_not_fit_lambda():
    runner = CliRunner()
    bad = runner.invoke(main, ["plan", "matmul", "--n", "65536", "--workers", "100", "--profile",
                               "lambda", "--block-size", "32768"])
    assert bad.exit_code != 0 and "refused" in bad.output and "--block-size" in bad.output
    good = runner.invoke(main, ["plan", "matmul", "--n", "65536", "--workers", "100", "--profile",
                                "lambda", "--block-size", "4096"])
    assert good.exit_code == 0 and "refused" not in good.output
    knn = runner.invoke(main, ["plan", "knn", "--train-rows", "60000", "--query-rows", "60000",
                               "--workers", "100", "--profile", "lambda", "--method", "brute",
                               "--block-size", "4000"])
    assert knn.exit_code == 0, knn.output
