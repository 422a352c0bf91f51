"""The ``shardwren`` command line."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import click
import numpy as np

import shardwren
from shardwren._optional import require
from shardwren.errors import MissingDependencyError, ShardwrenError


class _Commands(click.Group):
    """Every command's errors from shardwren's hierarchy end in a one-line message and
    exit code 1, not a traceback (each names the problem and what to do)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShardwrenError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(shardwren.__version__, prog_name="shardwren")
def main() -> None:
    """shardwren: parallel map and block-parallel matrix computations over an object store.

    Settings come from options, SHARDWREN_* environment variables, then
    ~/.shardwren/config.toml (see the README).
    """


def _folder_exists(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A file to write later (after the job): its folder must exist now."""
    if value is not None:
        folder = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise click.BadParameter(f"cannot write {value}: {folder} is not a folder this user "
                                     "can write to", ctx=ctx, param=param)
    return value


def _executor_options(f):
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Local worker processes (default: CPU cores).")(f)
    f = click.option("--backend", default=None, help="Execution backend: local (default), dask or lithops.")(f)
    f = click.option("--store", default=None,
                     help="Store URL for the sharded data (default: the store setting: "
                          "$SHARDWREN_STORE, the config file, else ~/.shardwren/store).")(f)
    return f


def _load(dataset: str, data_dir: str | None):
    from . import datasets

    return datasets.load(dataset, data_dir=data_dir)


def _digits():
    d = require("sklearn.datasets", "the demo's fallback data (scikit-learn's 8x8 digits)") \
        .load_digits()
    X, y = d.data.astype(np.float32), d.target.astype(np.int64)
    return X[:1400], y[:1400], X[1400:], y[1400:]


def _report_times(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())


def run_knn(ex: shardwren.Executor, data: tuple, k: int, block_size: int,
            materialize: bool, train_vs_train: bool, progress: bool | None,
            method: str = "brute", vote_ties: str = "smallest") -> dict[str, Any]:
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
            nbytes = int(np.prod(D.shape)) * (D.dtype or np.dtype(np.float64)).itemsize
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
    pred = vote(y[idx], ties=vote_ties) if idx.shape[1] > 1 else y[idx[:, 0]]
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
@click.option("--k", "k", type=click.IntRange(min=1), default=1, show_default=True, help="Neighbours per query.")
@click.option("--block-size", type=click.IntRange(min=1), default=4000, show_default=True,
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
              callback=_folder_exists,
              help="Write a timeline PNG of the job's main map (one bar per task).")
@click.option("--train", "train_path", default=None, metavar="PATH_OR_URL",
              help="Your own training matrix instead of --dataset: a .npy file, an IDX file "
                   "(.gz too), or a zarr array path or URL (s3://..., a shardwren matrix "
                   "included, used in place). One row per sample.")
@click.option("--query", "query_path", default=None, metavar="PATH_OR_URL",
              help="Query matrix, same forms (default with --train: the training set itself, "
                   "leaving each point out).")
@click.option("--train-labels", default=None, metavar="PATH_OR_URL",
              help="Labels of the training rows (.npy, IDX or zarr, one per row): predictions "
                   "by majority vote of the k neighbours.")
@click.option("--query-labels", default=None, metavar="PATH_OR_URL",
              help="True labels of the queries: the accuracy is printed.")
@click.option("--out", "out_path", default=None, metavar="ZARR_PATH_OR_URL",
              help="Write distances, indices (and predictions) there as a new zarr group. "
                   "An existing path is refused, unless it holds an earlier k-NN result and "
                   "--overwrite is given; an input or the store never is.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out that holds an earlier k-NN result (a zarr group "
                   "of distances, indices and predictions only).")
@click.option("--vote-ties", type=click.Choice(["smallest", "nearest"]), default="smallest",
              show_default=True,
              help="Predictions: a tied vote goes to the smallest label (scikit-learn's rule, "
                   "and shardwren's classifier's), or to the label of the nearest neighbour.")
@_executor_options
def knn(dataset, k, block_size, materialize_distances, train_vs_train, method, data_dir,
        plot_path, train_path, query_path, train_labels, query_labels, out_path, overwrite,
        vote_ties, workers, backend, store) -> None:
    """Exact k nearest neighbours: of MNIST or Fashion-MNIST, or of your own data.

    With --dataset (default mnist): classification of the test images, printing the
    accuracy, the time of each phase and the number of tasks run.

    With --train (and --query): neighbours of your own matrices, streamed into the
    store a block at a time (they need not fit in memory), e.g.

      shardwren knn --train X.npy --query Q.npy --train-labels y.npy --k 5 --out result.zarr
    """
    if materialize_distances and method != "brute":
        raise click.UsageError("--materialize-distances is the tutorial's brute-force algorithm; "
                               "drop --method")
    if train_path is None and any((query_path, train_labels, query_labels, out_path)):
        raise click.UsageError("--query, --train-labels, --query-labels and --out go with --train")
    if query_labels and not train_labels:
        raise click.UsageError("--query-labels scores predictions, which need --train-labels")
    if train_path is not None:
        if materialize_distances:
            raise click.UsageError("--materialize-distances works with --dataset only")
        try:
            with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
                _user_knn(ex, train_path, query_path, train_labels, query_labels, out_path, k,
                          block_size, method, overwrite, vote_ties)
        except (ShardwrenError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        return
    t = time.perf_counter()
    data = _load(dataset, data_dir)
    click.echo(f"{dataset}: {data[0].shape[0]} training and {data[2].shape[0]} test images of "
               f"{data[0].shape[1]} pixels, loaded in {time.perf_counter() - t:.2f} s")
    with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
        click.echo(f"executor: {ex.backend.name}, {ex.parallelism} workers, store {ex.store.url}")
        run_knn(ex, data, k, block_size, materialize_distances, train_vs_train, None, method,
                vote_ties)
        if plot_path:
            job_id, name, recs = max(ex.history, key=lambda h: len(h[2]))
            from . import plot

            plot.timeline(recs, plot_path, title=f"{dataset} {k}-NN: {len(recs)} tasks "
                                                 f"on {ex.parallelism} workers ({job_id})")
            click.echo(f"timeline of job {job_id} ({len(recs)} tasks) written to {plot_path}")


def _matrix_input(path: str, name: str, ex: shardwren.Executor, block_size: int,
                  option: str | None = None):
    """``(matrix, scratch)``: a stored whole-row-block matrix is used in place; any other
    source is streamed into the executor's store (``scratch``, deleted afterwards)."""
    from . import sources
    from .matrix import open_url

    lpath = path[7:] if path.startswith("file://") else path
    looks_zarr = "://" in path or lpath.endswith(".zarr") or os.path.isdir(lpath)
    if looks_zarr and not lpath.endswith(".npy"):
        try:
            url = path if "://" in path else "file://" + os.path.abspath(lpath)
            m = open_url(url)
            if m.shard_sizes[1] >= m.shape[1]:
                return m, None
        except (ShardwrenError, ValueError, FileNotFoundError, KeyError):
            pass
    click.echo(f"sharding {name} from {path} ...")
    m = sources.shard(path, scratch=f"cli-{name}", block_rows=block_size, store=ex.store,
                      progress=True, name=option or name)
    return m, m


def _labels(path: str, n: int, what: str) -> np.ndarray:
    from . import sources

    src = sources.open_source(path, what)
    if src.shape[0] != n or src.shape[1] != 1:
        raise click.ClickException(f"{what} {path} has shape {src.shape}; expected {n} labels")
    return src.rows(0, n)[:, 0]


def _local_path(path: str) -> str | None:
    """The real local path (symlinks resolved) of a plain path or ``file://`` (``local://``) URL; None
    for other URLs."""
    from .storage import location_of

    where = location_of(path)
    return where[len("file://"):] if where.startswith("file://") else None


#: What ``knn --out`` writes: a group holding only these can be replaced (--overwrite).
RESULT_MEMBERS = {"distances", "indices", "predictions"}
_ZARR_META = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}


