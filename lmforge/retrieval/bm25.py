"""BM25: the probabilistic relevance score that lexical search engines rank by.

For a query q and a document d of length |d| (in terms) in a corpus of N documents with mean length L:

    score(q, d) = Σ_{t ∈ q}  idf(t) · tfc(tf(t, d), |d|)

tf saturates (a term's tenth occurrence adds little: k1 sets how fast) and is normalised by document length
(b = 0 ignores length, b = 1 divides it out fully). Robertson & Zaragoza, "The Probabilistic Relevance
Framework: BM25 and Beyond" (2009). The variants differ in idf and tfc, as catalogued by Kamphuis, de Vries,
Boytsov & Lin, "Which BM25 Do You Mean?" (ECIR 2020):

    method     idf(t)                          tfc(tf)
    robertson  log((N-df+.5)/(df+.5)), ≥ 0     tf / (k1·(1-b+b·|d|/L) + tf)
    lucene     log(1 + (N-df+.5)/(df+.5))      the same
    atire      log(N/df)                       tf·(k1+1) / (tf + k1·(1-b+b·|d|/L))
    bm25l      log((N+1)/(df+.5))              (k1+1)(c+δ)/(k1+c+δ),  c = tf/(1-b+b·|d|/L)    (Lv & Zhai 2011)
    bm25+      log((N+1)/df)                   tf·(k1+1)/(k1·(1-b+b·|d|/L) + tf) + δ           (Lv & Zhai 2011)

Scoring is *eager* (Lin et al., bm25s 2024): idf·tfc is computed once per (term, document) at index time
and stored in a sparse term × document matrix W, so a query is a sum of a few rows of W — for a batch of
queries, one sparse product Q·W. BM25L and BM25+ give every document a floor for absent terms (tfc(0) > 0);
W stores tfc(tf) − tfc(0) and the floor is added back per query term.

Adding and deleting documents changes N, df and L, so every weight changes; the index keeps the raw term
counts (a sparse document × term matrix) and recomputes W from them in one vectorised pass — the texts are
never analysed again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lmforge.retrieval.analysis import Analyzer
from lmforge.retrieval.docids import check_new_ids, positions, rows_without
from lmforge.retrieval.ranking import topk_rows
from lmforge.retrieval.store import load_folder, save_folder

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
FORMAT, VERSION = "lmforge-bm25", 1


def idf(method: str, df: np.ndarray, n_docs: int) -> np.ndarray:
    """The inverse document frequency of each term (df > 0) for one BM25 variant."""
    df = df.astype(np.float64)
    if method == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if method == "robertson":  # negative for terms in more than half the documents: clamped at 0
        return np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))
    if method == "atire":
        return np.log(n_docs / df)
    if method == "bm25l":
        return np.log((n_docs + 1) / (df + 0.5))
    if method == "bm25+":
        return np.log((n_docs + 1) / df)
    raise ValueError(f"unknown BM25 method {method!r}; choose one of {METHODS}")


def tfc(
    method: str, tf: np.ndarray, doc_len: np.ndarray, avg_len: float, k1: float, b: float, delta: float
) -> np.ndarray:
    """The term-frequency component: saturating in tf, normalised by document length."""
    norm = 1 - b + b * doc_len / avg_len  # 1 for a document of average length
    if method in ("lucene", "robertson"):
        return tf / (k1 * norm + tf)
    if method == "atire":
        return tf * (k1 + 1) / (tf + k1 * norm)
    if method == "bm25l":
        c = tf / norm
        return (k1 + 1) * (c + delta) / (k1 + c + delta)
    if method == "bm25+":
        return tf * (k1 + 1) / (k1 * norm + tf) + delta
    raise ValueError(f"unknown BM25 method {method!r}; choose one of {METHODS}")


class BM25:
    """A BM25 index over documents with string ids: ``index``, ``add``, ``delete``, ``search``, ``save``/``load``."""

    def __init__(
        self,
        analyzer: Analyzer | None = None,
        method: str = "lucene",
        k1: float = 1.5,
        b: float = 0.75,
        delta: float = 0.5,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown BM25 method {method!r}; choose one of {METHODS}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.analyzer = analyzer or Analyzer()
        self.method, self.k1, self.b, self.delta = method, float(k1), float(b), float(delta)
        self.vocab: dict[str, int] = {}
        self.ids: list[str] = []
        self._pos: dict[str, int] = {}
        self.tf = sp.csr_matrix((0, 0), dtype=np.float32)  # (N, V) raw term counts
        self.doc_len = np.zeros(0, dtype=np.int64)  # (N,) terms per document after analysis
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)  # (V, N) eager idf·tfc
        self.floor = np.zeros(0, dtype=np.float32)  # (V,) idf·tfc(0): BM25L/BM25+ only

    # ---- building ----
    def __len__(self) -> int:
        return len(self.ids)

    def index(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> BM25:
        """Index ``texts`` (replacing any documents already here); ids default to "0", "1", …"""
        self.vocab, self.ids, self._pos = {}, [], {}
        self.tf = sp.csr_matrix((0, 0), dtype=np.float32)
        self.doc_len = np.zeros(0, dtype=np.int64)
        return self.add(texts, ids)

    def add(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> BM25:
        """Add documents; only the new texts are analysed, then the weights are recomputed from counts."""
        texts = list(texts)
        ids = [str(len(self.ids) + i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(texts)} documents but {len(ids)} ids")
        check_new_ids(self._pos, ids)
        rows, cols, counts, lens = [], [], [], []
        vocab = self.vocab
        for r, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"document {ids[r]!r} is {type(text).__name__}, expected a string")
            terms = self.analyzer(text)
            lens.append(len(terms))
            bag: dict[int, int] = {}
            for t in terms:
                j = vocab.get(t)
                if j is None:
                    j = vocab[t] = len(vocab)
                bag[j] = bag.get(j, 0) + 1
            rows.extend([r] * len(bag))
            cols.extend(bag)
            counts.extend(bag.values())
        new = sp.csr_matrix(
            (np.asarray(counts, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
            shape=(len(texts), len(vocab)),
        )
        old = self.tf
        old.resize((old.shape[0], len(vocab)))  # new terms: empty columns for the old documents
        self.tf = sp.vstack([old, new], format="csr")
        self.doc_len = np.concatenate([self.doc_len, np.asarray(lens, np.int64)])
        for i in ids:
            self._pos[i] = len(self.ids)
            self.ids.append(i)
        self._reweight()
        return self

    def delete(self, ids: Iterable[str]) -> BM25:
        """Remove documents by id (an unknown id is an error); the weights are recomputed from counts."""
        keep = rows_without(self._pos, len(self.ids), ids)
        self.tf = self.tf[keep]
        self.doc_len = self.doc_len[keep]
        self.ids = [self.ids[r] for r in keep]
        self._pos = positions(self.ids)
        self._reweight()
        return self

    def _reweight(self) -> None:
        """W = idf(t)·(tfc(tf) − tfc(0)) for every stored (document, term) count, as a (V, N) matrix."""
        tf = self.tf.tocoo()
        n, v = self.tf.shape
        df = np.bincount(tf.col, minlength=v)  # each (doc, term) pair appears once in the counts
        avg = float(self.doc_len.mean()) if n else 1.0
        avg = avg or 1.0  # a corpus of empty documents: no counts, any positive value will do
        with np.errstate(divide="ignore"):
            term_idf = np.where(df > 0, idf(self.method, np.maximum(df, 1), n), 0.0)
        w = term_idf[tf.col] * tfc(
            self.method, tf.data.astype(np.float64), self.doc_len[tf.row], avg, self.k1, self.b, self.delta
        )
        if self.method in ("bm25l", "bm25+"):
            floor = term_idf * tfc(
                self.method, np.zeros(1), np.full(1, avg), avg, self.k1, self.b, self.delta
            )
            w -= floor[tf.col]
        else:
            floor = np.zeros(v)
        self.floor = floor.astype(np.float32)
        self.weights = sp.csr_matrix((w.astype(np.float32), (tf.col, tf.row)), shape=(v, n))

    # ---- querying ----
    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """(nq, V) counts of each query's terms that the index knows (unknown terms cannot match)."""
        rows, cols = [], []
        for r, q in enumerate(queries):
            for t in self.analyzer(q):
                j = self.vocab.get(t)
                if j is not None:
                    rows.append(r)
                    cols.append(j)
        data = np.ones(len(rows), np.float32)  # a repeated query term counts once per repetition
        return sp.csr_matrix((data, (rows, cols)), shape=(len(queries), len(self.vocab)))

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document (N,) for one query, in index order."""
        return self.score_matrix(self.query_matrix([query]))[0]

    def score_matrix(self, q: sp.csr_matrix) -> np.ndarray:
        """(nq, N) scores: one sparse product with the eager weights, plus BM25L/BM25+'s floor."""
        s = (q @ self.weights).toarray()
        if self.method in ("bm25l", "bm25+"):
            s += (q @ self.floor)[:, None]
        return s

    def search(self, query: str, k: int = 10, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The k best (id, score) for one query; documents sharing no term with it are never returned."""
        return self.search_batch([query], k, mask)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, mask: np.ndarray | None = None, chunk: int = 512
    ) -> list[list[tuple[str, float]]]:
        """``search`` for many queries, ``chunk`` at a time through one sparse product each.

        ``mask`` (N,) bool keeps only some documents (a metadata filter)."""
        out: list[list[tuple[str, float]]] = []
        for s in range(0, len(queries), chunk):
            q = self.query_matrix(queries[s : s + chunk])
            hit = (q @ self.weights).toarray()  # (nq, N) the evidence from matched terms
            matched = hit > 0
            if self.method in ("bm25l", "bm25+"):
                hit += (q @ self.floor)[:, None]
            if mask is not None:
                matched &= np.asarray(mask, bool)[None, :]
            hit = np.where(matched, hit, -np.inf)
            idx, val = topk_rows(hit, k)
            for row_i, row_v in zip(idx, val):
                out.append([(self.ids[i], float(x)) for i, x in zip(row_i, row_v) if x != -np.inf])
        return out

    # ---- persistence ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder atomically (the old index stays whole until the new one is complete)."""
        meta = {
            "analyzer": self.analyzer.config(),
            "method": self.method,
            "k1": self.k1,
            "b": self.b,
            "delta": self.delta,
            "vocab": list(self.vocab),
            "ids": self.ids,
        }
        w, tf = self.weights, self.tf
        arrays = {
            "weights_data": w.data,
            "weights_indices": w.indices,
            "weights_indptr": w.indptr,
            "tf_data": tf.data,
            "tf_indices": tf.indices,
            "tf_indptr": tf.indptr,
            "doc_len": self.doc_len,
            "floor": self.floor,
        }
        return save_folder(path, FORMAT, VERSION, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> BM25:
        """Open an index folder; with ``mmap`` the arrays stay on disk and load lazily."""
        meta, a = load_folder(path, FORMAT, VERSION, mmap=mmap)
        try:
            self = cls(Analyzer(**meta["analyzer"]), meta["method"], meta["k1"], meta["b"], meta["delta"])
            self.vocab = {t: j for j, t in enumerate(meta["vocab"])}
            self.ids = list(meta["ids"])
            n, v = len(self.ids), len(self.vocab)
            self._pos = positions(self.ids)
            self.weights = sp.csr_matrix(
                (a["weights_data"], a["weights_indices"], a["weights_indptr"]), shape=(v, n)
            )
            self.tf = sp.csr_matrix((a["tf_data"], a["tf_indices"], a["tf_indptr"]), shape=(n, v))
            self.doc_len, self.floor = a["doc_len"], a["floor"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a consistent BM25 index: {e}") from None
        if self.doc_len.shape != (n,) or self.floor.shape != (v,):
            raise ValueError(f"{path} is not a consistent BM25 index: array sizes disagree with meta.json")
        return self
