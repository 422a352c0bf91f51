"""Every optional integration both ways: with its library it works; without it, a clear
error naming the pip line that installs it (or, for pandas, the documented fallback).

Absence is simulated (``None`` in ``sys.modules`` makes ``import`` fail exactly as for
an uninstalled package) in-process, or in a fresh interpreter where hiding a library
already in use here would break it (distributed). In the core-only environment leg
(``tools/test_matrix.py``, ``SHARDWREN_EXPECT_CORE_ONLY=1``) the libraries are really
absent: the same tests then run against the real thing, and
``test_core_only_install_really_lacks_the_optional_libraries`` checks that they are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import shardwren
from shardwren import _optional, cli, datasets, jobs, plot
from shardwren.errors import BackendNotInstalledError, DatasetNotFoundError, MissingDependencyError

CORE_ONLY = os.environ.get("SHARDWREN_EXPECT_CORE_ONLY") == "1"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture
def without(monkeypatch):
    """Make ``import <name>`` fail as if the library were not installed, for this test.

    Also drops the library's submodules already imported (``matplotlib.pyplot``)
    and fsspec's cached implementation class (``s3`` -> ``s3fs.S3FileSystem``),
    which would otherwise be reused without importing anything.
    """

    def hide(*names: str) -> None:
        # (fsspec's package attribute `registry` is a read-only view; the module holds the dict)
        registry = importlib.import_module("fsspec.registry")._registry
        for name in names:
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, mod)
            monkeypatch.setitem(sys.modules, name, None)
            for proto, cls in list(registry.items()):
                if cls.__module__.split(".")[0] == name:
                    monkeypatch.delitem(registry, proto)

    return hide


def _records(n: int = 4) -> list[dict]:
    return [{"job_id": "j", "index": i, "attempt": 1, "submitted": 10.0 + i, "started": 10.5 + i,
             "finished": 11.0 + 1.5 * i, "outcome": "ok", "failure": None} for i in range(n)]


def _hint(module: str) -> str:
    return re.escape(_optional.install_hint(module))


# --- the registry of optional libraries matches pyproject's extras -------------------


def test_every_optional_library_has_its_extra():
    """Each hint that names a shardwren extra names one the installed package declares,
    and that extra really requires the library (pip name of the module)."""
    dist = importlib.metadata.distribution("shardwren")
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    requires = dist.requires or []
    pip_names = {"sklearn": "scikit-learn"}
    for module, req in _optional.INSTALL.items():
        m = re.fullmatch(r"shardwren\[(\w+)\]", req)
        if m is None:
            continue
        extra = m.group(1)
        assert extra in extras, f"{module}: extra {extra!r} is not declared in pyproject.toml"
        pip = pip_names.get(module, module)
        assert any(r.startswith(pip) and f'extra == "{extra}"' in r for r in requires), \
            f"extra {extra!r} does not require {pip}"
    # `all` brings every integration that has an extra.
    assert {"plot", "pandas", "s3", "dask"} <= extras


def test_license_is_an_spdx_expression():
    """pyproject's license is an SPDX string (the table form is deprecated in setuptools)
    and reaches the built metadata as License-Expression."""
    meta = importlib.metadata.metadata("shardwren")
    assert meta.get("License-Expression") == "Apache-2.0"
    licenses = pytest.importorskip("packaging.licenses")
    assert licenses.canonicalize_license_expression(meta["License-Expression"]) == "Apache-2.0"


@pytest.mark.skipif(not CORE_ONLY, reason="only in the core-only environment leg")
def test_core_only_install_really_lacks_the_optional_libraries():
    present = [m for m in _optional.INSTALL if installed(m)]
    assert not present, f"the core-only environment has optional libraries installed: {present}"


# --- matplotlib: plot ----------------------------------------------------------------


def test_plot_without_matplotlib_names_the_plot_extra(without, tmp_path):
    without("matplotlib")
    for draw in (plot.timeline, plot.histogram):
        with pytest.raises(MissingDependencyError, match=_hint("matplotlib")) as info:
            draw(_records(), str(tmp_path / "x.png"))
        assert isinstance(info.value, ImportError)
        assert f"plot.{draw.__name__} needs 'matplotlib', which is not installed" in str(info.value)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not installed("matplotlib"), reason="matplotlib not installed")
def test_plot_with_matplotlib_draws_records(tmp_path):
    for draw in (plot.timeline, plot.histogram):
        path = draw(_records(), str(tmp_path / f"{draw.__name__}.png"), dpi=40)
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not installed("matplotlib"), reason="matplotlib not installed")
def test_broken_matplotlib_is_told_apart_from_a_missing_one(tmp_path):
    """A library installed but missing one of its own dependencies: the message says
    so, with the extra that reinstalls it. In a fresh interpreter, so matplotlib is
    imported for real after kiwisolver (its dependency) is made unimportable."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["kiwisolver"] = None
        from shardwren import plot
        try:
            plot.histogram([{{"started": 1.0, "finished": 2.0}}], {str(tmp_path / 'x.png')!r})
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingDependencyError plot.histogram needs 'matplotlib', "
                                 "which is installed but needs 'kiwisolver', which is not"), out.stdout
    assert "pip install 'shardwren[plot]'" in out.stdout


