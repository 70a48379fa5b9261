"""Clustering, near-duplicate detection and a 2-D map of a corpus.

- k-means (Lloyd, 1982) with k-means++ seeding (Arthur & Vassilvitskii, 2007) on unit embeddings; the
  silhouette score (Rousseeuw, 1987) — for each point (b − a)/max(a, b), a = mean distance to its own
  cluster, b = to the nearest other — says how well separated the clusters are (1 best, 0 overlapping).
- near duplicates, two ways: MinHash LSH (Broder, 1997; Indyk & Motwani, 1998) on word shingles —
  the probability that two documents share a MinHash value equals the Jaccard similarity of their
  shingle sets, and banding the signature makes similar documents collide in some band's bucket, so only
  colliding pairs are compared; and embedding cosine above a threshold (paraphrases, not just copies).
- a 2-D map: PCA (the top two principal directions of the centred embeddings) drawn as a PNG.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def kmeans(
    x: np.ndarray, k: int, iters: int = 50, seed: int = 0, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding on the rows of x (N, D): (labels (N,), centroids (k, D))."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} (the number of points), got k={k}")
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: the next seed far from the chosen ones, with probability ∝ d²
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.array(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        dist = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]  # (N, k) squared distances
        labels = dist.argmin(1)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        shift = float(((new - c) ** 2).sum())
        c = new
        if shift < tol:
            break
    return labels, c


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette over points (Euclidean), as scikit-learn's silhouette_score; points alone in their
    cluster score 0."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    ks = np.unique(labels)
    if len(ks) < 2:
        raise ValueError("the silhouette needs at least 2 clusters")
    sq = (x**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] - 2 * x @ x.T + sq[None], 0))  # (N, N)
    mean_to = np.stack([dist[:, labels == j].sum(1) for j in ks], 1)  # (N, K) sums
    sizes = np.array([(labels == j).sum() for j in ks])
    own = np.searchsorted(ks, labels)
    n_own = sizes[own]
    a = mean_to[np.arange(len(x)), own] / np.maximum(n_own - 1, 1)
    other = mean_to / sizes[None]
    other[np.arange(len(x)), own] = np.inf
    b = other.min(1)
    s = np.where(n_own > 1, (b - a) / np.maximum(a, b), 0.0)
    return float(s.mean())


def shingles(text: str, n: int = 5) -> set[str]:
    words = text.lower().split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_PRIME = (1 << 31) - 1  # hashes and coefficients below 2^31: a·h + b fits in a uint64


class MinHashLSH:
    """MinHash signatures of shingle sets, banded into buckets: candidate pairs collide in some band.

    With b bands of r rows, a pair of Jaccard similarity s collides with probability 1 − (1 − s^r)^b: an
    S-curve whose threshold is about (1/b)^(1/r)."""

    def __init__(self, num_perm: int = 128, bands: int = 16, shingle: int = 5, seed: int = 1):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
        self.bands, self.rows, self.shingle = bands, num_perm // bands, shingle

    def signature(self, text: str) -> np.ndarray:
        sh = shingles(text, self.shingle)
        if not sh:
            return np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        h = np.array(
            [
                int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "little") % _PRIME
                for x in sh
            ],
            dtype=np.uint64,
        )  # (S,) one hash per shingle
        # one universal hash (a·h + b) mod p per permutation; the signature keeps each one's minimum
        return ((self.a[:, None] * h[None, :] + self.b[:, None]) % _PRIME).min(1)  # (num_perm,)

    def duplicates(
        self, texts: Sequence[str], ids: Sequence[str] | None = None, threshold: float = 0.8
    ) -> list[tuple[str, str, float]]:
        """Pairs (id_a, id_b, jaccard) with shingle Jaccard ≥ threshold, found via band collisions."""
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        sigs = [self.signature(t) for t in texts]
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(sigs):
            for band in range(self.bands):
                buckets[(band, s[band * self.rows : (band + 1) * self.rows].tobytes())].append(i)
        cands = {
            (i, j)
            for members in buckets.values()
            if len(members) > 1
            for x, i in enumerate(members)
            for j in members[x + 1 :]
        }
        sets = {}
        out = []
        for i, j in sorted(cands):
            a = sets.setdefault(i, shingles(texts[i], self.shingle))
            b = sets.setdefault(j, shingles(texts[j], self.shingle))
            sim = jaccard(a, b)
            if sim >= threshold:
                out.append((ids[i], ids[j], sim))
        return out


def embedding_duplicates(
    vectors: np.ndarray, ids: Sequence[str], threshold: float = 0.95, chunk: int = 2048
) -> list[tuple[str, str, float]]:
    """Pairs of unit vectors with cosine ≥ threshold (near-paraphrases), computed in chunks of rows."""
    v = np.asarray(vectors, np.float32)
    out = []
    for s in range(0, len(v), chunk):
        sim = v[s : s + chunk] @ v.T  # (c, N)
        rows, cols = np.nonzero(sim >= threshold)
        for r, c in zip(rows, cols):
            i = s + r
            if c > i:
                out.append((ids[i], ids[c], float(sim[r, c])))
    return out


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The rows of x projected on their top two principal directions (N, 2)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def corpus_map(
    vectors: np.ndarray,
    path: str | os.PathLike,
    labels: np.ndarray | None = None,
    title: str = "corpus map (PCA)",
) -> Path:
    """A PNG scatter of the corpus in 2-D, coloured by cluster when labels are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = pca_2d(vectors)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(
        xy[:, 0], xy[:, 1], s=6, c=labels if labels is not None else "tab:blue", cmap="tab20", alpha=0.7
    )
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
