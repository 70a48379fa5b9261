"""BM25: scores equal bm25s's for every variant on the same tokens; Cranfield reproduces the anchor;
add/delete equal a fresh build; save/load is atomic, memory-mapped and fails clearly on bad files."""

from __future__ import annotations

import json

import bm25s
import numpy as np
import pytest

from lmforge.retrieval import metrics
from lmforge.retrieval.analysis import Analyzer
from lmforge.retrieval.bm25 import BM25, METHODS
from lmforge.retrieval.collections import load_cranfield


@pytest.fixture(scope="module")
def cran(data):
    return load_cranfield(data / "retrieval" / "cranfield")


@pytest.mark.parametrize("method", METHODS)
def test_scores_equal_bm25s_for_every_variant(cran, method):
    an = Analyzer(stemmer="english")
    ids = list(cran.docs)
    texts = [cran.docs[i] for i in ids]
    ours = BM25(an, method=method, k1=1.2, b=0.7, delta=0.6).index(texts, ids)
    ref = bm25s.BM25(method=method, k1=1.2, b=0.7, delta=0.6)
    ref.index([an(t) for t in texts], show_progress=False)  # the same tokens: scoring alone is compared
    for q in list(cran.queries.values())[:40]:
        terms = [t for t in an(q) if t in ours.vocab]
        want = ref.get_scores(terms)
        np.testing.assert_allclose(ours.scores(q), want, rtol=2e-5, atol=2e-5)


def test_cranfield_reproduces_the_bm25s_anchor(cran):
    # issue 7's anchor: bm25s, Lucene, k1 1.5, b 0.75, English stop words → nDCG@10 0.515, R@100 0.736
    ids = list(cran.docs)
    index = BM25(Analyzer(), method="lucene", k1=1.5, b=0.75).index([cran.docs[i] for i in ids], ids)
    qids = list(cran.queries)
    hits = index.search_batch([cran.queries[q] for q in qids], k=100)
    run = {q: dict(h) for q, h in zip(qids, hits)}
    m = metrics.mean(metrics.evaluate(run, cran.qrels))
    assert m["ndcg@10"] == pytest.approx(0.515, abs=0.001)
    assert m["recall@100"] == pytest.approx(0.736, abs=0.001)
    # the ranking itself is bm25s's (ties aside): same top-10 scores
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(
        bm25s.tokenize([cran.docs[i] for i in ids], stopwords="en", show_progress=False), show_progress=False
    )
    _, sc = ref.retrieve(
        bm25s.tokenize([cran.queries[q] for q in qids], stopwords="en", show_progress=False),
        k=10,
        show_progress=False,
    )
    ours = np.array([[s for _, s in h[:10]] for h in hits])
    np.testing.assert_allclose(ours, sc, rtol=1e-5)


def same(a, b):
    """Two hit lists rank the same documents with the same scores (to float32 rounding)."""
    return [d for d, _ in a] == [d for d, _ in b] and np.allclose(
        [x for _, x in a], [x for _, x in b], rtol=1e-5
    )


DOCS = [
    "the wing lift increases with angle of attack",
    "boundary layer transition on a flat plate",
    "shock waves in supersonic flow",
    "heat transfer in hypersonic boundary layers",
    "lift and drag of a slender wing",
    "",
]


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_add_and_delete_equal_a_fresh_build(method):
    full = BM25(method=method).index(DOCS, [f"d{i}" for i in range(len(DOCS))])
    grown = BM25(method=method).index(DOCS[:3], ["d0", "d1", "d2"]).add(DOCS[3:], ["d3", "d4", "d5"])
    for q in ["wing lift", "boundary layer", "hypersonic heat"]:
        assert same(grown.search(q, 10), full.search(q, 10))
    shrunk = BM25(method=method).index(DOCS, [f"d{i}" for i in range(len(DOCS))]).delete(["d1", "d4"])
    fresh = BM25(method=method).index([DOCS[i] for i in (0, 2, 3, 5)], ["d0", "d2", "d3", "d5"])
    for q in ["wing lift", "boundary layer", "hypersonic heat"]:
        np.testing.assert_allclose(shrunk.scores(q), fresh.scores(q), rtol=1e-6)
        assert same(shrunk.search(q), fresh.search(q))
    with pytest.raises(KeyError, match="d9"):
        shrunk.delete(["d9"])


def test_bad_documents_and_queries():
    index = BM25().index(DOCS, [f"d{i}" for i in range(len(DOCS))])
    assert index.search("") == []
    assert index.search("the of and") == []  # stop words only: nothing can match
    assert index.search("unseenword") == []
    assert [d for d, _ in index.search("wing")] == ["d0", "d4"] or [d for d, _ in index.search("wing")] == [
        "d4",
        "d0",
    ]
    with pytest.raises(ValueError, match="duplicate document id 'd1'"):
        BM25().index(["a b", "c d"], ["d1", "d1"])
    with pytest.raises(ValueError, match="duplicate document id 'd0'"):
        index.add(["more text"], ["d0"])
    with pytest.raises(TypeError, match="'x'"):
        BM25().index([None], ["x"])
    other = BM25().index(
        ["Ελληνικά κείμενα για την αεροδυναμική", "Русский текст о крыле", "東京都の空気"], ["el", "ru", "ja"]
    )
    assert other.search("АЭРОДИНАМИКА крыле")[0][0] == "ru"
    assert other.search("αεροδυναμική")[0][0] == "el"
    mask = np.array([d != "d0" for d in index.ids])
    assert [d for d, _ in index.search("wing", mask=mask)] == ["d4"]


def test_save_load_roundtrip_is_memory_mapped_and_atomic(tmp_path, monkeypatch):
    index = BM25(Analyzer(stemmer="english"), method="bm25l").index(DOCS, [f"d{i}" for i in range(len(DOCS))])
    path = index.save(tmp_path / "idx")
    back = BM25.load(path)
    assert isinstance(back.doc_len, np.memmap)
    assert back.analyzer.config() == index.analyzer.config() and back.method == "bm25l"
    for q in ["wings lifting", "boundary layers"]:
        assert same(back.search(q), index.search(q))
    back.add(["a new wing"], ["d6"])  # a loaded index still grows
    assert back.search("wing")[0][0] in {"d6", "d0", "d4"}

    # a crash halfway through a save leaves the old index whole
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        BM25().index(["other"], ["x"]).save(path)
    monkeypatch.undo()
    assert same(BM25.load(path).search("wing"), index.search("wing"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folders left behind

    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="version 99.*rebuild"):
        BM25.load(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is corrupt"):
        BM25.load(path)
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "doc_len.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="doc_len.npy is missing or corrupt"):
        BM25.load(path)
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        BM25.load(tmp_path / "nothing")


def test_analyzer():
    assert Analyzer(stemmer="english")("The flows were flowing past the wings.") == [
        "flow",
        "were",
        "flow",
        "past",
        "wing",
    ]
    assert Analyzer(stopwords=None)("A cat, the DOG") == ["cat", "the", "dog"]
    assert Analyzer(stopwords=["cat"])("A cat, the DOG") == ["the", "dog"]  # your list replaces the default
    assert Analyzer(normalize="NFKC")("ﬁne") == ["fine"]
    with pytest.raises(ValueError, match="unknown stop-word list"):
        Analyzer(stopwords="klingon")
    with pytest.raises(ValueError, match="not a valid regex"):
        Analyzer(pattern="(")
