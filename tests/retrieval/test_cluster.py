"""k-means and silhouette against scikit-learn, MinHash LSH against exact Jaccard, embedding dedup, PCA map."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.retrieval.cluster import (
    MinHashLSH,
    corpus_map,
    embedding_duplicates,
    jaccard,
    kmeans,
    pca_2d,
    shingles,
    silhouette,
)


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [6, 0], [0, 6]], float)
    y = rng.integers(0, 3, 300)
    return centers[y] + rng.normal(size=(300, 2)), y


def test_kmeans_finds_the_blobs_and_silhouette_equals_sklearn():
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    x, y = _blobs()
    labels, centers = kmeans(x, 3, seed=0)
    assert adjusted_rand_score(y, labels) > 0.95 and centers.shape == (3, 2)
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-9)
    bad = np.arange(300) % 3  # arbitrary labels separate nothing
    assert (
        silhouette(x, bad) == pytest.approx(silhouette_score(x, bad), abs=1e-9) and silhouette(x, bad) < 0.1
    )
    with pytest.raises(ValueError, match="k=500"):
        kmeans(x, 500)
    with pytest.raises(ValueError, match="2 clusters"):
        silhouette(x, np.zeros(300))


def test_minhash_lsh_finds_near_duplicates_and_matches_exact_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    docs = [" ".join(rng.choice(vocab, 80)) for _ in range(60)]
    near = docs[3].split()
    near[40] = "changed"
    docs.append(" ".join(near))  # one word changed: Jaccard of 5-shingles ≈ 0.88
    docs.append(docs[10])  # an exact copy
    ids = [f"d{i}" for i in range(len(docs))]
    found = MinHashLSH().duplicates(docs, ids, threshold=0.7)
    pairs = {(a, b) for a, b, _ in found}
    assert pairs == {("d3", "d60"), ("d10", "d61")}
    for a, b, sim in found:
        assert sim == pytest.approx(jaccard(shingles(docs[int(a[1:])]), shingles(docs[int(b[1:])])))
    sig = MinHashLSH(num_perm=256, bands=32)
    s1, s2 = sig.signature(docs[3]), sig.signature(docs[60])
    est = float((s1 == s2).mean())
    assert est == pytest.approx(jaccard(shingles(docs[3]), shingles(docs[60])), abs=0.08)
    with pytest.raises(ValueError, match="multiple"):
        MinHashLSH(num_perm=100, bands=16)


def test_embedding_duplicates_and_map(tmp_path):
    v = np.eye(4, dtype=np.float32)
    v = np.vstack([v, (v[1] + 0.01) / np.linalg.norm(v[1] + 0.01)])
    assert [(a, b) for a, b, _ in embedding_duplicates(v, list("abcde"), 0.95)] == [("b", "e")]
    x, y = _blobs(1)
    xy = pca_2d(np.hstack([x, np.zeros((300, 3))]))
    assert xy.shape == (300, 2) and np.allclose(xy.mean(0), 0)
    png = corpus_map(x, tmp_path / "map.png", labels=y)
    assert png.read_bytes()[:4] == b"\x89PNG"
