"""Top-k selection over score matrices, shared by every retriever (BM25, dense, fusion).

Sorting all N scores to keep k costs O(N log N); ``np.argpartition`` finds the k largest in O(N) and only
those k get sorted. Ties are broken by the lower document index, so a ranking is deterministic.
"""

from __future__ import annotations

import numpy as np


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of ``scores`` (nq, N): indices (nq, k) and scores (nq, k), best first."""
    scores = np.atleast_2d(scores)
    n = scores.shape[1]
    k = min(int(k), n)
    if k <= 0:
        empty = np.empty((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(scores.dtype)
    if k < n:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (nq, k) the k best, unordered
    else:
        idx = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=-1)  # by score descending, then index ascending
    idx = np.take_along_axis(idx, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)
