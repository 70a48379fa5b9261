"""Dense retrieval: embed texts as unit vectors, rank documents by cosine similarity to the query.

A bi-encoder (Reimers & Gurevych, "Sentence-BERT", 2019) maps query and document separately to vectors
whose dot product measures relevance; all-MiniLM-L6-v2 mean-pools BERT's token vectors and L2-normalises
them, so the dot product *is* the cosine. Documents are embedded once, at index time; a query costs one
encoder pass plus a nearest-neighbour search.

Two searches over the same stored vectors:

- exact: one matrix product (nq, D) · (D, N) and a top-k — every document is scored; for up to ~10⁵
  documents this is both the simplest and, with BLAS, fast enough;
- approximate (faiss): HNSW (Malkov & Yashunin, 2016), a layered proximity graph walked greedily from a
  coarse layer to the fine one, or IVF (Jégou et al., 2011), k-means cells of which only the ``nprobe``
  nearest are scanned. Both trade a little recall for sub-linear search; ``kind="auto"`` picks HNSW from
  ``ANN_THRESHOLD`` vectors up.

Each document may carry metadata (a dict); a filter keeps only matching documents in every search mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.retrieval.docids import check_new_ids, positions, rows_without
from lmforge.retrieval.ranking import topk_rows
from lmforge.retrieval.store import load_folder, save_folder

FORMAT, VERSION = "lmforge-dense", 1
KINDS = ("auto", "exact", "hnsw", "ivf")
ANN_THRESHOLD = 100_000
Filter = Mapping[str, Any] | Callable[[dict], bool] | None


def metadata_mask(meta: Sequence[dict], where: Filter) -> np.ndarray | None:
    """(N,) bool of the documents a filter keeps: ``{"field": value}`` (a list/set value: any of them),
    or a function of the metadata dict; None keeps all."""
    if where is None:
        return None
    if callable(where):
        return np.fromiter((bool(where(m)) for m in meta), bool, len(meta))

    def keep(m: dict) -> bool:
        for k, want in where.items():
            got = m.get(k)
            if isinstance(want, list | tuple | set | frozenset):
                if got not in want:
                    return False
            elif got != want:
                return False
        return True

    return np.fromiter((keep(m) for m in meta), bool, len(meta))


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("approximate search needs faiss: pip install faiss-cpu") from None
    return faiss


class DenseIndex:
    """Unit vectors with string ids (and optional metadata), searched exactly or with faiss HNSW / IVF."""

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        model: str | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        nprobe: int = 16,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
        self.dim, self.kind, self.model = int(dim), kind, model
        self.hnsw_m, self.ef_construction, self.ef_search, self.nprobe = (
            hnsw_m,
            ef_construction,
            ef_search,
            nprobe,
        )
        self.vectors = np.zeros((0, self.dim), np.float32)  # (N, D)
        self.ids: list[str] = []
        self.meta: list[dict] = []
        self._pos: dict[str, int] = {}
        self._ann = None  # the faiss index over self.vectors, built on demand
        self._ann_kind: str | None = None
        self._ann_rows = 0  # how many vectors it holds

    def __len__(self) -> int:
        return len(self.ids)

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "hnsw" if len(self) >= ANN_THRESHOLD else "exact"

    def _check(self, vectors: np.ndarray, what: str) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(
                f"{what} have dimension {v.shape[-1] if v.ndim else '?'}, the index holds {self.dim}-d vectors"
                + (f" from {self.model}" if self.model else "")
                + ": use the same embedding model"
            )
        if not np.isfinite(v).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return v

    def add(
        self, vectors: np.ndarray, ids: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> DenseIndex:
        v = self._check(vectors, "the vectors")
        ids = [str(i) for i in ids]
        if len(ids) != len(v):
            raise ValueError(f"{len(v)} vectors but {len(ids)} ids")
        if metadata is not None and len(metadata) != len(v):
            raise ValueError(f"{len(v)} vectors but {len(metadata)} metadata records")
        check_new_ids(self._pos, ids)
        for i in ids:
            self._pos[i] = len(self.ids)
            self.ids.append(i)
        self.meta.extend(dict(m) for m in metadata) if metadata is not None else self.meta.extend(
            {} for _ in ids
        )
        self.vectors = np.concatenate([self.vectors, v]) if len(self.vectors) else v.copy()
        return self

    def delete(self, ids: Sequence[str]) -> DenseIndex:
        """Remove documents by id; an approximate index is rebuilt on the next search (HNSW cannot unlink)."""
        keep = rows_without(self._pos, len(self.ids), ids)
        self.vectors = self.vectors[keep]
        self.ids = [self.ids[r] for r in keep]
        self.meta = [self.meta[r] for r in keep]
        self._pos = positions(self.ids)
        self._ann, self._ann_rows = None, 0
        return self

    # ---- searching ----
    def mask(self, where: Filter) -> np.ndarray | None:
        return metadata_mask(self.meta, where)

    def search(self, queries: np.ndarray, k: int = 10, where: Filter = None) -> list[list[tuple[str, float]]]:
        """The k nearest documents (id, cosine) for each query vector (nq, D)."""
        q = self._check(queries, "the query vectors")
        if not len(self):
            return [[] for _ in range(len(q))]
        keep = self.mask(where)
        kind = self.resolved_kind()
        if kind == "exact":
            idx, val = self._exact(q, k, keep)
        else:
            idx, val = self._approximate(q, k, keep, kind)
        return [
            [(self.ids[i], float(s)) for i, s in zip(ri, rv) if i >= 0 and s > -np.inf]
            for ri, rv in zip(idx, val)
        ]

    def _exact(self, q: np.ndarray, k: int, keep: np.ndarray | None, chunk: int = 1024):
        idx, val = [], []
        for s in range(0, len(q), chunk):
            scores = q[s : s + chunk] @ self.vectors.T  # (nq, N) cosines of unit vectors
            if keep is not None:
                scores[:, ~keep] = -np.inf
            i, v = topk_rows(scores, k)
            idx.append(i)
            val.append(v)
        return np.concatenate(idx), np.concatenate(val)

    def build_ann(self, kind: str | None = None) -> None:
        """Build (or extend) the faiss index over the stored vectors."""
        faiss = _faiss()
        kind = kind or self.resolved_kind()
        if self._ann is not None and self._ann_kind == kind:
            if self._ann_rows < len(self):  # HNSW and IVF both take new vectors without a rebuild
                self._ann.add(np.ascontiguousarray(self.vectors[self._ann_rows :]))
                self._ann_rows = len(self)
            return
        x = np.ascontiguousarray(self.vectors)
        if kind == "hnsw":
            ann = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            ann.hnsw.efConstruction = self.ef_construction
        elif kind == "ivf":
            nlist = max(1, min(int(4 * np.sqrt(len(x))), len(x) // 39 or 1))  # faiss wants ≥ 39 points a cell
            ann = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = (
                x
                if len(x) <= 64 * nlist
                else x[np.random.default_rng(0).choice(len(x), 64 * nlist, replace=False)]
            )
            ann.train(sample)
        else:
            raise ValueError(f"{kind!r} is not an approximate index kind (hnsw, ivf)")
        ann.add(x)
        self._ann, self._ann_kind, self._ann_rows = ann, kind, len(x)

    def _approximate(self, q: np.ndarray, k: int, keep: np.ndarray | None, kind: str):
        faiss = _faiss()
        self.build_ann(kind)
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if keep is not None:
            allowed = np.flatnonzero(keep).astype(np.int64)
            sel = faiss.IDSelectorBatch(allowed)  # held in a local: faiss keeps only a raw pointer
            params.sel = sel
        val, idx = self._ann.search(np.ascontiguousarray(q), min(k, len(self)), params=params)
        val = np.where(idx >= 0, val, -np.inf)
        return idx, val

    # ---- persistence ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write the vectors (and a built faiss index) atomically; they load memory-mapped."""
        meta = {
            "dim": self.dim,
            "kind": self.kind,
            "model": self.model,
            "ids": self.ids,
            "meta": self.meta,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "nprobe": self.nprobe,
            "ann": None,
        }
        files = {}
        if self._ann is not None and self._ann_rows == len(self):
            faiss = _faiss()
            meta["ann"] = self._ann_kind
            files["ann.faiss"] = lambda p: faiss.write_index(self._ann, str(p))
        return save_folder(path, FORMAT, VERSION, meta, {"vectors": self.vectors}, files)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> DenseIndex:
        meta, a = load_folder(path, FORMAT, VERSION, mmap=mmap)
        try:
            self = cls(
                meta["dim"],
                meta["kind"],
                meta["model"],
                meta["hnsw_m"],
                meta["ef_construction"],
                meta["ef_search"],
                meta["nprobe"],
            )
            self.vectors, self.ids, self.meta = a["vectors"], list(meta["ids"]), list(meta["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a consistent dense index: {e}") from None
        if self.vectors.shape != (len(self.ids), self.dim) or len(self.meta) != len(self.ids):
            raise ValueError(f"{path} is not a consistent dense index: vectors.npy disagrees with meta.json")
        self._pos = positions(self.ids)
        if meta.get("ann"):
            f = Path(path) / "ann.faiss"
            try:
                self._ann = _faiss().read_index(str(f))
            except RuntimeError as e:
                raise ValueError(f"{f} is missing or corrupt: {e}") from None
            self._ann_kind, self._ann_rows = meta["ann"], self._ann.ntotal
        return self
