"""The Zarr metadata of matrices and of the groups above them: the only module that
reads or writes ``zarr.json`` (and reads Zarr v2's ``.zarray``).

A matrix is a Zarr array; every prefix above it is a Zarr group (so
``xarray.open_zarr(store_url)`` finds the matrices as variables). Metadata is
created *exclusively* (:meth:`Store.put_if_absent`): of many processes opening or
creating the same matrix at once, one writes it and the others read it, and no
chunk is ever deleted to create it. A key may not reach into another node's tree.

A matrix created without a dtype is *pending*: its first writer fixes the dtype by
creating the claim key ``<key>/shardwren.dtype`` exclusively; a concurrent first
writer with another dtype reads the claim and casts (or is refused), so two dtypes
can never both be recorded and bytes are never reinterpreted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import (
    DTypeMismatchError,
    KeyConflictError,
    KeyIsPrefixError,
    KeyNotFoundError,
    MetadataError,
    NotAMatrixError,
)
from ..storage import Store

V3 = "zarr.json"
V2_ARRAY, V2_GROUP, V2_ATTRS = ".zarray", ".zgroup", ".zattrs"
#: Claim of the dtype of a pending matrix (see module docstring).
CLAIM = "shardwren.dtype"
#: shardwren's own attributes.
ATTR_COMPRESSOR, ATTR_FILL, ATTR_PENDING = ("shardwren_compressor", "shardwren_fill",
                                            "shardwren_dtype_pending")
#: Compressors of matrices shardwren creates: every chunk also carries a crc32c.
COMPRESSORS = ("none", "zstd", "lz4")
_PLACEHOLDER = np.dtype("float64")  # data_type recorded while a matrix is pending


def check_dtype(dtype: Any, what: str) -> np.dtype:
    """A numeric (bool, int, float, complex) dtype, else :class:`DTypeMismatchError`."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeMismatchError(f"{what}: {dtype!r} is not a dtype ({exc})") from None
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise DTypeMismatchError(
            f"{what}: dtype {dt} is not numeric; a ShardedMatrix holds bool, integer, float "
            "or complex numbers")
    return dt.newbyteorder("<") if dt.byteorder == ">" else dt


@dataclass(frozen=True)
class Layout:
    """What a matrix's metadata says, in the terms shardwren needs."""

    key: str
    zarr_format: int
    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: np.dtype | None
    """None while the matrix is pending."""
    fill: Any
    """Value of a block never written; None: such a block is an error."""
    codec: str
    """How shardwren decodes chunks itself: "none" (bytes + crc32c), "zstd", "blosc"
    (then + crc32c); "zarr": through zarr-python's codec pipeline (anything else)."""
    compressor: str
    """For display: shardwren's compressor name, or the codecs' names."""
    chunk_prefix: str
    separator: str
    native: bool
    """Created by shardwren (its attributes are present)."""
    fill_value: Any = 0
    """The fill value in the metadata (pads edge chunks)."""
    codec_config: dict = field(default_factory=dict)
    """Configuration of the compressing codec (zstd, blosc), for writing chunks."""

    def chunk_key(self, bi: int, bj: int) -> str:
        """Store key of chunk (bi, bj) (in the array's own orientation)."""
        s = self.separator
        return f"{self.key}/{self.chunk_prefix}{s}{bi}{s}{bj}" if self.chunk_prefix \
            else f"{self.key}/{bi}{s}{bj}"

    @property
    def chunk_listing(self) -> str:
        """The prefix under which every chunk key lies."""
        return f"{self.key}/{self.chunk_prefix}" if self.separator == "/" and self.chunk_prefix \
            else self.key

    def parse_chunk_key(self, key: str) -> tuple[int, int] | None:
        """(bi, bj) of a chunk key, None for any other key."""
        head = f"{self.key}/{self.chunk_prefix}{self.separator}" if self.chunk_prefix \
            else f"{self.key}/"
        if not key.startswith(head):
            return None
        parts = key[len(head):].split(self.separator)
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        return int(parts[0]), int(parts[1])