def _check_out(out: str, overwrite: bool, inputs: dict[str, str | None]) -> tuple[str, str]:
    """Refuse an ``--out`` that would destroy something, before any work. Returns where
    to write it (a local path for local outputs) and the zarr mode. ``inputs``: option
    name to path or URL (inputs, the store)."""
    import fsspec

    from .storage import location_of, overlaps

    local = _local_path(out)
    for name, path in inputs.items():
        if path is not None and overlaps(location_of(out), location_of(path)):
            raise click.UsageError(f"--out {out} is {name} {path}, or holds it or lies inside "
                                   "it: writing the result would destroy it. Choose a new path")
    if local is not None:
        fs, where = fsspec.filesystem("file"), local
        parent = local
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(parent):
            try:  # a real write: permission bits do not tell (root, read-only mounts, /proc)
                with tempfile.TemporaryDirectory(dir=parent, prefix=".shardwren-probe-"):
                    pass
            except OSError as exc:
                raise click.UsageError(f"cannot write --out {out}: {parent} is not a writable "
                                       f"folder ({exc.strerror})") from None
    else:
        fs, where = fsspec.core.url_to_fs(out)
    target = local if local is not None else out
    if not fs.exists(where):
        return target, "w-"
    if not fs.isdir(where):
        raise click.UsageError(f"--out {out} exists and is a file: shardwren will not replace "
                               "it. Choose a new path")
    members = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(where, detail=False)}
    if not members:
        return target, "w-"
    ours = bool(members & {"zarr.json", ".zgroup"}) and members <= RESULT_MEMBERS | _ZARR_META
    if ours and overwrite:
        return target, "w"
    if ours:
        raise click.UsageError(f"--out {out} holds an earlier k-NN result; pass --overwrite to "
                               "replace it, or choose a new path")
    raise click.UsageError(f"--out {out} exists and is not a k-NN result of shardwren (it holds "
                           f"{', '.join(sorted(members)[:5])}{', ...' if len(members) > 5 else ''})"
                           ": shardwren will not write into it or delete it. Choose a new path")


