"""Hybrid search: fuse the rankings of a lexical and a dense retriever into one.

BM25 finds exact terms (names, numbers, rare words); a dense encoder finds paraphrases. Their errors differ,
so a fused ranking beats either. Two ways to fuse, both over each retriever's top k:

- reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): score(d) = Σ_r 1 / (k + rank_r(d)) with
  k = 60 — ranks only, so the retrievers' incomparable score scales never meet;
- normalised score fusion (convex combination, Bruch et al., 2023): min-max each run's scores to [0, 1]
  per query, then w·dense + (1 − w)·lexical; a document a run did not return gets that run's 0.
"""

from __future__ import annotations

from collections.abc import Sequence

Hits = list[tuple[str, float]]


def rrf(runs: Sequence[Hits], k: int = 60, top: int | None = None) -> Hits:
    """Reciprocal-rank fusion of several ranked hit lists (best first)."""
    fused: dict[str, float] = {}
    for hits in runs:
        for rank, (doc, _) in enumerate(hits, 1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    out = sorted(fused.items(), key=lambda x: (-x[1], x[0]))
    return out[:top] if top else out


def _minmax(hits: Hits) -> dict[str, float]:
    if not hits:
        return {}
    lo, hi = min(s for _, s in hits), max(s for _, s in hits)
    span = hi - lo
    return {d: (s - lo) / span if span > 0 else 1.0 for d, s in hits}


def score_fusion(lexical: Hits, dense: Hits, weight: float = 0.5, top: int | None = None) -> Hits:
    """weight·minmax(dense) + (1 − weight)·minmax(lexical), per query."""
    if not 0 <= weight <= 1:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    a, b = _minmax(lexical), _minmax(dense)
    fused = {d: (1 - weight) * a.get(d, 0.0) + weight * b.get(d, 0.0) for d in a.keys() | b.keys()}
    out = sorted(fused.items(), key=lambda x: (-x[1], x[0]))
    return out[:top] if top else out
