"""Retrieval speed against the anchors, side by side in one process.

1. BM25 on Cranfield (1,400 abstracts, 225 queries; Lucene, k1 1.5, b 0.75, English stop words):
   index time and queries/s of lmforge, bm25s (numpy backend) and rank-bm25 (BM25Okapi). Two query
   timings: end to end from the query strings (analysis + scoring + top-10), and scoring + top-10 from
   tokens the library already has (bm25s's own measure). Rankings: whether lmforge's top-10 scores equal
   bm25s's for every query. Medians of --repeats runs.
2. Dense encoding: Cranfield abstracts/s, all-MiniLM-L6-v2, batch 32, ours vs sentence-transformers.
3. ANN: --n synthetic 384-d unit vectors (a mixture of 1,000 Gaussian clusters, so neighbours mean
   something), 1,000 queries from the same mixture: exact search vs faiss IVF (and HNSW with --hnsw) —
   build time, queries/s, recall@10 against exact, memory.

    python bench/bench_retrieval_speed.py              # ~10 min on 2 cores (1M vectors)
    python bench/bench_retrieval_speed.py --n 200000 --hnsw
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table, peak_rss_mb  # noqa: E402

from lmforge.retrieval.bm25 import BM25  # noqa: E402
from lmforge.retrieval.collections import load_cranfield  # noqa: E402
from lmforge.retrieval.dense import DenseIndex  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_bm25(repeats: int) -> None:
    import bm25s
    from rank_bm25 import BM25Okapi

    c = load_cranfield(data_dir() / "retrieval" / "cranfield")
    ids = list(c.docs)
    texts = [c.docs[i] for i in ids]
    queries = list(c.queries.values())
    rows = []

    t_idx, ours = timed(lambda: BM25().index(texts, ids), repeats)
    t_q, hits = timed(lambda: ours.search_batch(queries, 10), repeats)
    qm = ours.query_matrix(queries)
    t_s, _ = timed(lambda: _topk_from_matrix(ours, qm), repeats)
    rows.append(["lmforge", t_idx * 1000, len(queries) / t_q, len(queries) / t_s])

    def bm25s_index():
        r = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
        r.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return r

    t_idx2, ref = timed(bm25s_index, repeats)

    def bm25s_query():
        return ref.retrieve(
            bm25s.tokenize(queries, stopwords="en", show_progress=False), k=10, show_progress=False
        )

    t_q2, (_, ref_scores) = timed(bm25s_query, repeats)
    qtok = bm25s.tokenize(queries, stopwords="en", show_progress=False)
    t_s2, _ = timed(lambda: ref.retrieve(qtok, k=10, show_progress=False), repeats)
    rows.append(["bm25s", t_idx2 * 1000, len(queries) / t_q2, len(queries) / t_s2])

    an = ours.analyzer
    t_idx3, okapi = timed(lambda: BM25Okapi([an(t) for t in texts], k1=1.5, b=0.75), max(1, repeats // 2))
    qterms = [an(q) for q in queries]
    t_q3, _ = timed(lambda: [np.argsort(-okapi.get_scores(an(q)))[:10] for q in queries], 1)
    t_s3, _ = timed(lambda: [np.argsort(-okapi.get_scores(q))[:10] for q in qterms], 1)
    rows.append(["rank-bm25 (Okapi)", t_idx3 * 1000, len(queries) / t_q3, len(queries) / t_s3])

    ours_scores = np.array([[s for _, s in h] + [0.0] * (10 - len(h)) for h in hits])
    same = np.allclose(ours_scores, np.where(ref_scores > 0, ref_scores, 0.0), rtol=1e-5, atol=1e-6)
    base = rows[1]
    table = [
        [
            r[0],
            f"{r[1]:.0f}",
            f"{r[2]:,.0f}",
            f"{r[2] / base[2]:.2f}x",
            f"{r[3]:,.0f}",
            f"{r[3] / base[3]:.2f}x",
        ]
        for r in rows
    ]
    print("\n### BM25 on Cranfield\n")
    print(
        md_table(
            [
                "engine",
                "index ms",
                "queries/s (from text)",
                "vs bm25s",
                "queries/s (from tokens)",
                "vs bm25s",
            ],
            table,
        )
    )
    print(
        f"\ntop-10 scores equal to bm25s's for all {len(queries)} queries: {same} "
        "(rank-bm25's Okapi idf differs by design: its scores are not comparable)"
    )


def _topk_from_matrix(index: BM25, q) -> None:
    from lmforge.retrieval.ranking import topk_rows

    topk_rows(np.where((s := index.score_matrix(q)) > 0, s, -np.inf), 10)


def bench_encode(repeats: int = 3) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from lmforge import load_model
    from lmforge.registry import resolve

    c = load_cranfield(data_dir() / "retrieval" / "cranfield")
    texts = list(c.docs.values())
    ours = load_model("all-minilm-l6-v2")
    ref = SentenceTransformer(str(resolve("all-minilm-l6-v2")), device="cpu")
    ours.encode(texts[:64])
    ref.encode(texts[:64])
    # interleaved passes, median of each: the two see the same machine state (these machines are noisy)
    times: dict[str, list[float]] = {"lmforge": [], "sentence-transformers": []}
    for _ in range(repeats):
        t = time.perf_counter()
        a = ours.encode(texts, batch_size=32).numpy()
        times["lmforge"].append(time.perf_counter() - t)
        t = time.perf_counter()
        b = ref.encode(texts, batch_size=32, normalize_embeddings=True)
        times["sentence-transformers"].append(time.perf_counter() - t)
    rows = [[n, len(texts) / statistics.median(v)] for n, v in times.items()]
    cos = float((a * b).sum(1).min())
    print(
        f"\n### Dense encoding, {len(texts)} Cranfield abstracts, batch 32, {torch.get_num_threads()} threads, median of {repeats} interleaved passes\n"
    )
    print(
        md_table(
            ["encoder", "texts/s", "vs sentence-transformers"],
            [[n, f"{v:.1f}", f"{v / rows[1][1]:.2f}x"] for n, v in rows],
        )
    )
    print(f"\nlowest cosine between the two embeddings of a text: {cos:.6f}")


def bench_ann(n: int, hnsw: bool) -> None:
    rng = np.random.default_rng(0)
    d, n_q = 384, 1000
    centers = rng.normal(size=(1000, d)).astype(np.float32)

    def sample(m: int) -> np.ndarray:
        x = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.normal(size=(m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = np.concatenate([sample(min(100_000, n - s)) for s in range(0, n, 100_000)])
    q = sample(n_q)
    ids = [str(i) for i in range(n)]
    rss0 = peak_rss_mb()
    exact = DenseIndex(d, kind="exact").add(x, ids)
    t = time.perf_counter()
    truth = exact.search(q, 10)
    exact_qps = n_q / (time.perf_counter() - t)
    truth_sets = [{i for i, _ in h} for h in truth]
    rows = [["exact (matmul + top-k)", "-", f"{exact_qps:,.0f}", "1.000", f"{x.nbytes / 2**20:,.0f}"]]
    kinds = [("ivf", "nprobe", [8, 16, 32, 64])] + (
        [("hnsw", "efSearch", [32, 64, 128, 256])] if hnsw else []
    )
    for kind, knob, values in kinds:
        index = DenseIndex(d, kind=kind).add(x, ids)
        t = time.perf_counter()
        index.build_ann(kind)
        build = time.perf_counter() - t
        mem = (x.nbytes + _faiss_bytes(index._ann)) / 2**20
        for v in values:
            if kind == "ivf":
                index.nprobe = v
            else:
                index.ef_search = v
            t = time.perf_counter()
            got = index.search(q, 10)
            qps = n_q / (time.perf_counter() - t)
            rec = np.mean([len({i for i, _ in g} & s) / 10 for g, s in zip(got, truth_sets)])
            rows.append([f"{kind} ({knob} {v})", f"{build:.0f}", f"{qps:,.0f}", f"{rec:.3f}", f"{mem:,.0f}"])
    print(f"\n### ANN, {n:,} synthetic 384-d vectors, {n_q} queries, recall@10 vs exact\n")
    print(md_table(["index", "build s", "queries/s", "recall@10", "memory MB (vectors + index)"], rows))
    print(f"\npeak RSS of the process: {peak_rss_mb():,.0f} MB (before the vectors: {rss0:,.0f} MB)")


def _faiss_bytes(ann) -> int:
    import faiss

    return len(faiss.serialize_index(ann))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for the ANN benchmark (0: skip)")
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW (slow to build on 2 cores)")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-bm25", action="store_true")
    args = ap.parse_args()
    print(load_line("start"))
    if not args.skip_bm25:
        bench_bm25(args.repeats)
    if not args.skip_encode:
        bench_encode(max(1, min(args.repeats, 3)))
    if args.n:
        bench_ann(args.n, args.hnsw)
    print(load_line("end"))


if __name__ == "__main__":
    main()
