"""Document ids: both indexes keep their documents as rows, and a map id → row to add and delete by id.

The checks live here once so that BM25 and the dense index refuse the same bad input the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def check_new_ids(known: Mapping[str, int], ids: Sequence[str]) -> None:
    """Raise if an id is already in the index or appears twice among the new ones."""
    seen = set(known)
    for i in ids:
        if i in seen:
            raise ValueError(f"duplicate document id {i!r}")
        seen.add(i)


def rows_without(known: Mapping[str, int], n_rows: int, ids: Iterable[str]) -> np.ndarray:
    """The rows (in order) that remain after deleting ``ids``; an unknown id is an error."""
    drop = set()
    for i in ids:
        if str(i) not in known:
            raise KeyError(f"no document with id {i!r} in the index")
        drop.add(known[str(i)])
    return np.array([r for r in range(n_rows) if r not in drop], dtype=np.int64)


def positions(ids: Sequence[str]) -> dict[str, int]:
    """id → row."""
    return {d: r for r, d in enumerate(ids)}
