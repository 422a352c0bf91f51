"""Block geometry as arithmetic: O(1) per block, whatever the size of the grid.

A matrix of ``shape`` cut into blocks of ``chunks`` has ``ceil(n / c)`` blocks
along each axis; block ``i`` covers rows ``i*c`` to ``min((i+1)*c, n)``. Nothing
here builds a list of blocks, so a 10^15 x 10^15 matrix costs what a 10 x 10 one does.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

from ..errors import ShapeMismatchError


def as_int(value: Any, what: str) -> int:
    """``value`` as an exact int: Python and numpy integers pass, anything else
    (floats such as 4.9 or 4.0, strings, bools) is a ``TypeError``, never truncated."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r} "
                        f"({type(value).__name__})") from None


def as_pair(values: Any, what: str, minimum: int) -> tuple[int, int]:
    """Two ints, each at least ``minimum``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(
            values, "__len__"):
        raise TypeError(f"{what} must be two integers, got {values!r}")
    values = tuple(values)
    if len(values) != 2:
        raise ShapeMismatchError(f"a ShardedMatrix is 2-D: {what} must be two integers, "
                                 f"got {values!r}")
    pair = (as_int(values[0], what), as_int(values[1], what))
    if min(pair) < minimum:
        raise ShapeMismatchError(f"{what} must be two integers >= {minimum}, got {pair}")
    return pair


def count(n: int, c: int) -> int:
    """Blocks of size ``c`` along an axis of size ``n`` (an empty axis has one, empty)."""
    return max(1, -(-n // c))


def span(index: int, n: int, c: int) -> tuple[int, int]:
    """Start and end of block ``index`` along an axis of size ``n``."""
    start = index * c
    return start, min(start + c, n)
