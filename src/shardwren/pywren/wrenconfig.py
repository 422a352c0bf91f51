"""PyWren's ``wrenconfig``: ``default()`` is a PyWren-shaped configuration dict.

``['s3']['bucket']`` names the default store (a URL, which ``ShardedMatrix(...,
bucket=...)`` accepts), ``['scheduler']['map_item_limit']`` caps how many items one
map may have (PyWren's seatbelt: ``None`` for no cap) and ``['shardwren']`` holds
every shardwren setting. Give the dict, edited, to ``pywren.default_executor(config=)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import config
from ..storage import default_store_url


def default() -> dict[str, Any]:
    """PyWren-shaped configuration from shardwren's settings (a fresh dict each call)."""
    settings = config.load()
    settings.pop("secret", None)  # never handed around in a plain dict
    url = default_store_url()
    prefix = url.split("://", 1)[1].partition("/")[2] if url.startswith("s3://") else ""
    return {"s3": {"bucket": url, "pywren_prefix": prefix},
            "scheduler": {"map_item_limit": None},
            "shardwren": {**settings, "store": url},
            "account": {"aws_region": None}, "lambda": {}, "runtime": {}, "standalone": {}}


def settings_from(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The shardwren settings a PyWren config dict changes from :func:`default`."""
    base = default()
    out: dict[str, Any] = {}
    bucket = (cfg.get("s3") or {}).get("bucket")
    if bucket and bucket != base["s3"]["bucket"]:
        if "://" not in bucket:  # PyWren's plain bucket name (+ prefix)
            prefix = (cfg.get("s3") or {}).get("pywren_prefix") or ""
            bucket = f"s3://{bucket}/{prefix}".rstrip("/")
        out["store"] = bucket
    for name, value in (cfg.get("shardwren") or {}).items():
        if name in config.NAMES and name != "store" and value != base["shardwren"].get(name):
            out[name] = value
    return out
