"""Chunk bytes of shardwren's own layouts, encoded and verified without zarr's pipeline.

A chunk is the full block (edge blocks padded with the fill value) as little-endian
bytes, optionally compressed (zstd, or blosc with shuffle over the dtype's element
size), then its crc32c appended: exactly what zarr-python writes and reads for the
codecs ``bytes [+ zstd | blosc] + crc32c``. Doing it here saves zarr's copies (a
large block was copied twice on the way in) and gives one verdict for every read
path: a chunk is sound when its checksum matches *and* it decodes to exactly the
block's size; anything else (flipped bits, appended or missing bytes, a chunk of
another layout) is corrupt.
"""

from __future__ import annotations

import crc32c
import numpy as np

# zarr sets the same: blosc's own threads fight the executor's processes for cores.
_BLOSC_THREADS = False


class Corrupt(Exception):
    """A chunk failed verification; the message says how."""


def _zstd():
    from numcodecs import Zstd

    return Zstd


def _blosc():
    import numcodecs.blosc

    numcodecs.blosc.use_threads = _BLOSC_THREADS
    return numcodecs.blosc.Blosc


def encode(full: np.ndarray, codec: str, config: dict) -> list:
    """The chunk of ``full`` (C-contiguous, little-endian, the whole chunk) as buffers
    to store one after the other."""
    data = full.reshape(-1).view(np.uint8).data  # any dtype, complex included
    if codec == "none":
        payload = data
    elif codec == "zstd":
        payload = _zstd()(level=config.get("level", 1),
                          checksum=config.get("checksum", False)).encode(data)
    elif codec == "blosc":
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[config.get("shuffle", "shuffle")]
        payload = _blosc()(cname=config.get("cname", "lz4"), clevel=config.get("clevel", 1),
                           shuffle=shuffle, blocksize=config.get("blocksize", 0),
                           typesize=full.dtype.itemsize).encode(data)
    else:
        raise ValueError(f"shardwren does not encode codec {codec!r} itself")
    return [payload, crc32c.crc32c(payload).to_bytes(4, "little")]


def _zstd_content_size(payload: np.ndarray) -> int | None:
    """Frame_Content_Size from a zstd frame header (RFC 8878, 3.1.1.1), None if absent."""
    if payload.size < 6 or bytes(payload[:4]) != b"\x28\xb5\x2f\xfd":
        raise Corrupt("it is not a zstd frame")
    fhd = int(payload[4])
    single = (fhd >> 5) & 1
    fcs_size = {0: single, 1: 2, 2: 4, 3: 8}[fhd >> 6]
    if fcs_size == 0:
        return None
    at = 5 + (0 if single else 1) + {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3]
    if payload.size < at + fcs_size:
        raise Corrupt("its zstd frame header is cut short")
    value = int.from_bytes(bytes(payload[at:at + fcs_size]), "little")
    return value + 256 if fcs_size == 2 else value


def decode(buf: np.ndarray, codec: str, nbytes: int, writable: bool) -> np.ndarray:
    """Verify a stored chunk and return its ``nbytes`` decoded bytes (uint8).

    Uncompressed chunks come back as a view of ``buf`` (no copy); ``writable`` asks
    for memory the caller may change (a copy if ``buf`` is read-only).
    """
    if buf.size < 4:
        raise Corrupt(f"it holds {buf.size} bytes, too few for its checksum")
    payload = buf[:-4]
    if codec == "none" and payload.size != nbytes:
        raise Corrupt(f"it holds {payload.size} bytes of data where the block has {nbytes}")
    if crc32c.crc32c(payload.data) != int.from_bytes(bytes(buf[-4:]), "little"):
        raise Corrupt("its crc32c checksum does not match")
    if codec == "none":
        return payload.copy() if writable and not payload.flags.writeable else payload
    out = np.empty(nbytes, dtype=np.uint8)
    try:
        if codec == "zstd":
            size = _zstd_content_size(payload)
            if size is None:
                raw = _zstd()().decode(payload)
                if len(raw) != nbytes:
                    raise Corrupt(f"it decompresses to {len(raw)} bytes where the block has "
                                  f"{nbytes}")
                out[:] = np.frombuffer(raw, dtype=np.uint8)
                return out
            if size != nbytes:
                raise Corrupt(f"it decompresses to {size} bytes where the block has {nbytes}")
            _zstd()().decode(payload, out=out)
        elif codec == "blosc":
            size = int.from_bytes(bytes(payload[4:8]), "little") if payload.size >= 16 else -1
            if size != nbytes:
                raise Corrupt(f"it decompresses to {size} bytes where the block has {nbytes}")
            _blosc()().decode(payload, out=out)
        else:
            raise ValueError(f"shardwren does not decode codec {codec!r} itself")
    except Corrupt:
        raise
    except (RuntimeError, ValueError) as exc:
        raise Corrupt(f"it does not decompress ({exc})") from None
    return out