# --- pandas: job_stats ----------------------------------------------------------------


def test_job_stats_without_pandas_is_a_list_that_plots(without, executor, tmp_path):
    without("pandas")
    fs = executor.map(lambda x: x + 1, range(5))
    shardwren.wait(fs)
    table = executor.job_stats(fs)
    assert isinstance(table, list) and len(table) == 5
    assert table == jobs.records(fs)
    if installed("matplotlib"):
        assert plot.histogram(table, str(tmp_path / "h.png"), dpi=40)


@pytest.mark.skipif(not installed("pandas"), reason="pandas not installed")
def test_job_stats_with_pandas_is_a_dataframe_that_round_trips(executor, tmp_path):
    """The README's `plot.histogram(ex.job_stats(fs), ...)` with pandas installed: the
    DataFrame's rows, not its column names, are the records (regression: iterating it
    gave 'str' object has no attribute 'stats'), and NaN/numpy scalars come back as
    the None/Python numbers the records hold."""
    import pandas as pd

    def slow_unless_three(i):
        if i == 3:
            raise ValueError("three")
        return i

    fs = executor.map(slow_unless_three, range(7))
    shardwren.wait(fs)
    fs[0].result()  # one record with 'fetched' set, the others None -> NaN in the frame
    table = executor.job_stats(fs)
    assert isinstance(table, pd.DataFrame) and list(table.columns) == list(jobs.TASK_FIELDS)
    assert table["fetched"].isna().sum() == 6
    back = jobs.records(table)
    assert back == jobs.records(fs)
    assert all(type(r["index"]) is int and (r["fetched"] is None or type(r["fetched"]) is float)
               for r in back)
    assert jobs.summarize(back) == jobs.summarize(jobs.records(fs))
    if installed("matplotlib"):
        assert plot.histogram(table, str(tmp_path / "h.png"), dpi=40)
        assert plot.timeline(table, str(tmp_path / "t.png"), dpi=40)


def test_records_refuses_what_is_not_records():
    with pytest.raises(TypeError, match="expected futures, task records"):
        jobs.records(["index", "started"])
    with pytest.raises(TypeError, match="got an iterable of int"):
        jobs.records([1, 2])


# --- s3fs: s3:// stores ---------------------------------------------------------------


def test_s3_store_without_s3fs_names_the_s3_extra(without):
    without("s3fs")
    with pytest.raises(BackendNotInstalledError, match=_hint("s3fs")) as info:
        shardwren.open_store("s3://bucket/prefix")
    assert isinstance(info.value, MissingDependencyError)
    assert "store scheme s3:// needs 's3fs', which is not installed" in str(info.value)


@pytest.mark.skipif(not installed("s3fs"), reason="s3fs not installed")
def test_s3_store_with_s3fs_round_trips(s3_url):
    store = shardwren.open_store(s3_url)
    store.put("a/b", b"bytes")
    assert store.get("a/b") == b"bytes" and store.list() == ["a/b"]


# --- distributed: the dask backend ----------------------------------------------------


