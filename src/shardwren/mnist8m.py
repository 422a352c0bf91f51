"""MNIST-8M: MNIST's training digits plus deformed copies, generated block by block.

In the spirit of infiMNIST (Loosli, Canu and Bottou 2007), which grew MNIST's
60,000 training images to 8.1 million with small deformations: row ``r`` is a copy
of MNIST training image ``r % 60000``; copy 0 (the first 60,000 rows) is MNIST
itself, every later copy a random deformation of it — a small affine map (rotation
up to 12 degrees, scaling by up to 10%, shear, a shift of up to 2 pixels) plus an
elastic distortion (after Simard, Steinkraus and Platt 2003: a smooth random
displacement field of up to 1.5 pixels), resampled bilinearly and rounded to uint8
pixels.

Everything is deterministic: a block's pixels depend only on the seed and the block's
rows, so any block can be (re)generated alone, by any worker, in any order. The
matrix is written one block at a time by the executor's workers (never held
whole), with its labels in a second, one-column matrix.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidParameterError, KeyNotFoundError, NotAMatrixError

#: infiMNIST's size: MNIST's 60,000 training images and 135 deformations of each.
ROWS = 8_100_000
SIDE = 28


def _smooth_fields(rng: np.random.Generator, n: int, knots: int = 5) -> np.ndarray:
    """``(2, n, 28, 28)`` smooth random displacement fields in [-1, 1]: uniform noise on a
    coarse ``knots x knots`` grid, interpolated bilinearly (as cheap as it is smooth)."""
    grid = rng.uniform(-1, 1, (2, n, knots, knots))
    u = np.linspace(0, knots - 1, SIDE)
    U = np.maximum(0, 1 - np.abs(u[:, None] - np.arange(knots)[None, :]))  # (28, knots)
    return U @ grid @ U.T


def deform(images: np.ndarray, rng: np.random.Generator, max_rotate: float = 12.0,
           max_scale: float = 0.10, max_shear: float = 0.15, max_shift: float = 2.0,
           alpha: float = 1.5) -> np.ndarray:
    """Randomly deformed copies of ``images`` ``(n, 28, 28)`` (any dtype), as uint8.

    One vectorised bilinear resampling for the whole batch: per image an affine map
    about the centre plus an elastic displacement field of up to ``alpha`` pixels.
    The images are laid side by side in one zero-padded atlas, so the resampling is
    a single 2-D ``map_coordinates`` call.
    """
    from scipy.ndimage import map_coordinates

    n = len(images)
    theta = np.deg2rad(rng.uniform(-max_rotate, max_rotate, n))
    scale = 1 + rng.uniform(-max_scale, max_scale, n)
    shear = rng.uniform(-max_shear, max_shear, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    c, s = np.cos(theta) / scale, np.sin(theta) / scale
    # Output pixel p samples the input at centre + A (p - centre) - shift + field(p).
    A = np.empty((n, 2, 2))
    A[:, 0, 0], A[:, 0, 1] = c, -s + shear * c
    A[:, 1, 0], A[:, 1, 1] = s, c + shear * s
    centre = (SIDE - 1) / 2
    grid = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64).reshape(2, -1) - centre
    coords = (A @ grid).transpose(1, 0, 2).reshape(2, n, SIDE, SIDE)
    coords += centre - shift.T[:, :, None, None]
    coords += alpha * _smooth_fields(rng, n)
    # The atlas: image i at rows 30 i + 1 .. 30 i + 28, with a zero border that
    # clipped coordinates land on (so nothing bleeds between neighbours).
    pad = np.zeros((n, SIDE + 2, SIDE + 2), dtype=np.float32)
    pad[:, 1:-1, 1:-1] = images
    np.clip(coords + 1, 0, SIDE + 1, out=coords)
    coords[0] += (SIDE + 2) * np.arange(n)[:, None, None]
    out = map_coordinates(pad.reshape(n * (SIDE + 2), SIDE + 2), [coords[0], coords[1]],
                          order=1, mode="constant", cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def block_rows(base: np.ndarray, r0: int, r1: int, seed: int) -> np.ndarray:
    """Rows ``r0:r1`` of the set (uint8, ``(r1 - r0, 784)``) from MNIST's training images."""
    n0 = len(base)
    rows = np.arange(r0, r1)
    src = base[rows % n0].reshape(-1, SIDE, SIDE)
    out = src.reshape(len(rows), -1).astype(np.uint8, copy=True)
    copy = rows // n0
    deformed = np.flatnonzero(copy > 0)
    if len(deformed):
        rng = np.random.default_rng([seed, r0, r1])
        out[deformed] = deform(src[deformed], rng).reshape(len(deformed), -1)
    return out


