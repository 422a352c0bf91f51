"""The ``shardwren`` command line."""

from __future__ import annotations

import time

import click
import numpy as np

import shardwren


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(shardwren.__version__, prog_name="shardwren")
def main() -> None:
    """shardwren: parallel map and block-parallel matrix computations over an object store.

    Settings come from options, SHARDWREN_* environment variables, then
    ~/.shardwren/config.toml (see the README).
    """


def _tutorial_section_1(workers: int | None) -> None:
    def my_function(b):
        x = np.random.normal(0, b, 1024)
        A = np.random.normal(0, b, (1024, 1024))
        return np.dot(A, x)

    with shardwren.default_executor(workers=workers) as ex:
        t = time.perf_counter()
        fs = ex.map(my_function, np.linspace(0.1, 10, 100))
        results = shardwren.get_all_results(fs)
        wall = time.perf_counter() - t
    busy = sum(f.stats["finished"] - f.stats["started"] for f in fs)
    click.echo(f"100 tasks, each a 1024x1024 matrix-vector product, on {ex.parallelism} "
               f"local workers: {wall:.2f} s wall, {busy:.2f} s of task time; "
               f"result norms {min(np.linalg.norm(r) for r in results):.1f} .. "
               f"{max(np.linalg.norm(r) for r in results):.1f}")


@main.command()
@click.option("--workers", type=int, default=None, help="Local worker processes (default: cores).")
def demo(workers: int | None) -> None:
    """The main job behind `make demo`."""
    _tutorial_section_1(workers)


if __name__ == "__main__":
    main()