def test_dask_backend_without_distributed_names_the_dask_extra(tmp_path):
    """In a fresh interpreter: hiding distributed in this one, where the dask tests'
    clients have left its background machinery running, breaks that machinery."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["distributed"] = None
        import shardwren
        try:
            shardwren.default_executor(backend="dask", address="tcp://127.0.0.1:9",
                                       store={f"file://{tmp_path}/s"!r})
        except ImportError as exc:
            print(type(exc).__name__, exc)
        try:
            shardwren.default_executor(backend="nope")
        except ValueError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    missing, unknown = out.stdout.splitlines()
    assert missing.startswith("BackendNotInstalledError backend 'dask' needs 'distributed', "
                              "which is not installed"), missing
    assert missing.endswith("install it with: pip install 'shardwren[dask]'"), missing
    assert unknown.startswith("UnknownBackendError unknown backend 'nope'"), unknown
    assert "'dask' (pip install 'shardwren[dask]')" in unknown


@pytest.mark.skipif(not installed("distributed"), reason="distributed not installed")
def test_dask_backend_with_distributed_runs(dask_cluster, tmp_path):
    with shardwren.default_executor(backend="dask", address=dask_cluster,
                                    store=f"file://{tmp_path}/s", shared_filesystem=True,
                                    progress=False) as ex:
        assert shardwren.get_all_results(ex.map(lambda x: x * x, range(4))) == [0, 1, 4, 9]


# --- scikit-learn: the demo's last-resort data ----------------------------------------


def _no_datasets(monkeypatch):
    def unavailable(name, data_dir=None, download=True):
        raise DatasetNotFoundError(f"{name} not found in /nowhere; not downloaded (test)")

    monkeypatch.setattr(datasets, "load", unavailable)


def test_demo_without_mnist_or_sklearn_says_what_to_install(without, monkeypatch, tmp_path):
    without("sklearn")
    _no_datasets(monkeypatch)
    monkeypatch.setenv("SHARDWREN_STORE", str(tmp_path / "store"))
    out = CliRunner().invoke(cli.main, ["demo"])
    assert out.exit_code == 1, out.output
    assert "MNIST unavailable: mnist not found in /nowhere" in out.output
    assert "needs 'sklearn', which is not installed" in out.output
    assert "pip install 'scikit-learn'" in out.output


@pytest.mark.skipif(not installed("sklearn"), reason="scikit-learn not installed")
def test_demo_fallback_data_with_sklearn(monkeypatch, capsys):
    _no_datasets(monkeypatch)
    name, (X, y, Xt, yt), block = cli._demo_data(None)
    assert name == "scikit-learn digits" and X.shape == (1400, 64) and len(yt) == 397
    assert "using scikit-learn's 8x8 digits" in capsys.readouterr().out


# --- the helper itself, on packages made for the purpose ---------------------------------


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """``swopt_ok`` imports; ``swopt_broken`` is installed but imports a missing module."""
    (tmp_path / "swopt_ok.py").write_text("VALUE = 1\n")
    (tmp_path / "swopt_broken.py").write_text("import swopt_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_optional.INSTALL, "swopt_ok", "shardwren[ok]")
    monkeypatch.setitem(_optional.INSTALL, "swopt_broken", "shardwren[broken]")
    monkeypatch.setitem(_optional.INSTALL, "swopt_absent", "shardwren[absent]")
    yield
    for m in ("swopt_ok", "swopt_broken", "swopt_not_there"):
        sys.modules.pop(m, None)


def test_require_and_optional(fake_packages):
    assert _optional.require("swopt_ok", "feature").VALUE == 1
    assert _optional.optional("swopt_ok", "feature").VALUE == 1
    assert _optional.optional("swopt_absent", "feature") is None
    with pytest.raises(MissingDependencyError,
                       match=r"^feature needs 'swopt_absent', which is not installed .*"
                             r"install it with: pip install 'shardwren\[absent\]'$"):
        _optional.require("swopt_absent", "feature")
    # Installed but broken: an error either way, never a quiet fallback.
    for load in (_optional.require, _optional.optional):
        with pytest.raises(MissingDependencyError,
                           match="needs 'swopt_broken', which is installed but needs "
                                 r"'swopt_not_there', which is not.*shardwren\[broken\]"):
            load("swopt_broken", "feature")


def test_require_lets_shardwrens_own_import_errors_through():
    with pytest.raises(ModuleNotFoundError) as info:
        _optional.require("shardwren.no_such_module", "feature", needs="distributed")
    assert not isinstance(info.value, MissingDependencyError)


def test_unknown_module_hint_is_its_own_name():
    assert _optional.install_hint("swopt_unlisted.sub") == "pip install 'swopt_unlisted'"
    assert _optional.install_hint("matplotlib.pyplot") == "pip install 'shardwren[plot]'"


# --- lithops: the serverless backend ---------------------------------------------------


def test_lithops_backend_without_lithops_names_the_lithops_extra(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["lithops"] = None
        import shardwren
        try:
            shardwren.default_executor(backend="lithops", store={f"file://{tmp_path}/s"!r})
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("BackendNotInstalledError backend 'lithops' needs 'lithops', "
                                 "which is not installed"), out.stdout
    assert out.stdout.strip().endswith("install it with: pip install 'shardwren[lithops]'"), out.stdout
