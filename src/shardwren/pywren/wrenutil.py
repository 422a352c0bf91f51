"""PyWren's ``pywren.wrenutil``: URL splitting, ids and base64 helpers."""

from __future__ import annotations

import base64
import uuid


def uuid_str() -> str:
    """A random UUID as a string."""
    return str(uuid.uuid4())


def create_callset_id() -> str:
    """A fresh id for a map (PyWren's callset; a shardwren job id has its own form)."""
    return uuid_str()


def create_call_id() -> str:
    """A fresh id for one call."""
    return uuid_str()


def split_s3_url(s3_url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` -> ``("bucket", "a/b")``.

    Raises
    ------
    ValueError
        If the URL does not start with ``s3://`` or names no bucket.
    """
    if not isinstance(s3_url, str) or not s3_url.startswith("s3://"):
        raise ValueError(f"URL {s3_url!r} is not valid: expected s3://bucket/key")
    bucket, _, key = s3_url[5:].partition("/")
    if not bucket:
        raise ValueError(f"URL {s3_url!r} is not valid: it names no bucket")
    return bucket, key


def bytes_to_b64str(byte_data: bytes) -> str:
    """Bytes as an ASCII base64 string."""
    return base64.b64encode(byte_data).decode("ascii")


def b64str_to_bytes(str_data: str) -> bytes:
    """Inverse of :func:`bytes_to_b64str`."""
    return base64.b64decode(str_data.encode("ascii"))


def sdb_to_dict(item: dict) -> dict:
    """A SimpleDB item's attributes as a dict (kept for PyWren code that uses it)."""
    return {c["Name"]: c["Value"] for c in item["Attributes"]}
