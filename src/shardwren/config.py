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


def _text(value: Any) -> str:
    """A string setting: a number or a list (from the config file, say) is refused, not
    turned into the text of its repr."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _strict_bool(value: Any) -> bool | None:
    """A yes/no setting: "auto" (or empty) means nothing here and is refused, not taken
    for False."""
    got = _bool(value)
    if got is None and value is not None:
        raise ValueError(f"expected true or false, got {value!r}")
    return got


_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}


def parse_size(value: Any) -> int | None:
    """``4GB``, ``512MiB``, ``1e9`` or an int -> bytes (``None`` stays ``None``).

    Raises
    ------
    ValueError
        For anything else, negative sizes included.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        size = value
    else:
        text, factor = str(value).strip().upper().replace(" ", ""), 1
        for unit, f in _UNITS.items():  # longest units first: "MIB" before "B"
            if text.endswith(unit):
                text, factor = text[: -len(unit)], f
                break
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a size") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite size")
        size = int(number * factor)
    if size < 0:
        raise ValueError(f"{value!r} is negative")
    return size


def _positive_size(value: Any) -> int | None:
    size = parse_size(value)
    if size is not None and size <= 0:
        raise ValueError(f"{value!r} is not positive")
    return size


def _whole(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            number = int(value)
        else:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        if number < minimum:
            raise ValueError(f"{value!r} is below {minimum}")
        return number

    return parse


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not 0 < number < float("inf"):  # also refuses NaN
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return number


@dataclass(frozen=True)
class Setting:
    """One configuration key: its name, how to parse it, default, meaning and accepted values."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    accepts: str = "a string"

    @property
    def env(self) -> str:
        return "SHARDWREN_" + self.name.upper()

    def check(self, value: Any, source: str = "argument") -> Any:
        """``value`` parsed, or a ConfigError naming the setting, the source and what it accepts."""
        try:
            return self.parse(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"setting {self.name!r} from {source}: got {value!r}; "
                              f"expected {self.accepts}") from None


_SIZE = "a positive size: a number of bytes, or a number with a unit such as '512MiB' or '4GB'"
_SECONDS = "a positive number of seconds (leave it unset for no limit)"

SETTINGS: tuple[Setting, ...] = (
    Setting("backend", _text, "local",
            "Execution backend: `local` (worker processes), `dask` or `lithops` (serverless).",
            "a backend name: 'local', 'dask' or 'lithops'"),
    Setting("store", _text, None,
            "Default store URL (`file://`, `memory://`, `s3://bucket/prefix`, any fsspec URL); "
            "default `file://~/.shardwren/store`.", "a store URL"),
    Setting("workers", _whole(1), None,
            "Local backend: number of worker processes (default: CPU cores).",
            "a whole number of worker processes, at least 1 (unset: one per core)"),
    Setting("blas_threads", _whole(1), None,
            "BLAS threads per worker (default: cores // workers, at least 1).",
            "a whole number of threads, at least 1"),
    Setting("secret", _text, None,
            "Key for signing task payloads (HMAC-SHA256); default: random per local executor. "
            "Give the driver and every Dask worker the same value. Never printed.", "a string"),
    Setting("speculation", _strict_bool, True,
            "Back up stragglers: once 80% of a map is done, tasks running 3x the median get a "
            "second copy; the first result wins.", "true, false, yes, no, on, off, 1 or 0"),
    Setting("retries", _whole(0), 2,
            "Runs again after a crashed worker, a timeout or a transient storage error.",
            "a whole number of reruns, 0 or more"),
    Setting("timeout", _seconds, None,
            "Seconds a task may run before its worker is killed (`TaskTimeoutError`).", _SECONDS),
    Setting("memory_limit", _positive_size, None,
            "Bytes a task may use (e.g. `4GB`); plans needing more per task are refused.", _SIZE),
    Setting("progress", _bool, None,
            "Progress bars on the executor's `ex.wait`/`ex.get_all_results` (the module's "
            "`shardwren.wait(fs, progress=)` takes its own): `true`, `false`, or `auto` "
            "(on when stderr is a terminal or in Jupyter).", "true, false or auto"),
    Setting("dask_address", _text, None, "Dask backend: scheduler address, e.g. `tcp://10.0.0.1:8786`.",
            "a scheduler address such as 'tcp://10.0.0.1:8786'"),
    Setting("connect_timeout", _seconds, 10.0, "Dask backend: seconds to wait for the scheduler.",
            "a positive number of seconds"),
    Setting("shared_filesystem", _strict_bool, False,
            "Dask backend: allow a `file://` store because every worker mounts the same path.",
            "true or false"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
#: Every setting's name.
NAMES = frozenset(_BY_NAME)


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path} (TOML, UTF-8): {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
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
                resolved[s.name] = s.check(raw, source)
                break
        else:
            resolved[s.name] = s.default
    return resolved


def check(name: str, value: Any, source: str = "argument") -> Any:
    """Validate one setting's value given in code (e.g. ``map(timeout=...)``); ``None`` passes.

    Raises
    ------
    ConfigError
        Naming the setting, where the value came from and the values accepted.
    """
    return None if value is None else _BY_NAME[name].check(value, source)


def markdown_table() -> str:
    """The settings as a Markdown table, as shown in the README."""
    rows = ["| key | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        rows.append(f"| `{s.name}` | `{s.env}` | `{s.default}` | {s.doc} |")
    return "\n".join(rows)