def _user_knn(ex, train_path, query_path, train_labels, query_labels, out_path, k, block_size,
              method, overwrite: bool = False, vote_ties: str = "smallest") -> None:
    from .linalg import knn
    from .linalg.kernels import vote

    click.echo(f"executor: {ex.backend.name}, {ex.parallelism} workers, store {ex.store.url}")
    target = mode = None
    if out_path:
        target, mode = _check_out(out_path, overwrite, {
            "--train": train_path, "--query": query_path, "--train-labels": train_labels,
            "--query-labels": query_labels,
            "the store (--store)": ex.store.url if ex.store.scheme != "memory" else None})
    T = Q = t_tmp = q_tmp = None
    try:
        T, t_tmp = _matrix_input(train_path, "train", ex, block_size, "--train")
        Q, q_tmp = (T, None) if query_path is None else _matrix_input(query_path, "query", ex,
                                                                      block_size, "--query")
        # Labels are checked before the job, so that a bad file does not waste it.
        y = _labels(train_labels, T.shape[0], "--train-labels") if train_labels else None
        truth = _labels(query_labels, Q.shape[0], "--query-labels") if query_labels else None
        timings: dict[str, Any] = {}
        t = time.perf_counter()
        dist, idx = knn(T, None if query_path is None else Q, k, executor=ex, method=method,
                        exclude_self=query_path is None, timings=timings)
        wall = time.perf_counter() - t
        click.echo(f"{k}-NN of {Q.shape[0]} queries among {T.shape[0]} training rows "
                   f"({T.shape[1]} features, {method}): {wall:.2f} s, {timings.get('tasks')} tasks"
                   + (f", {timings['exact_per_query']:.1f} exact distances per query"
                      if "exact_per_query" in timings else ""))
        out = {"distances": dist, "indices": idx}
        if y is not None:
            out["predictions"] = vote(y[idx], ties=vote_ties)
            if truth is not None:
                click.echo(f"accuracy {np.mean(out['predictions'] == truth):.4f} "
                           f"on {len(truth)} queries")
        if out_path:
            import zarr

            local = _local_path(out_path)
            if local is not None:  # zarr's local store makes no parent folders
                os.makedirs(os.path.dirname(local), exist_ok=True)
            group = zarr.open_group(target or out_path, mode="w" if mode == "w" else "w-")
            for name, arr in out.items():
                group.create_array(name, data=arr)
            click.echo(f"wrote {', '.join(out)} to {out_path}")
    finally:
        for m in (t_tmp, q_tmp):
            if m is not None:
                m.delete()


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
        pass
    try:
        digits = _digits()
    except MissingDependencyError as exc:
        raise click.ClickException(f"MNIST unavailable: {first}; Fashion-MNIST not installed; "
                                   f"and {exc}") from None
    click.echo(f"(MNIST unavailable: {first}; Fashion-MNIST not installed; "
               "using scikit-learn's 8x8 digits)")
    return "scikit-learn digits", digits, 500


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
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (never A or B).")
@_executor_options
def matmul_cmd(a_url, b_url, out_url, dry_run, overwrite, workers, backend, store) -> None:
    """Multiply two stored matrices: OUT = A @ B.

    Each URL is a matrix's full URL, STORE_URL/KEY (e.g. file:///data/store/A or
    s3://bucket/prefix/A). Prints the plan (tasks, bytes, flops, memory per task)
    before running it. OUT must be new, unless --overwrite; it is never A or B.
    """
    from .linalg import matmul, plan
    from .matrix import ShardedMatrix
    from .storage import open_store, overlaps

    A, B = _url_matrix(a_url), _url_matrix(b_url)
    out_store, _, out_key = out_url.rstrip("/").rpartition("/")
    try:
        target = open_store(out_store)
    except (ShardwrenError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, m in (("A", A), ("B", B)):
        if overlaps(m.store.location(m.key), target.location(out_key)):
            raise click.UsageError(f"OUT {out_url} is {name} ({m.key!r}), or holds it or lies "
                                   "inside it: writing the product would destroy it. Choose "
                                   "a new key")
    if not overwrite and (target.exists(out_key) or target.list(out_key)):
        raise click.UsageError(f"OUT {out_url} exists; pass --overwrite to replace it, or "
                               "choose a new key")
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
@click.option("--results-older-than", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="Also remove outcomes stored for pickled futures (_shardwren/results) "
                   "written more than DAYS days ago (default: keep them).")
def store_gc(store, dry_run, results_older_than) -> None:
    """Remove what killed processes left behind: scratch inputs (tmp/<name>-<owner>-<id>),
    .partial temporaries and leases of owners that are dead. A live job's are kept.
    Outcomes stored for pickled futures go only by age (--results-older-than).
    """
    from .storage import collect_garbage, default_store_url, open_store

    url = store or default_store_url()
    local = _local_path(os.path.expanduser(url))
    if local is not None and not os.path.exists(local):
        click.echo(f"{url}: no store there, nothing to remove")  # and none is created
        return
    max_age = None if results_older_than is None else results_older_than * 86400
    try:
        s = open_store(store)
        found = collect_garbage(s, dry_run=dry_run, results_max_age=max_age)
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
              callback=_folder_exists, help="Also write a timeline PNG.")
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


