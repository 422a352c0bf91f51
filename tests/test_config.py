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