#: The most blocks one generation writes (one task each).
MAX_BLOCKS = 10_000_000


def generate(n_rows: int = ROWS, key: str = "mnist8m", store=None, executor=None,
             block: int = 4000, seed: int = 0, data_dir=None, progress: bool | None = None,
             resume: bool = True):
    """Write the first ``n_rows`` rows of MNIST-8M and their labels into the store.

    Parameters
    ----------
    n_rows : int
        Rows to generate (default 8.1 million; any smaller count gives that prefix).
    key : str
        Matrices ``<key>/x`` (uint8, ``n_rows x 784``) and ``<key>/y`` (uint8 labels,
        ``n_rows x 1``) are written.
    store, executor
        Where to write, and whose workers generate the blocks (default: a local
        executor for the duration of the call).
    resume : bool
        Keep blocks already written by an interrupted run (blocks are written
        atomically, and generation is deterministic).

    Returns
    -------
    (ShardedMatrix, ShardedMatrix)
        The images and the labels.

    Raises
    ------
    StoreWriteError
        Before writing anything, when a local store lacks the space.
    """
    from . import datasets
    from .futures import get_all_results
    from .linalg._common import executor_for
    from .sources import check_free_space
    from .storage import open_store

    for name, value in (("n_rows", n_rows), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(f"{name} must be a whole number >= 1, got {value!r}")
    if -(-n_rows // block) > MAX_BLOCKS:  # one task per block: the map itself must fit
        raise InvalidParameterError(
            f"{n_rows} rows in blocks of {block} is {-(-n_rows // block)} blocks, more than "
            f"{MAX_BLOCKS}; use fewer rows or bigger blocks")
    X, y, _, _ = datasets.load_mnist(data_dir=data_dir)
    base = X.astype(np.uint8)
    labels = y.astype(np.uint8)
    with executor_for(executor) as ex:
        st = open_store(store) if store is not None else ex.store
        # Checked before anything is created: the whole set, less what a resume keeps.
        check_free_space(st, max(0, n_rows * (SIDE * SIDE + 1) - (_bytes_kept(st, key) if resume else 0)),
                         f"generating {n_rows} MNIST-8M rows")
        Xm = _open_or_create(f"{key}/x", (n_rows, SIDE * SIDE), (block, SIDE * SIDE), st)
        Ym = _open_or_create(f"{key}/y", (n_rows, 1), (block, 1), st)
        have = set(Xm.block_idxs_exist) if resume else set()
        todo = [i for i in range(Xm.grid[0]) if (i, 0) not in have]
        n0 = len(base)

        def write(i: int) -> int:
            r0, r1 = i * block, min(n_rows, (i + 1) * block)
            Xm.put_block(i, 0, block_rows(base, r0, r1, seed))
            Ym.put_block(i, 0, labels[np.arange(r0, r1) % n0][:, None])
            return r1 - r0

        get_all_results(ex.map(write, todo), progress=progress)
    return Xm, Ym


def _bytes_kept(store, key: str) -> int:
    """Bytes of blocks an interrupted run already wrote under ``key`` (0 if none)."""
    from .matrix import ShardedMatrix

    try:
        m = ShardedMatrix(f"{key}/x", store=store)
    except (KeyNotFoundError, NotAMatrixError):
        return 0
    return len(m.block_idxs_exist) * m.shard_sizes[0] * m.shard_sizes[1]


def _open_or_create(key, shape, blocks, store):
    from .matrix import ShardedMatrix

    dtype = np.uint8
    try:
        m = ShardedMatrix(key, store=store)
        if m.shape == shape and tuple(m.shard_sizes) == blocks and m.dtype == dtype:
            return m
    except FileNotFoundError:
        pass
    return ShardedMatrix(key, shape=shape, shard_sizes=blocks, dtype=dtype, store=store)
