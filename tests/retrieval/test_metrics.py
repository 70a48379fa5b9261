"""Ranking metrics on hand-computed cases, TREC file round trips, and the randomisation test."""

from __future__ import annotations

import math

import pytest

from lmforge.retrieval import metrics
from lmforge.retrieval.collections import read_qrels, read_run, write_run


def test_metrics_by_hand():
    judged = {"a": 3, "b": 1, "c": 0, "d": 2}
    ranking = ["c", "a", "x", "b"]
    dcg = 0 / math.log2(2) + 3 / math.log2(3) + 0 + 1 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg(ranking, judged, 10) == pytest.approx(dcg / idcg)
    assert metrics.ndcg(["a", "d", "b"], judged, 10) == pytest.approx(1.0)
    assert metrics.recall(ranking, judged, 2) == pytest.approx(1 / 3)
    assert metrics.recall(ranking, judged, 100) == pytest.approx(2 / 3)
    assert metrics.mrr(ranking, judged) == pytest.approx(1 / 2)
    assert metrics.mrr(["c", "x"], judged) == 0.0
    assert metrics.average_precision(ranking, judged) == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_evaluate_orders_by_score_and_counts_missing_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}, "q3": {"z": 0}}  # q3 has nothing relevant: skipped
    run = {"q1": {"a": 0.2, "b": 0.9}}  # q2 absent: scores 0
    per_q = metrics.evaluate(run, qrels, ["mrr@10", "ndcg@10"])
    assert per_q["mrr@10"] == {"q1": 0.5, "q2": 0.0}
    assert metrics.mean(per_q)["mrr@10"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.evaluate(run, qrels, ["ndcg@7"])


def test_randomization_test():
    a = {str(i): 0.5 + 0.01 * (i % 3) for i in range(50)}
    assert metrics.randomization_test(a, a) == 1.0
    better = {q: v + 0.1 for q, v in a.items()}
    assert metrics.randomization_test(better, a) < 0.001
    noisy = {q: v + (0.05 if int(q) % 2 else -0.05) for q, v in a.items()}
    assert metrics.randomization_test(noisy, a) > 0.5


def test_trec_files_round_trip(tmp_path):
    run = {"1": {"d1": 2.5, "d2": 3.0}, "2": {"d9": 1.0}}
    write_run(run, tmp_path / "run.txt")
    assert (tmp_path / "run.txt").read_text().splitlines()[0] == "1 Q0 d2 1 3.000000 lmforge"
    assert read_run(tmp_path / "run.txt") == run
    (tmp_path / "qrels").write_text("1 0 d1 2\n1 0 d2 0\n\n2 0 d9 1\n")
    assert read_qrels(tmp_path / "qrels") == {"1": {"d1": 2, "d2": 0}, "2": {"d9": 1}}
    (tmp_path / "bad").write_text("1 0 d1 2\n1 0 d2\n")
    with pytest.raises(ValueError, match="bad:2"):
        read_qrels(tmp_path / "bad")
