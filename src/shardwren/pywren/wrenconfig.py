"""PyWren's ``wrenconfig``: ``default()['s3']['bucket']`` names the default store."""

from __future__ import annotations

from typing import Any

from .. import config
from ..storage import default_store_url


def default() -> dict[str, Any]:
    """PyWren-shaped configuration.

    ``['s3']['bucket']`` is the default store URL (``file://...`` unless configured
    otherwise), which ``ShardedMatrix(..., bucket=...)`` accepts.
    """
    settings = config.load()
    url = default_store_url()
    bucket, _, prefix = url.split("://", 1)[1].partition("/") if url.startswith("s3://") else (url, "", "")
    return {"s3": {"bucket": url, "pywren_prefix": prefix},
            "shardwren": {**settings, "store": url},
            "account": {}, "lambda": {}, "runtime": {}}