@main.group("datasets")
def datasets_group() -> None:
    """Generate or inspect datasets."""


@datasets_group.command("mnist8m")
@click.option("--rows", type=click.IntRange(min=1), default=8_100_000, show_default=True,
              help="Rows to generate (a prefix of the 8.1 million).")
@click.option("--key", default="mnist8m", show_default=True,
              help="Writes matrices KEY/x (uint8 images) and KEY/y (labels).")
@click.option("--block-size", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding MNIST's IDX files (or its parent).")
@_executor_options
def mnist8m_cmd(rows, key, block_size, seed, data_dir, workers, backend, store) -> None:
    """MNIST plus deformed copies (infiMNIST-style), generated block by block by the workers.

    Deterministic and resumable: an interrupted run keeps the blocks it wrote. A local
    store without room for the data is refused before anything is written.
    """
    from . import mnist8m
    from .sources import human_bytes

    try:
        with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
            t = time.perf_counter()
            X, _ = mnist8m.generate(rows, key=key, executor=ex, block=block_size, seed=seed,
                                    data_dir=data_dir, progress=True)
    except ShardwrenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{X.store.url_for(key)}/x: {rows} x 784 uint8 ({human_bytes(rows * 784)}) "
               f"and labels {key}/y, in {time.perf_counter() - t:.1f} s")


def _profile(name: str):
    from . import capacity

    if name == "local":
        return capacity.local_profile()
    if name in ("lambda", "aws-lambda"):
        return capacity.LAMBDA
    try:
        return capacity.Profile.load(name)
    except (OSError, ValueError, TypeError) as exc:
        raise click.ClickException(f"--profile {name!r}: not local, lambda or a profile file "
                                   f"({exc})") from None


