"""The ``shardwren`` command line."""

from __future__ import annotations

import time
from typing import Any

import click
import numpy as np

import shardwren
from shardwren.errors import ShardwrenError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(shardwren.__version__, prog_name="shardwren")
def main() -> None:
    """shardwren: parallel map and block-parallel matrix computations over an object store.

    Settings come from options, SHARDWREN_* environment variables, then
    ~/.shardwren/config.toml (see the README).
    """


def _executor_options(f):
    f = click.option("--workers", type=int, default=None,
                     help="Local worker processes (default: CPU cores).")(f)
    f = click.option("--backend", default=None, help="Execution backend: local (default) or dask.")(f)
    f = click.option("--store", default=None,
                     help="Store URL for the sharded data (default: ~/.shardwren/store).")(f)
    return f


def _load(dataset: str, data_dir: str | None):
    from . import datasets

    return datasets.load(dataset, data_dir=data_dir)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data.astype(np.float32), d.target.astype(np.int64)
    return X[:1400], y[:1400], X[1400:], y[1400:]


def _report_times(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())


def run_knn(ex: shardwren.Executor, data: tuple, k: int, block_size: int,
            materialize: bool, train_vs_train: bool, progress: bool | None,
            method: str = "brute") -> dict[str, Any]:
    """Run one k-NN job and return its figures (also printed)."""
    from .linalg import argmin, knn, pairwise_sq_euclidean
    from .linalg.knn import vote
    from .matrix import ShardedMatrix

    X, y, Xt, yt = data
    t0 = time.perf_counter()
    T = ShardedMatrix.from_numpy(X, "cli/x_train", (block_size, X.shape[1]), store=ex.store)
    Q = T if train_vs_train else ShardedMatrix.from_numpy(Xt, "cli/x_test", (block_size, X.shape[1]),
                                                          store=ex.store)
    phases = {"shard": time.perf_counter() - t0}
    truth = y if train_vs_train else yt
    out: dict[str, Any] = {}
    try:
        if materialize:
            t = time.perf_counter()
            D = pairwise_sq_euclidean(T, Q, executor=ex, key="cli/D", progress=progress)
            phases["distances"] = time.perf_counter() - t
            t = time.perf_counter()
            # With --train-vs-train this is the tutorial's training accuracy (self included).
            idx = argmin(D, axis=0, executor=ex, progress=progress)[0][:, None]
            phases["argmin"] = time.perf_counter() - t
            nbytes = int(np.prod(D.shape)) * D.dtype.itemsize
            out["bytes_written"] = nbytes
            out["tasks"] = 2 * D.num_blocks
            D.delete()
            what = "1-NN via the materialised distance matrix"
        else:
            timings: dict[str, Any] = {}
            t = time.perf_counter()
            _, idx = knn(T, None if train_vs_train else Q, k, executor=ex, method=method,
                         exclude_self=train_vs_train, progress=progress, timings=timings)
            phases.update({p: timings[p] for p in ("fit", "query", "columns", "tiles", "merge")
                           if p in timings})
            out["tasks"] = timings["tasks"]
            pruned = timings.get("pruning")
            what = (f"{k}-NN pruned (exact; {timings['survivors_per_query']:.1f} of "
                    f"{T.shape[0]} training points per query needed a distance)" if pruned
                    else f"{k}-NN fused") + (" (leave-one-out)" if train_vs_train else "")
            if method == "auto" and not pruned:
                what += f" (auto chose brute force: {timings.get('why')})"
    finally:
        T.delete()
        if Q is not T:
            Q.delete()
    pred = vote(y[idx]) if idx.shape[1] > 1 else y[idx[:, 0]]
    out.update(accuracy=float(np.mean(pred == truth)), phases=phases,
               total=sum(phases.values()), what=what)
    click.echo(f"{what}: accuracy {out['accuracy']:.4f} on {len(truth)} points; "
               f"{out['tasks']} tasks; {_report_times(phases)}; total {out['total']:.2f} s"
               + (f"; {out['bytes_written'] / 1e9:.2f} GB of distances written"
                  if "bytes_written" in out else ""))
    return out


@main.command()
@click.option("--dataset", type=click.Choice(["mnist", "fashion-mnist"]), default="mnist",
              show_default=True)
@click.option("--k", "k", type=int, default=1, show_default=True, help="Neighbours per query.")
@click.option("--block-size", type=int, default=4000, show_default=True,
              help="Rows per block of the sharded matrices.")
@click.option("--materialize-distances", is_flag=True,
              help="The tutorial's algorithm: write the whole distance matrix, then argmin it.")
@click.option("--train-vs-train", is_flag=True,
              help="Neighbours of the training set itself, leaving each point out "
                   "(with --materialize-distances: the tutorial's training accuracy).")
