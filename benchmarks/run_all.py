"""Run every benchmark (``make bench``); each prints a table and writes results/*.json.

Usage: python benchmarks/run_all.py [name ...]   (names: executor, matrix, knn, ...)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ALL = ["executor", "matrix", "knn", "pruned", "ann", "scale", "sklearn", "dask", "matmul", "lithops"]


def main(argv: list[str]) -> None:
    for name in argv or ALL:
        path = Path(__file__).parent / f"bench_{name}.py"
        if not path.exists():
            print(f"(no benchmark {name})")
            continue
        importlib.import_module(f"bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
