"""Ranking metrics from graded judgments, per query and mean, as trec_eval computes them.

- nDCG@k (Järvelin & Kekäläinen, 2002): DCG = Σ_{i≤k} gain_i / log2(i + 1) with linear gains (the grade),
  divided by the DCG of the ideal ordering of all judged documents — 1.0 is a perfect top k.
- Recall@k: the share of relevant documents (grade > 0) found in the top k.
- MRR@k: 1 / rank of the first relevant document (0 if none in the top k).
- MAP: the mean over relevant documents of the precision at each one's rank (unretrieved ones count 0).

Two systems are compared with a paired randomisation test (Smucker, Allan & Carterette, CIKM 2007): under
the null hypothesis the two runs are exchangeable per query, so swap each query's pair of scores at random
many times and count how often the mean difference is at least as large as the observed one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranked(docs: Mapping[str, float]) -> list[str]:
    """Document ids by descending score; ties by descending id, which is trec_eval's order."""
    return [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def ndcg(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    gains = [max(judged.get(d, 0), 0) for d in ranking[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranking: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float:
    rel = {d for d, g in judged.items() if g > 0}
    return len(rel.intersection(ranking[:k])) / len(rel) if rel else 0.0


def mrr(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def average_precision(ranking: Sequence[str], judged: Mapping[str, int], k: int = 1000) -> float:
    n_rel = sum(1 for g in judged.values() if g > 0)
    hits, total = 0, 0.0
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel if n_rel else 0.0


METRICS = {
    "ndcg@10": lambda r, j: ndcg(r, j, 10),
    "recall@100": lambda r, j: recall(r, j, 100),
    "recall@10": lambda r, j: recall(r, j, 10),
    "mrr@10": lambda r, j: mrr(r, j, 10),
    "map": lambda r, j: average_precision(r, j, 1000),
}


def evaluate(
    run: Run,
    qrels: Qrels,
    metrics: Sequence[str] = ("ndcg@10", "recall@100", "mrr@10", "map"),
) -> dict[str, dict[str, float]]:
    """Per-query scores ``{metric: {qid: value}}`` over every judged query (a query the run misses scores 0)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    out: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for qid, judged in qrels.items():
        if not any(g > 0 for g in judged.values()):
            continue  # trec_eval skips queries without a relevant document
        r = ranked(run.get(qid, {}))
        for m in metrics:
            out[m][qid] = METRICS[m](r, judged)
    return out


def mean(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query.items()}


def randomization_test(
    a: Mapping[str, float], b: Mapping[str, float], trials: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value that runs a and b (per-query scores over the same queries) differ in mean."""
    qids = sorted(set(a) & set(b))
    if not qids:
        raise ValueError("the two runs share no query")
    d = np.array([a[q] - b[q] for q in qids])  # (Q,)
    observed = abs(d.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(trials, len(d)))  # swap a query's pair
    null = np.abs((signs * d).mean(axis=1))
    return float((np.sum(null >= observed - 1e-12) + 1) / (trials + 1))
