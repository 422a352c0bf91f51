from __future__ import annotations

import pytest

from shardwren import config
from shardwren.errors import ConfigError


@pytest.fixture
def cfg_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHARDWREN_CONFIG", str(path))
    for s in config.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    return path


def test_precedence_keyword_env_file_default(cfg_file, monkeypatch):
    assert config.load()["workers"] is None
    cfg_file.write_text('workers = 3\nbackend = "dask"\n')
    assert config.load()["workers"] == 3
    monkeypatch.setenv("SHARDWREN_WORKERS", "5")
    assert config.load()["workers"] == 5
    assert config.load(workers=7)["workers"] == 7
    assert config.load()["backend"] == "dask"


def test_bad_values_name_the_source(cfg_file, monkeypatch):
    monkeypatch.setenv("SHARDWREN_WORKERS", "many")
    with pytest.raises(ConfigError, match="SHARDWREN_WORKERS"):
        config.load()
    monkeypatch.delenv("SHARDWREN_WORKERS")
    cfg_file.write_text("wrokers = 2\n")
    with pytest.raises(ConfigError, match="wrokers"):
        config.load()
    with pytest.raises(ConfigError, match="nonsense"):
        config.load(nonsense=1)


def test_progress_parsing(cfg_file, monkeypatch):
    monkeypatch.setenv("SHARDWREN_PROGRESS", "off")
    assert config.load()["progress"] is False
    monkeypatch.setenv("SHARDWREN_PROGRESS", "auto")
    assert config.load()["progress"] is None


def test_readme_documents_every_key():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for s in config.SETTINGS:
        assert f"`{s.env}`" in readme, s.name


@pytest.mark.parametrize("name,value,accepted", [
    ("memory_limit", "lots", "size"),
    ("memory_limit", -100, "positive"),
    ("memory_limit", 0, "positive"),
    ("memory_limit", True, "size"),
    ("timeout", -1, "positive"),
    ("timeout", 0, "positive"),
    ("timeout", "soon", "number of seconds"),
    ("workers", 0, "at least 1"),
    ("workers", -2, "at least 1"),
    ("workers", 2.5, "whole number"),
    ("blas_threads", 0, "at least 1"),
    ("retries", -1, "0 or more"),
    ("connect_timeout", 0, "positive"),
    ("speculation", "maybe", "true, false"),
])
def test_bad_values_are_config_errors_naming_setting_and_accepted_values(cfg_file, name, value,
                                                                          accepted):
    with pytest.raises(ConfigError) as info:
        config.load(**{name: value})
    text = str(info.value)
    assert repr(name) in text and accepted in text and repr(value) in text


def test_bad_environment_value_names_the_variable(cfg_file, monkeypatch):
    monkeypatch.setenv("SHARDWREN_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match=r"SHARDWREN_MEMORY_LIMIT.*'lots'.*512MiB"):
        config.load()


@pytest.mark.parametrize("value,expected", [
    ("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1e9", 10**9), (1024, 1024), ("2 gib", 2 * 2**30),
    ("100", 100),
])
def test_sizes_parse(value, expected):
    assert config.parse_size(value) == expected


def test_default_executor_refuses_bad_settings(tmp_path):
    import shardwren

    store = f"file://{tmp_path}"
    with pytest.raises(ConfigError, match="'workers'.*at least 1"):
        shardwren.default_executor(workers=0, store=store)
    with pytest.raises(ConfigError, match="'memory_limit'"):
        shardwren.default_executor(memory_limit="lots", store=store)
    with pytest.raises(ConfigError, match="'timeout'.*positive"):
        shardwren.default_executor(timeout=0, store=store)


def test_map_refuses_bad_limits_before_running_anything(executor):
    for kwargs, match in (({"memory_limit": "lots"}, "'memory_limit'"),
                          ({"memory_limit": -100}, "'memory_limit'.*positive"),
                          ({"timeout": -1}, "'timeout'.*positive"),
                          ({"timeout": 0}, "'timeout'.*positive"),
                          ({"retries": -1}, "'retries'")):
        with pytest.raises(ConfigError, match=match):
            executor.map(lambda x: x, [1], **kwargs)


def test_local_backend_refuses_zero_workers():
    from shardwren.backends.local import LocalBackend

    with pytest.raises(ConfigError, match="workers"):
        LocalBackend(workers=0)


def test_values_that_were_silently_misread_are_refused(cfg_file, monkeypatch, tmp_path):
    """speculation="auto" turned speculation off; `store = 5` in the file became a folder
    named 5; a config file that is not UTF-8 raised a bare UnicodeDecodeError; a store= that
    is not a string was dropped for the default store."""
    import pathlib

    import shardwren

    monkeypatch.setenv("SHARDWREN_SPECULATION", "auto")
    with pytest.raises(ConfigError, match="'speculation' from \\$SHARDWREN_SPECULATION"):
        config.load()
    monkeypatch.delenv("SHARDWREN_SPECULATION")
    cfg_file.write_text("store = 5\n")
    with pytest.raises(ConfigError, match="'store' from .*got 5"):
        config.load()
    cfg_file.write_bytes(b"\xff\xfeworkers = 2\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        config.load()
    cfg_file.write_text("")
    with pytest.raises(ConfigError, match="store must be a URL"):
        shardwren.default_executor(store=123)
    ex = shardwren.default_executor(store=pathlib.Path(tmp_path / "st"), workers=1,
                                    progress=False)
    try:
        assert ex.store.url == f"file://{tmp_path / 'st'}"
    finally:
        ex.shutdown()