@click.option("--method", type=click.Choice(["brute", "pruned", "auto"]), default="brute",
              show_default=True,
              help="brute: every distance, one GEMM per tile. pruned: exact too, but skips the "
                   "distances that provably cannot matter (PCA lower bounds). auto: pruned when a "
                   "sample shows it pays off.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding the dataset's IDX files (or its parent).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a timeline PNG of the job's main map (one bar per task).")
@_executor_options
def knn(dataset, k, block_size, materialize_distances, train_vs_train, method, data_dir,
        plot_path, workers, backend, store) -> None:
    """Exact k-nearest-neighbour classification of MNIST or Fashion-MNIST.

    Prints the accuracy, the time of each phase and the number of tasks run.
    """
    if materialize_distances and method != "brute":
        raise click.UsageError("--materialize-distances is the tutorial's brute-force algorithm; "
                               "drop --method")
    t = time.perf_counter()
    data = _load(dataset, data_dir)
    click.echo(f"{dataset}: {data[0].shape[0]} training and {data[2].shape[0]} test images of "
               f"{data[0].shape[1]} pixels, loaded in {time.perf_counter() - t:.2f} s")
    with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
        click.echo(f"executor: {ex.backend.name}, {ex.parallelism} workers, store {ex.store.url}")
        run_knn(ex, data, k, block_size, materialize_distances, train_vs_train, None, method)
        if plot_path:
            job_id, name, recs = max(ex.history, key=lambda h: len(h[2]))
            from . import plot

            plot.timeline(recs, plot_path, title=f"{dataset} {k}-NN: {len(recs)} tasks "
                                                 f"on {ex.parallelism} workers ({job_id})")
            click.echo(f"timeline of job {job_id} ({len(recs)} tasks) written to {plot_path}")


def _tutorial_section_1(ex: shardwren.Executor) -> None:
    def my_function(b):
        x = np.random.normal(0, b, 1024)
        A = np.random.normal(0, b, (1024, 1024))
        return np.dot(A, x)

    t = time.perf_counter()
    fs = ex.map(my_function, np.linspace(0.1, 10, 100))
    results = shardwren.get_all_results(fs)
    wall = time.perf_counter() - t
    busy = sum(f.stats["finished"] - f.stats["started"] for f in fs)
    click.echo(f"1. 100 tasks, each a 1024x1024 matrix-vector product: {wall:.2f} s wall, "
               f"{busy:.2f} s of task time; result norms {min(np.linalg.norm(r) for r in results):.1f}"
               f" .. {max(np.linalg.norm(r) for r in results):.1f}")


def _demo_data(data_dir: str | None):
    from .errors import DatasetNotFoundError

    try:
        return "MNIST", _load("mnist", data_dir), 4000
    except DatasetNotFoundError as exc:
        first = str(exc).splitlines()[0]
    try:
        from . import datasets

        data = datasets.load("fashion-mnist", data_dir=data_dir, download=False)
        click.echo(f"(MNIST unavailable: {first}; using the installed Fashion-MNIST)")
        return "Fashion-MNIST", data, 4000
    except DatasetNotFoundError:
        click.echo(f"(MNIST unavailable: {first}; Fashion-MNIST not installed; "
                   "using scikit-learn's 8x8 digits)")
        return "scikit-learn digits", _digits(), 500


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding MNIST's IDX files (or its parent).")
@_executor_options
def demo(data_dir, workers, backend, store) -> None:
    """The main job behind `make demo`: the PyWren tutorial's pipeline, then shardwren's own.

    1. the tutorial's section 1 (100 parallel matrix-vector products);
    2. its nearest-neighbour pipeline: data sharded into the store, the distance
       matrix written blockwise by one map, its argmin by another;
    3. the same answer from shardwren's fused k-NN, which never writes the
       distance matrix;
    4. the same answer again, skipping the distances that provably cannot matter.
    """
    name, data, block = _demo_data(data_dir)
    with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
        click.echo(f"executor: {ex.backend.name}, {ex.parallelism} workers, store {ex.store.url}")
        _tutorial_section_1(ex)
        click.echo(f"2. {name} 1-NN, the tutorial's algorithm ({data[0].shape[0]} x {data[2].shape[0]}):")
        slow = run_knn(ex, data, 1, block, True, False, None)
        click.echo("3. the same with shardwren's fused k-NN:")
        fast = run_knn(ex, data, 1, block, False, False, None)
        click.echo("4. the same with pruning (method='auto'):")
        pruned = run_knn(ex, data, 1, block, False, False, None, "auto")
    same = "the same accuracy" if slow["accuracy"] == fast["accuracy"] else "DIFFERENT accuracies"
    click.echo(f"fused k-NN: {slow['total'] / fast['total']:.1f}x faster than the tutorial's "
               f"algorithm, {same}, and no distance matrix written.")
    same = "the same accuracy" if pruned["accuracy"] == fast["accuracy"] else "DIFFERENT accuracies"
    click.echo(f"auto k-NN: {slow['total'] / pruned['total']:.1f}x faster than the tutorial's "
               f"algorithm, {same}.")


