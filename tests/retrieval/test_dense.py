"""Dense retrieval: our MiniLM embeddings equal sentence-transformers'; exact and approximate indexes,
filters, persistence and dimension checks; fusion by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge import load_model
from lmforge.retrieval.collections import load_cranfield
from lmforge.retrieval.dense import DenseIndex
from lmforge.retrieval.fusion import rrf, score_fusion


@pytest.fixture(scope="module")
def encoder():
    return load_model("all-minilm-l6-v2")


def test_embeddings_equal_sentence_transformers(encoder, minilm_dir, data):
    from sentence_transformers import SentenceTransformer

    c = load_cranfield(data / "retrieval" / "cranfield")
    texts = list(c.docs.values())[:48] + list(c.queries.values())[:16] + ["", "Ελληνικά και русский 東京"]
    ours = encoder.encode(texts, batch_size=16).numpy()
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        texts, batch_size=16, normalize_embeddings=True
    )
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, d))
    x = centers[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_index_is_brute_force_and_filters():
    x = _clustered(2000, 32)
    ids = [f"d{i}" for i in range(len(x))]
    meta = [{"lang": "en" if i % 3 else "de", "year": 2000 + i % 5} for i in range(len(x))]
    index = DenseIndex(32, kind="exact").add(x, ids, meta)
    q = x[:5] + 0.01
    hits = index.search(q, 10)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert [[d for d, _ in h] for h in hits] == [[ids[i] for i in row] for row in want]
    de = index.search(q, 10, where={"lang": "de", "year": [2000, 2003]})
    for h in de:
        assert len(h) == 10
        for d, _ in h:
            assert int(d[1:]) % 3 == 0 and 2000 + int(d[1:]) % 5 in (2000, 2003)
    assert index.search(q, 10, where=lambda m: m["year"] == 1999) == [[]] * 5


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall_exact_and_respect_filters(kind, tmp_path):
    x = _clustered(5000, 48, seed=1)
    ids = [str(i) for i in range(len(x))]
    meta = [{"shard": i % 4} for i in range(len(x))]
    exact = DenseIndex(48, kind="exact").add(x, ids, meta)
    ann = DenseIndex(48, kind=kind, ef_search=128, nprobe=32).add(x, ids, meta)
    q = _clustered(100, 48, seed=2)
    truth = exact.search(q, 10)
    got = ann.search(q, 10)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in b}) / 10 for a, b in zip(got, truth)])
    assert recall >= 0.95
    for h in ann.search(q, 10, where={"shard": 2}):
        assert h and all(int(d) % 4 == 2 for d, _ in h)
    # saved with its faiss index; loads memory-mapped; still grows and shrinks
    back = DenseIndex.load(ann.save(tmp_path / "dense"))
    assert isinstance(back.vectors, np.memmap) and back._ann is not None
    assert [[d for d, _ in h] for h in back.search(q[:5], 10)] == [[d for d, _ in h] for h in got[:5]]
    back.add(q[:1] * 1.0, ["new"])
    assert back.search(q[:1], 1)[0][0][0] == "new"
    back.delete(["new", "0"])
    assert all(d not in {"new", "0"} for d, _ in back.search(q[:1], 10)[0])


def test_bad_input(tmp_path):
    index = DenseIndex(4, model="all-minilm-l6-v2").add(np.eye(4, dtype=np.float32), list("abcd"))
    with pytest.raises(ValueError, match="dimension 3.*4-d vectors from all-minilm-l6-v2"):
        index.search(np.ones((1, 3)))
    with pytest.raises(ValueError, match="dimension 5"):
        index.add(np.ones((1, 5)), ["e"])
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        index.add(np.ones((1, 4)), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 4), np.nan))
    with pytest.raises(KeyError, match="'z'"):
        index.delete(["z"])
    assert DenseIndex(4).search(np.ones((2, 4))) == [[], []]
    path = index.save(tmp_path / "d")
    (path / "vectors.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="vectors.npy is missing or corrupt"):
        DenseIndex.load(path)


def test_fusion_by_hand():
    bm25 = [("a", 12.0), ("b", 7.0), ("c", 1.0)]
    dense = [("c", 0.9), ("a", 0.8), ("d", 0.1)]
    fused = rrf([bm25, dense], k=60)
    assert fused[0] == ("a", pytest.approx(1 / 61 + 1 / 62))
    assert dict(fused)["d"] == pytest.approx(1 / 63)
    sf = dict(score_fusion(bm25, dense, weight=0.25))
    assert sf["a"] == pytest.approx(0.75 * 1.0 + 0.25 * 0.875)
    assert sf["c"] == pytest.approx(0.75 * 0.0 + 0.25 * 1.0)
    assert sf["d"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="weight"):
        score_fusion(bm25, dense, weight=2)
