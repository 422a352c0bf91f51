"""Configuration: keyword arguments > ``SHARDWREN_*`` environment > config file.

The config file is ``~/.shardwren/config.toml`` (or ``$SHARDWREN_CONFIG``), a flat
TOML table whose keys are the setting names below::

    backend = "local"
    workers = 2
    store = "s3://my-bucket/shardwren"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text in ("", "auto"):
        return None
    raise ValueError(f"expected true, false or auto, got {value!r}")


def parse_size(value: Any) -> int | None:
    """``4GB``, ``512MiB``, ``1e9`` or an int -> bytes."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(float(text))


@dataclass(frozen=True)
class Setting:
    """One configuration key: its name, how to parse it, default, and meaning."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str

    @property
    def env(self) -> str:
        return "SHARDWREN_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("backend", str, "local", "Execution backend: `local` (worker processes) or `dask`."),
    Setting("store", str, None,
            "Default store URL (`file://`, `memory://`, `s3://bucket/prefix`, any fsspec URL); "
            "default `file://~/.shardwren/store`."),
    Setting("workers", int, None, "Local backend: number of worker processes (default: CPU cores)."),
    Setting("blas_threads", int, None,
            "BLAS threads per worker (default: cores // workers, at least 1)."),
    Setting("secret", str, None,
            "Key for signing task payloads (HMAC-SHA256); default: random per local executor. "
            "Give the driver and every Dask worker the same value. Never printed."),
    Setting("speculation", _bool, True,
            "Back up stragglers: once 80% of a map is done, tasks running 3x the median get a "
            "second copy; the first result wins."),
    Setting("retries", int, 2,
            "Runs again after a crashed worker, a timeout or a transient storage error."),
    Setting("timeout", float, None,
            "Seconds a task may run before its worker is killed (`TaskTimeoutError`)."),
    Setting("memory_limit", lambda v: parse_size(v), None,
            "Bytes a task may use (e.g. `4GB`); plans needing more per task are refused."),
    Setting("progress", _bool, None,
            "Progress bars on `wait`/`get_all_results`: `true`, `false`, or `auto` "
            "(on when stderr is a terminal or in Jupyter)."),
    Setting("dask_address", str, None, "Dask backend: scheduler address, e.g. `tcp://10.0.0.1:8786`."),
    Setting("connect_timeout", float, 10.0, "Dask backend: seconds to wait for the scheduler."),
    Setting("shared_filesystem", _bool, False,
            "Dask backend: allow a `file://` store because every worker mounts the same path."),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def config_path() -> Path:
    """Path of the user's config file (it need not exist)."""
    return Path(os.environ.get("SHARDWREN_CONFIG", "~/.shardwren/config.toml")).expanduser()


def _file_values() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown keys {unknown}; known keys: {sorted(_BY_NAME)}"
        )
    return data


def load(**overrides: Any) -> dict[str, Any]:
    """Resolve every setting: keyword > environment > config file > default.

    Parameters
    ----------
    **overrides
        Settings given in code; ``None`` means "not given".

    Returns
    -------
    dict
        Every setting in :data:`SETTINGS` with its parsed value.
    """
    unknown = sorted(k for k in overrides if k not in _BY_NAME)
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; known settings: {sorted(_BY_NAME)}")
    file_values = _file_values()
    resolved: dict[str, Any] = {}
    for s in SETTINGS:
        for source, raw in (
            ("argument", overrides.get(s.name)),
            (f"${s.env}", os.environ.get(s.env)),
            (str(config_path()), file_values.get(s.name)),
        ):
            if raw is not None and raw != "":
                try:
                    resolved[s.name] = s.parse(raw)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"setting {s.name!r} from {source}: {exc}") from None
                break
        else:
            resolved[s.name] = s.default
    return resolved


def markdown_table() -> str:
    """The settings as a Markdown table, as shown in the README."""
    rows = ["| key | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        rows.append(f"| `{s.name}` | `{s.env}` | `{s.default}` | {s.doc} |")
    return "\n".join(rows)