def _url_matrix(url: str):
    from .matrix import open_url

    try:
        return open_url(url)
    except (ShardwrenError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("matmul")
@click.argument("a_url")
@click.argument("b_url")
@click.argument("out_url")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@_executor_options
def matmul_cmd(a_url, b_url, out_url, dry_run, workers, backend, store) -> None:
    """Multiply two stored matrices: OUT = A @ B.

    Each URL is a matrix's full URL, STORE_URL/KEY (e.g. file:///data/store/A or
    s3://bucket/prefix/A). Prints the plan (tasks, bytes, flops, memory per task)
    before running it.
    """
    from .linalg import matmul, plan
    from .matrix import ShardedMatrix

    A, B = _url_matrix(a_url), _url_matrix(b_url)
    out_store, _, out_key = out_url.rstrip("/").rpartition("/")
    try:
        with shardwren.default_executor(backend=backend, store=store or out_store,
                                        workers=workers) as ex:
            p = plan(matmul, A, B, ex)
            click.echo(str(p))
            if dry_run:
                return
            out = ShardedMatrix(out_key, shape=p.out_shape, shard_sizes=p.out_blocks,
                                dtype=np.result_type(A.dtype, B.dtype), store=out_store)
            t = time.perf_counter()
            matmul(A, B, out=out, executor=ex)
            wall = time.perf_counter() - t
    except ShardwrenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out_url} in {wall:.2f} s ({p.flops / wall / 1e9:.1f} GFLOP/s)")


@main.group("matrix")
def matrix_group() -> None:
    """Inspect stored matrices."""


@matrix_group.command("info")
@click.argument("url")
def matrix_info(url) -> None:
    """Shape, blocks, dtype, compression and completeness of the matrix at URL."""
    m = _url_matrix(url)
    have = len(m.block_idxs_exist)
    nbytes = sum(m.store.size(k) for k in m.store.list(m.key))
    click.echo(f"{url}\n  shape {m.shape}, blocks of {m.shard_sizes} ({m.grid[0]} x {m.grid[1]} grid), "
               f"dtype {m.dtype}\n  blocks written {have} of {m.num_blocks}; "
               f"{nbytes / 2**20:.1f} MiB in the store; compressor {m.compressor}"
               f"{', crc32c checksums' if m.layout.codec != 'zarr' else ''}\n"
               f"  readable by zarr.open_array({url!r})")


@main.group("store")
def store_group() -> None:
    """Maintain a store."""


@store_group.command("gc")
@click.option("--store", default=None, help="Store to clean (default: the default store).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def store_gc(store, dry_run) -> None:
    """Remove what killed processes left behind: scratch inputs (tmp/<name>-<owner>-<id>),
    .partial temporaries and leases of owners that are dead. A live job's are kept.
    """
    from .storage import collect_garbage, open_store

    try:
        s = open_store(store)
        found = collect_garbage(s, dry_run=dry_run)
    except ShardwrenError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would remove" if dry_run else "removed"
    for g in found:
        click.echo(f"{verb} {g.kind:8} {g.key}  ({g.nbytes / 2**20:.2f} MiB; {g.reason})")
    total = sum(g.nbytes for g in found)
    click.echo(f"{s.url}: {verb} {len(found)} item{'s' if len(found) != 1 else ''}, "
               f"{total / 2**20:.2f} MiB" if found else f"{s.url}: nothing to remove")


@main.group(invoke_without_command=True)
@click.option("--store", default=None, help="Store whose jobs to list (default: the default store).")
@click.pass_context
def jobs(ctx, store) -> None:
    """List the jobs recorded in a store, with status and task counts."""
    from .jobs import list_jobs
    from .storage import open_store

    ctx.obj = open_store(store)
    if ctx.invoked_subcommand is not None:
        return
    found = list_jobs(ctx.obj)
    if not found:
        click.echo(f"no jobs recorded in {ctx.obj.url}")
        return
    click.echo(f"{'job':28} {'created':19} {'status':7} {'tasks':>6} {'failed':>6} {'wall s':>8}  function")
    for j in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["created"]))
        click.echo(f"{j['job_id']:28} {when:19} {j['status']:7} {j['tasks']:>6} {j['failed']:>6} "
                   f"{j['wall_s']:>8.3f}  {j['function']}")


@jobs.command("show")
@click.argument("job_id")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a timeline PNG.")
@click.pass_obj
def jobs_show(store, job_id, plot_path) -> None:
    """Summarise one recorded job (JOB_ID may be a unique prefix)."""
    from .jobs import format_summary, load_job, summarize

    meta, recs = load_job(store, job_id)
    click.echo(f"job {meta['job_id']}: {meta['function']} ({meta['status']})")
    click.echo(format_summary(summarize(recs)))
    if plot_path:
        from . import plot

        plot.timeline(recs, plot_path, title=f"job {meta['job_id']}: {meta['function']}")
        click.echo(f"timeline written to {plot_path}")


if __name__ == "__main__":
    main()