@main.group("plan")
def plan_group() -> None:
    """Predict a job's time, bytes, store requests, memory (and cost on Lambda) before running it.

    Costs come from the per-task kernels measured on this machine (`shardwren plan
    calibrate` saves them), or from the written-out assumptions of `--profile lambda`.
    See docs/capacity.md for the model and how it compares with measured runs.
    """


@plan_group.command("calibrate")
@_executor_options
def plan_calibrate(workers, backend, store) -> None:
    """Time the kernels on this machine's workers and save them as the local profile."""
    from . import capacity

    with shardwren.default_executor(backend=backend, store=store, workers=workers) as ex:
        prof = capacity.calibrate(ex)
    path = capacity.profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.save(path)
    for key, value in vars(prof).items():
        click.echo(f"  {key}: {value}")
    click.echo(f"saved to {path}")


@plan_group.command("knn")
@click.option("--train-rows", type=click.IntRange(min=1), required=True)
@click.option("--query-rows", type=click.IntRange(min=1), required=True)
@click.option("--features", type=click.IntRange(min=1), default=784, show_default=True)
@click.option("--k", "k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--method", type=click.Choice(["brute", "pruned"]), default="pruned",
              show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--itemsize", type=click.IntRange(min=1), default=None,
              help="Bytes per stored value (1 for uint8 pixels). Default: 4, or --dtype's.")
@click.option("--dtype", default=None,
              help="The stored dtype (uint8, float16, float32, ...): sets --itemsize, and "
                   "--integers for 8- and 16-bit integer types.")
@click.option("--integers/--no-integers", default=None,
              help="The values are small integers (8- or 16-bit, or floats holding only such, "
                   "like pixels stored as float32): exact distances take the faster integer "
                   "path. Default: from --dtype, else when --itemsize is 1 or 2.")
@click.option("--exact-per-query", type=click.FloatRange(min=0), default=None,
              help="Exact distances per query, from a measured run's timings "
                   "(default: k per tile for brute force, 30 k for pruned).")
@click.option("--m", "m", type=click.IntRange(min=1), default=32, show_default=True,
              help="Pruned: the projection's dimension (a run's timings['m']; the fit picks "
                   "it from a sample).")
@click.option("--profile", "profile_name", default="local", show_default=True,
              help="local (calibrated or the development machine's), lambda, or a file.")
def plan_knn(train_rows, query_rows, features, k, method, workers, block_size, itemsize,
             dtype, integers, exact_per_query, m, profile_name) -> None:
    """Predicted cost of an exact k-NN job."""
    from . import capacity

    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise click.BadParameter(f"{dtype!r} is not a numpy dtype ({exc})",
                                     param_hint="--dtype") from None
        if dt.kind not in "biuf":
            raise click.BadParameter(f"{dtype!r} is not a numeric dtype", param_hint="--dtype")
        if itemsize is not None and itemsize != dt.itemsize:
            raise click.UsageError(f"--itemsize {itemsize} contradicts --dtype {dtype} "
                                   f"({dt.itemsize} bytes): give one of them")
    prof = _profile(profile_name)
    est = capacity.knn(train_rows, query_rows, features, k, workers, method, prof, block_size,
                       itemsize or 4, m=m, exact_per_query=exact_per_query, integers=integers,
                       dtype=dtype)
    click.echo(str(est))
    _refuse_if_unfit(est, prof)


@plan_group.command("matmul")
@click.option("--n", type=click.IntRange(min=1), required=True, help="A is n x inner.")
@click.option("--inner", type=click.IntRange(min=1), default=None, help="Default: n.")
@click.option("--m", "mcols", type=click.IntRange(min=1), default=None, help="B is inner x m. Default: n.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--profile", "profile_name", default="local", show_default=True)
def plan_matmul(n, inner, mcols, workers, block_size, profile_name) -> None:
    """Predicted cost of a blocked matmul."""
    from . import capacity

    prof = _profile(profile_name)
    est = capacity.matmul(n, inner or n, mcols or n, workers, prof, block_size)
    click.echo(str(est))
    _refuse_if_unfit(est, prof)


def _refuse_if_unfit(est, prof) -> None:
    """A plan whose tasks cannot fit the platform (Lambda: 15 min, 10 GB) is refused."""
    from . import capacity

    problems = capacity.limits_exceeded(est, prof)
    if problems:
        raise click.ClickException("refused: " + "; ".join(problems) + "; use a smaller "
                                   "--block-size")


if __name__ == "__main__":
    main()
