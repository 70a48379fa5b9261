"""Retrieval quality on Cranfield: BM25, dense, hybrid, reranked, and a contrastively tuned embedder.

Cranfield (1,400 abstracts, 225 queries, graded qrels from QRelsCorrectedforTRECeval, linear gains) with a
fixed split: odd query numbers train (the cross-encoder and the tuned embedder), even ones test. Every row
is scored on the test queries; the untrained methods also on all 225 (their anchors: bm25s Lucene nDCG@10
0.515 / R@100 0.736, sentence-transformers MiniLM 0.506 / 0.788, their RRF 0.554 / 0.793).

- bm25: Lucene, k1 1.5, b 0.75, Lucene's English stop words, no stemmer (the anchor's settings)
- dense: all-MiniLM-L6-v2 (our BERT), exact cosine top-k
- hybrid-rrf / hybrid-score: the two fused over their top 100 (RRF k=60; min-max score fusion, w=0.5)
- +ce: hybrid-score's top 30 reranked by a cross-encoder trained here from MiniLM's weights (listwise:
  each train query's 3 best-graded relevant passages (grade >= 2), each against 7 BM25-mined non-relevant
  ones; 192 tokens per pair)
- +llm: hybrid-score's top 20 reranked by SmolLM2-135M-Instruct's log p(yes) − log p(no)
  Each reranker gives two rows: its order alone, and its score min-max fused with the first stage's, the
  weight picked from 0, 0.1, …, 1 on the train queries (so the test queries never choose it)
- tuned dense: MiniLM fine-tuned with InfoNCE (in-batch + one BM25 hard negative per pair) on the train
  queries' relevant passages; and (--pseudo N) on pseudo-queries SmolLM2 writes for N passages

p: paired randomisation test on per-query nDCG@10 against the row named in the column.

    python bench/bench_retrieval.py                     # ~25 min on 2 cores
    python bench/bench_retrieval.py --skip-llm --epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model, load_tokenizer  # noqa: E402
from lmforge.retrieval import contrastive as C  # noqa: E402
from lmforge.retrieval import metrics  # noqa: E402
from lmforge.retrieval.bm25 import BM25  # noqa: E402
from lmforge.retrieval.collections import load_cranfield  # noqa: E402
from lmforge.retrieval.dense import DenseIndex  # noqa: E402
from lmforge.retrieval.fusion import rrf, score_fusion  # noqa: E402
from lmforge.retrieval.rerank import CrossEncoder, LLMReranker, train_cross_encoder  # noqa: E402


def progress(table: dict, name: str) -> None:
    """Print one row as soon as it is scored, so a long run shows its results as it goes."""
    m = metrics.mean(table[name]["test_pq"])
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: nDCG@10 {m['ndcg@10']:.4f} R@100 {m['recall@100']:.4f}",
        flush=True,
    )


def by_rank(hits: list) -> list:
    """Scores replaced by descending ranks, so the evaluator (which sorts by score) keeps this order: a
    reranked head (logits, log-odds) and the first stage's tail have scores on different scales."""
    return [(d, float(len(hits) - i)) for i, (d, _) in enumerate(hits)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ce-epochs", type=int, default=1)
    ap.add_argument(
        "--ce-per-query", type=int, default=3, help="training groups per train query (its best-graded)"
    )
    ap.add_argument(
        "--ce-max-length", type=int, default=192, help="cross-encoder tokens per (query, passage)"
    )
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--skip-rerank", action="store_true", help="no cross-encoder or LLM reranking rows")
    ap.add_argument("--skip-tune", action="store_true", help="no contrastive tuning rows")
    ap.add_argument(
        "--pseudo", type=int, default=0, help="also tune on pseudo-queries for this many passages"
    )
    ap.add_argument("--out", default="bench/out/retrieval.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(load_line("start"))
    c = load_cranfield(data_dir() / "retrieval" / "cranfield")
    ids = list(c.docs)
    texts = [c.docs[i] for i in ids]
    train_q = {q: t for q, t in c.queries.items() if int(q) % 2 == 1}
    test_q = {q: t for q, t in c.queries.items() if int(q) % 2 == 0}
    related = {q: {d for d, g in j.items() if g > 0} for q, j in c.qrels.items()}
    t0 = time.perf_counter()

    bm = BM25().index(texts, ids)
    enc = load_model("all-minilm-l6-v2")
    D = enc.encode(texts, progress=True).numpy()
    dense = DenseIndex(D.shape[1]).add(D, ids)

    def first_stage(queries: dict[str, str], index: DenseIndex, encoder) -> dict[str, dict[str, list]]:
        qids = list(queries)
        lex = bm.search_batch([queries[q] for q in qids], 100)
        den = index.search(encoder.encode([queries[q] for q in qids]).numpy(), 100)
        return {
            "bm25": dict(zip(qids, lex)),
            "dense": dict(zip(qids, den)),
            "hybrid-rrf": {q: rrf([a, b], top=100) for q, a, b in zip(qids, lex, den)},
            "hybrid-score": {q: score_fusion(a, b, 0.5, top=100) for q, a, b in zip(qids, lex, den)},
        }

    def score(run: dict[str, list], qids) -> dict[str, dict[str, float]]:
        return metrics.evaluate({q: dict(run[q]) for q in qids}, {q: c.qrels[q] for q in qids})

    table: dict[str, dict] = {}
    full = first_stage(c.queries, dense, enc)
    for name, run in full.items():
        table[name] = {"all": metrics.mean(score(run, list(c.queries))), "test_pq": score(run, list(test_q))}
    for name in full:
        progress(table, name)

    # cross-encoder, trained on the train queries
    groups, ce_train_s, weights = [], 0.0, {}
    rnd = np.random.default_rng(0)
    for qid, q in [] if args.skip_rerank else train_q.items():
        negs = [d for d, _ in bm.search(q, 40) if c.qrels[qid].get(d, 0) <= 0]
        best = sorted(c.qrels[qid].items(), key=lambda x: -x[1])[: args.ce_per_query]
        for d, g in best:
            if g >= 2 and d in c.docs and negs:
                pick = rnd.choice(len(negs), size=min(7, len(negs)), replace=False)
                groups.append((q, c.docs[d], [c.docs[negs[i]] for i in pick]))

    def reranked_rows(name: str, reranker, depth: int) -> None:
        """Two rows: the reranker's order alone, and its score fused with the first stage's (min-max,
        weight chosen on the train queries). Below the reranked depth the first stage's order stays."""
        first = full["hybrid-score"]
        rr = {q: reranker.rerank(c.queries[q], first[q][:depth], c.docs) for q in c.queries}

        def fused(w: float, qids) -> dict[str, list]:
            return {q: by_rank(score_fusion(first[q][:depth], rr[q], w) + first[q][depth:]) for q in qids}

        grid = [i / 10 for i in range(11)]
        w = max(grid, key=lambda w: metrics.mean(score(fused(w, train_q), list(train_q)))["ndcg@10"])
        weights[name] = w
        table[f"hybrid-score+{name} (alone)"] = {
            "test_pq": score({q: by_rank(rr[q] + first[q][depth:]) for q in test_q}, list(test_q))
        }
        table[f"hybrid-score+{name} (fused, w={w:.1f})"] = {"test_pq": score(fused(w, test_q), list(test_q))}
        progress(table, f"hybrid-score+{name} (alone)")
        progress(table, f"hybrid-score+{name} (fused, w={w:.1f})")

    if not args.skip_rerank:
        ce = CrossEncoder.from_folder(enc.source_dir, max_length=args.ce_max_length)
        tc = time.perf_counter()
        train_cross_encoder(ce, groups, epochs=args.ce_epochs, groups_per_step=4)
        ce_train_s = time.perf_counter() - tc
        reranked_rows("ce", ce, 30)

    if not args.skip_llm and not args.skip_rerank:
        llm = LLMReranker(load_model("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct"))
        reranked_rows("llm", llm, 20)

    # contrastive tuning on the train queries
    ex, tune_s = [], 0.0
    if not args.skip_tune:
        ex = C.pairs_from_qrels(train_q, c.docs, c.qrels, min_grade=2)
        ex = C.mine_hard_negatives(ex, bm, c.docs, c.qrels)
        tuned = load_model("all-minilm-l6-v2")
        tt = time.perf_counter()
        C.train_embedder(tuned, ex, epochs=args.epochs, batch_size=32, lr=2e-5, related=related)
        tune_s = time.perf_counter() - tt
        tuned_index = DenseIndex(D.shape[1]).add(tuned.encode(texts, progress=True).numpy(), ids)
        tuned_runs = first_stage(test_q, tuned_index, tuned)
        table["tuned dense"] = {"test_pq": score(tuned_runs["dense"], list(test_q))}
        table["tuned hybrid-score"] = {"test_pq": score(tuned_runs["hybrid-score"], list(test_q))}
        progress(table, "tuned dense")

    if args.pseudo:
        chat = load_model("smollm2-135m-instruct")
        pick = ids[: args.pseudo]
        pq = C.pseudo_queries(chat, [c.docs[d] for d in pick])
        pex = [C.Example(q, c.docs[d], None, f"p{d}", d) for d, q in zip(pick, pq) if q]
        pex = C.mine_hard_negatives(pex, bm, c.docs, {f"p{d}": {d: 1} for d in pick})
        ptuned = load_model("all-minilm-l6-v2")
        C.train_embedder(ptuned, pex, epochs=args.epochs, batch_size=32, lr=2e-5)
        pindex = DenseIndex(D.shape[1]).add(ptuned.encode(texts, progress=True).numpy(), ids)
        table["pseudo-query tuned dense"] = {
            "test_pq": score(first_stage(test_q, pindex, ptuned)["dense"], list(test_q))
        }
        for e in pex[:3]:
            print(f"pseudo-query for {e.pid}: {e.query!r}")

    base = table["dense"]["test_pq"]["ndcg@10"]
    best_single = max(("bm25", "dense"), key=lambda n: metrics.mean(table[n]["test_pq"])["ndcg@10"])
    rows = []
    for name, r in table.items():
        m = metrics.mean(r["test_pq"])
        a = r.get("all")
        p_dense = (
            metrics.randomization_test(r["test_pq"]["ndcg@10"], base) if name != "dense" else float("nan")
        )
        p_best = (
            metrics.randomization_test(r["test_pq"]["ndcg@10"], table[best_single]["test_pq"]["ndcg@10"])
            if name != best_single
            else float("nan")
        )
        rows.append(
            [
                name,
                f"{a['ndcg@10']:.4f}" if a else "",
                f"{a['recall@100']:.4f}" if a else "",
                f"{m['ndcg@10']:.4f}",
                f"{m['recall@100']:.4f}",
                f"{m['mrr@10']:.4f}",
                f"{p_dense:.4f}",
                *([f"{p_best:.4f}"] if best_single != "dense" else []),
            ]
        )
    print(
        md_table(
            [
                "method",
                "nDCG@10 (all 225)",
                "R@100 (all)",
                "nDCG@10 (test 113)",
                "R@100 (test)",
                "MRR@10 (test)",
                "p vs dense",
                *([f"p vs {best_single}"] if best_single != "dense" else []),
            ],
            rows,
        )
    )
    print(
        f"\ncross-encoder training {ce_train_s:.0f} s ({len(groups)} groups); embedder tuning {tune_s:.0f} s "
        f"({len(ex)} pairs); rerank fusion weights (chosen on train queries) {weights}; total {time.perf_counter() - t0:.0f} s"
    )
    print(load_line("end"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {n: {"all": r.get("all"), "test": metrics.mean(r["test_pq"])} for n, r in table.items()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