# -- reading -------------------------------------------------------------------------


def _json(store: Store, key: str, what: str) -> dict | None:
    try:
        raw = store.get(key)
    except KeyNotFoundError:
        return None
    except KeyIsPrefixError:
        raise MetadataError(f"{what}: {key} in {store.url} is a folder, not a metadata "
                            "file") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{what}: {key} in {store.url} is not valid JSON ({exc}); "
                            "restore it, or delete the matrix and write it again") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"{what}: {key} in {store.url} is not a JSON object")
    return doc


def _field(doc: dict, name: str, meta_key: str, what: str, url: str) -> Any:
    try:
        return doc[name]
    except KeyError:
        raise MetadataError(f"{what}: {meta_key} in {url} lacks the field {name!r}; restore "
                            "it, or delete the matrix and write it again") from None


def node_kind(store: Store, prefix: str) -> str | None:
    """"array", "group" or None (nothing there) for the node at ``prefix`` ("" = root)."""
    base = f"{prefix}/" if prefix else ""
    doc = _json(store, base + V3, f"node {prefix or '(store root)'!r}")
    if doc is not None:
        return "array" if doc.get("node_type") == "array" else "group"
    if store.exists(base + V2_ARRAY):
        return "array"
    if store.exists(base + V2_GROUP):
        return "group"
    return None


def _parse_fill(value: Any, dtype: np.dtype) -> Any:
    """A Zarr fill value (number, "NaN", "Infinity", hex string, [re, im]) as a scalar."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return complex(_parse_fill(value[0], np.dtype("float64")),
                       _parse_fill(value[1], np.dtype("float64")))
    if isinstance(value, str):
        named = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in named:
            return named[value]
        if value.startswith("0x"):
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype=dtype.newbyteorder(">"))[0].item()
        return value
    return value


def _v3_codec(codecs: Any, dtype: np.dtype | None) -> tuple[str, str, dict]:
    """(codec, compressor, compressor's configuration) of a v3 codec list: one of
    shardwren's own layouts, or "zarr" for anything else."""
    if not isinstance(codecs, list) or not all(isinstance(c, (dict, str)) for c in codecs):
        return "zarr", str(codecs), {}
    codecs = [{"name": c} if isinstance(c, str) else c for c in codecs]
    names = [c.get("name") for c in codecs]
    label = "+".join(str(n) for n in names)
    if len(codecs) < 2 or names[0] != "bytes" or names[-1] != "crc32c":
        return "zarr", label, {}
    endian = (codecs[0].get("configuration") or {}).get("endian")
    if endian not in (None, "little") or endian is None and dtype is not None \
            and dtype.itemsize > 1:
        return "zarr", label, {}
    middle = names[1:-1]
    config = dict(codecs[1].get("configuration") or {}) if middle else {}
    if not middle:
        return "none", "none", {}
    if middle == ["zstd"]:
        return "zstd", "zstd", config
    if middle == ["blosc"]:
        cname = config.get("cname", "blosc")
        return "blosc", "lz4" if cname == "lz4" else f"blosc-{cname}", config
    return "zarr", label, {}


def _numeric(dtype_spec: Any, what: str, meta_key: str, url: str) -> np.dtype:
    try:
        dt = np.dtype(dtype_spec)
    except (TypeError, ValueError):
        raise NotAMatrixError(f"{what}: {meta_key} in {url} has data type {dtype_spec!r}, "
                              "which is not numeric; a ShardedMatrix holds bool, integer, "
                              "float or complex numbers") from None
    if dt.kind not in "biufc" or dt.fields is not None:
        raise NotAMatrixError(f"{what}: {meta_key} in {url} has data type {dt}, which is not "
                              "numeric; a ShardedMatrix holds bool, integer, float or complex "
                              "numbers")
    return dt


def _pair(doc: dict, name: str, meta_key: str, what: str, url: str, found: str) -> tuple:
    value = _field(doc, name, meta_key, what, url)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise MetadataError(f"{what}: {meta_key} in {url} has {name} {value!r}, not a list of "
                            "integers")
    if len(value) != 2:
        raise NotAMatrixError(f"{what}: {url}/{meta_key.rsplit('/', 1)[0]} holds a "
                              f"{len(value)}-D Zarr array (shape {value}, {found}); a "
                              "ShardedMatrix is 2-D")
    return tuple(value)


def read(store: Store, key: str) -> Layout | None:
    """The layout of the matrix at ``key``; None if nothing is there.

    Raises
    ------
    MetadataError
        The metadata is not JSON or lacks a field (naming the matrix and the file).
    NotAMatrixError
        ``key`` is a group, or an array that is not 2-D and numeric.
    """
    what = f"matrix {key!r}"
    meta = f"{key}/{V3}"
    doc = _json(store, meta, what)
    if doc is not None:
        return _read_v3(store, key, doc, what, meta)
    doc = _json(store, f"{key}/{V2_ARRAY}", what)
    if doc is not None:
        return _read_v2(store, key, doc, what, f"{key}/{V2_ARRAY}")
    if store.exists(f"{key}/{V2_GROUP}"):
        raise NotAMatrixError(f"{store.url}/{key} is a Zarr v2 group, not an array: open one of "
                              "its arrays (ShardedMatrix('<key>/<name>'))")
    return None


def _read_v3(store: Store, key: str, doc: dict, what: str, meta: str) -> Layout:
    url = store.url
    node_type = _field(doc, "node_type", meta, what, url)
    if node_type == "group":
        raise NotAMatrixError(f"{url}/{key} is a Zarr group, not an array: open one of its "
                              "arrays (ShardedMatrix('<key>/<name>'))")
    if node_type != "array":
        raise MetadataError(f"{what}: {meta} in {url} has node_type {node_type!r}")
    attrs = doc.get("attributes") or {}
    native = ATTR_COMPRESSOR in attrs
    shape = _pair(doc, "shape", meta, what, url, "Zarr v3")
    dtype_spec = _field(doc, "data_type", meta, what, url)
    dtype = _numeric(dtype_spec, what, meta, url)
    grid = _field(doc, "chunk_grid", meta, what, url)
    try:
        if grid["name"] != "regular":
            raise NotAMatrixError(f"{what}: {meta} in {url} has a {grid['name']!r} chunk grid; "
                                  "shardwren reads regular grids")
        chunks = tuple(grid["configuration"]["chunk_shape"])
    except (KeyError, TypeError):
        raise MetadataError(f"{what}: {meta} in {url} has no chunk_grid.configuration."
                            "chunk_shape") from None
    encoding = _field(doc, "chunk_key_encoding", meta, what, url)
    try:
        enc_name = encoding["name"]
        separator = (encoding.get("configuration") or {}).get(
            "separator", "/" if enc_name == "default" else ".")
    except (KeyError, TypeError, AttributeError):
        raise MetadataError(f"{what}: {meta} in {url} has a malformed chunk_key_encoding "
                            f"{encoding!r}") from None
    codecs = _field(doc, "codecs", meta, what, url)
    fill_value = _parse_fill(_field(doc, "fill_value", meta, what, url), dtype)
    pending = bool(attrs.get(ATTR_PENDING))
    stored: np.dtype | None = _claimed(store, key) if pending else dtype
    codec, compressor, config = _v3_codec(codecs, stored)
    if native:
        compressor = attrs.get(ATTR_COMPRESSOR, compressor)
    fill = _parse_fill(attrs.get(ATTR_FILL), stored or _PLACEHOLDER) if native else fill_value
    return Layout(key=key, zarr_format=3, shape=shape, chunks=_chunks(chunks, meta, what, url),
                  dtype=stored, fill=fill, codec=codec, compressor=compressor,
                  chunk_prefix="c" if enc_name == "default" else "", separator=separator,
                  native=native, fill_value=fill_value, codec_config=config)


def _chunks(chunks: tuple, meta: str, what: str, url: str) -> tuple[int, int]:
    if len(chunks) != 2 or not all(isinstance(c, int) and c >= 1 for c in chunks):
        raise MetadataError(f"{what}: {meta} in {url} has chunk shape {list(chunks)}, not two "
                            "positive integers")
    return chunks[0], chunks[1]


def _read_v2(store: Store, key: str, doc: dict, what: str, meta: str) -> Layout:
    url = store.url
    shape = _pair(doc, "shape", meta, what, url, "Zarr v2")
    chunks = _chunks(tuple(_field(doc, "chunks", meta, what, url)), meta, what, url)
    dtype = _numeric(_field(doc, "dtype", meta, what, url), what, meta, url)
    fill_value = _parse_fill(_field(doc, "fill_value", meta, what, url), dtype)
    compressor = _field(doc, "compressor", meta, what, url)
    name = compressor.get("id", "?") if isinstance(compressor, dict) else "none"
    # zarr-python reads a chunk never written of a v2 array without fill value as zeros
    fill = 0 if fill_value is None else fill_value
    return Layout(key=key, zarr_format=2, shape=shape, chunks=chunks,
                  dtype=dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype,
                  fill=fill, codec="zarr", compressor=f"zarr v2 {name}", chunk_prefix="",
                  separator=doc.get("dimension_separator") or ".", native=False,
                  fill_value=fill)


def _claimed(store: Store, key: str) -> np.dtype | None:
    doc = _json(store, f"{key}/{CLAIM}", f"matrix {key!r}")
    if doc is None:
        return None
    try:
        return np.dtype(doc["dtype"])
    except (KeyError, TypeError):
        raise MetadataError(f"matrix {key!r}: {key}/{CLAIM} in {store.url} names no dtype; "
                            "delete the matrix and write it again") from None


# -- writing -------------------------------------------------------------------------


def _fill_json(fill: Any, dtype: np.dtype) -> Any:
    fill = 0 if fill is None else fill
    if dtype.kind == "c":
        c = complex(fill)
        return [_float_json(c.real), _float_json(c.imag)]
    if dtype.kind == "b":
        return bool(fill)
    if dtype.kind in "iu":
        return int(fill)
    return _float_json(float(fill))


def fill_attr(fill: Any) -> Any:
    """A fill value as JSON, whatever the dtype it will meet (None stays None)."""
    if fill is None:
        return None
    if isinstance(fill, np.generic):
        fill = fill.item()
    if isinstance(fill, bool):
        return fill
    if isinstance(fill, int):
        return fill
    if isinstance(fill, complex):
        return [_float_json(fill.real), _float_json(fill.imag)]
    return _float_json(float(fill))


def fits(fill: Any, dtype: np.dtype) -> bool:
    """Whether ``fill`` is a value of ``dtype`` (no truncation, no wrap-around)."""
    if fill is None:
        return True
    try:
        with np.errstate(all="ignore"):
            cast = np.array(fill).astype(dtype)
        return bool(np.array_equal(cast, np.array(fill), equal_nan=dtype.kind in "fc"))
    except (TypeError, ValueError, OverflowError):
        return False


def _float_json(x: float) -> Any:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _codecs_json(compressor: str, dtype: np.dtype) -> list:
    out: list = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if compressor == "zstd":
        out.append({"name": "zstd", "configuration": {"level": 1, "checksum": False}})
    elif compressor == "lz4":
        # shuffle works on elements: typesize must be the dtype's (4 for float32)
        out.append({"name": "blosc", "configuration": {
            "typesize": dtype.itemsize, "cname": "lz4", "clevel": 1, "shuffle": "shuffle",
            "blocksize": 0}})
    elif compressor != "none":
        raise ValueError(f"unknown compressor {compressor!r}; choose one of {COMPRESSORS}")
    out.append({"name": "crc32c"})
    return out


def _array_doc(shape, chunks, dtype: np.dtype | None, fill: Any, compressor: str,
               dims: tuple[str, str], pending: bool) -> dict:
    dt = dtype if dtype is not None else _PLACEHOLDER
    attrs: dict[str, Any] = {ATTR_COMPRESSOR: compressor, ATTR_FILL: fill_attr(fill)}
    if pending:
        attrs[ATTR_PENDING] = True
    return {
        "zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": dt.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_json(fill, dt), "codecs": _codecs_json(compressor, dt),
        "attributes": attrs, "dimension_names": list(dims), "storage_transformers": [],
    }


def _encode(doc: dict) -> bytes:
    return json.dumps(doc, indent=2).encode()


def default_dims(key: str) -> tuple[str, str]:
    """Dimension names: ``<name>_row``, ``<name>_col`` (unique per matrix, so xarray
    can hold matrices of different shapes in one dataset)."""
    leaf = key.rsplit("/", 1)[-1]
    return f"{leaf}_row", f"{leaf}_col"


def check_tree(store: Store, key: str) -> None:
    """Refuse a new matrix at ``key`` that would reach into another node's tree:
    an ancestor that is an array (``"X/c/1"`` inside matrix ``"X"``), or keys already
    under ``key`` with no metadata of its own (``"par"`` over ``"par/child"``, or
    the blocks of a matrix whose metadata is gone)."""
    parts = key.split("/")
    for n in range(len(parts)):
        prefix = "/".join(parts[:n])
        if node_kind(store, prefix) == "array":
            where = f"matrix {prefix!r}" if prefix else "the store root (an array)"
            raise KeyConflictError(
                f"cannot create matrix {key!r} in {store.url}: it would lie inside the tree of "
                f"{where} and could overwrite its blocks; pick a key outside it")
    inside = store.list(key)
    if f"{key}/{V3}" in inside:
        return  # created meanwhile by a concurrent caller: its exclusive write decides
    if inside:
        nested = [k for k in inside if k.endswith("/" + V3) or k.endswith("/" + V2_ARRAY)]
        what = (f"other Zarr nodes ({nested[0].rsplit('/', 1)[0]!r}, ...)" if nested else
                f"{len(inside)} keys with no metadata (e.g. {inside[0]!r}: blocks of a matrix "
                "whose zarr.json is gone?)")
        raise KeyConflictError(
            f"cannot create matrix {key!r} in {store.url}: the key already holds {what}; "
            "nothing was changed. Pick another key, or delete what is there first "
            f"(store.delete({key!r}))")


def drop_empty_group(store: Store, key: str) -> None:
    """Make room for a matrix at ``key`` where only an empty group is (one left
    behind when the matrices under it were deleted); refuse a group with members."""
    inside = store.list(key)
    if inside != [f"{key}/{V3}"]:
        members = sorted({k[len(key) + 1:].split("/", 1)[0] for k in inside} - {V3})
        raise KeyConflictError(
            f"cannot create matrix {key!r} in {store.url}: the key is a Zarr group holding "
            f"{', '.join(repr(f'{key}/{m}') for m in members[:3])}"
            f"{', ...' if len(members) > 3 else ''}; pick another key")
    store.delete(f"{key}/{V3}", missing_ok=True)


def ensure_groups(store: Store, key: str) -> None:
    """Write a group ``zarr.json`` at the store root and each prefix above ``key``
    where none is (exclusively: never replacing one)."""
    parts = key.split("/")
    doc = _encode({"zarr_format": 3, "node_type": "group", "attributes": {}})
    for n in range(len(parts)):
        prefix = "/".join(parts[:n])
        meta = f"{prefix}/{V3}" if prefix else V3
        if not store.put_if_absent(meta, doc) and node_kind(store, prefix) == "array":
            raise KeyConflictError(f"cannot create matrix {key!r} in {store.url}: "
                                   f"{prefix or 'the store root'!r} became an array meanwhile")


def create(store: Store, key: str, shape: tuple[int, int], chunks: tuple[int, int],
           dtype: np.dtype | None, fill: Any, compressor: str,
           dims: tuple[str, str] | None) -> bool:
    """Create the matrix's metadata if no metadata is at ``key``; True if this call did.

    The caller checked the tree (:func:`check_tree`); a concurrent creator may still
    win the exclusive write, and then this returns False and the caller reads its layout.
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}; choose one of {COMPRESSORS}")
    ensure_groups(store, key)
    doc = _array_doc(shape, chunks, dtype, fill, compressor, dims or default_dims(key),
                     pending=dtype is None)
    return store.put_if_absent(f"{key}/{V3}", _encode(doc))


def fix_dtype(store: Store, layout: Layout, dtype: np.dtype) -> Layout:
    """Fix the dtype of a pending matrix to ``dtype``, unless a concurrent writer fixed
    it first: the returned layout carries the dtype that won."""
    key = layout.key
    store.put_if_absent(f"{key}/{CLAIM}", json.dumps({"dtype": dtype.str}).encode())
    won = _claimed(store, key)
    if won is None:
        raise MetadataError(f"matrix {key!r}: its dtype claim {key}/{CLAIM} in {store.url} "
                            "vanished while being read (the matrix was deleted meanwhile?)")
    # Every writer then records the winner in zarr.json (the same bytes from each), so
    # zarr, dask and xarray see the true dtype; readers of shardwren trust the claim.
    doc = _json(store, f"{key}/{V3}", f"matrix {key!r}")
    if doc is not None and doc.get("attributes", {}).get(ATTR_PENDING):
        attrs = dict(doc["attributes"])
        attrs.pop(ATTR_PENDING)
        doc.update(data_type=won.name, fill_value=_fill_json(layout.fill, won),
                   codecs=_codecs_json(layout.compressor, won), attributes=attrs)
        store.put(f"{key}/{V3}", _encode(doc))
    return replace(layout, dtype=won, fill_value=_parse_fill(_fill_json(layout.fill, won), won))


def own_keys(store: Store, layout: Layout) -> tuple[list[str], set[str]]:
    """Every key of the matrix itself, and the prefixes of other nodes created inside
    its tree (whose keys are not the matrix's)."""
    found = store.list(layout.key)
    nested = {k.rsplit("/", 1)[0] for k in found
              if k != f"{layout.key}/{V3}" and k.endswith(("/" + V3, "/" + V2_ARRAY, "/" + V2_GROUP))}
    return [k for k in found if not any(k.startswith(p + "/") for p in nested)], nested


def delete(store: Store, layout: Layout) -> None:
    """Remove the matrix: its chunks and claim first, its metadata last, so that an
    interrupted delete leaves a matrix with fewer blocks, never blocks without metadata.
    Other nodes inside its tree are left alone."""
    keys, nested = own_keys(store, layout)
    meta = {f"{layout.key}/{name}" for name in (V3, V2_ARRAY, V2_ATTRS)}
    chunks = layout.chunk_listing
    if chunks != layout.key and not any(p == chunks or p.startswith(chunks + "/") for p in nested):
        store.delete(chunks, missing_ok=True)  # one recursive delete: bulk on S3
        keys = [k for k in keys if not k.startswith(chunks + "/")]
    for k in [k for k in keys if k not in meta] + [k for k in keys if k in meta]:
        store.delete(k, missing_ok=True)
    if not nested:  # nothing else lives in its tree: drop the (now empty) folders too
        store.delete(layout.key, missing_ok=True)
