"""One search index over a user's documents: BM25 and dense vectors side by side, searched alone or fused.

``SearchIndex`` is what ``lmforge index``, ``lmforge search`` and ``lmforge rag`` use. A folder holds the
documents (``docs.json``: id, text, metadata), ``bm25/`` and, with an embedder, ``dense/``; the whole
folder is replaced in one rename on save. Documents come from a JSONL file (``{"id", "text", ...}``:
other fields become metadata) or a folder of ``.txt``/``.md`` files, each cut into chunks whose ids are
``path#n``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmforge.retrieval.bm25 import BM25
from lmforge.retrieval.dense import DenseIndex, metadata_mask
from lmforge.retrieval.docids import check_new_ids
from lmforge.retrieval.fusion import rrf, score_fusion
from lmforge.retrieval.rag import chunk_paragraphs, chunk_tokens
from lmforge.retrieval.store import atomic_folder

FORMAT, VERSION = "lmforge-search", 1
MODES = ("bm25", "dense", "hybrid")


def read_documents(
    path: str | os.PathLike,
    chunking: str = "paragraphs",
    size: int = 200,
    overlap: int = 40,
    on_bad: str = "fail",
    count: Callable[[str], int] | None = None,
) -> list[dict[str, Any]]:
    """Documents as [{"id", "text", "meta"}] from a JSONL file or a folder of text files.

    ``count`` (a word's token count) makes ``chunking="tokens"`` count that tokenizer's tokens; else words."""
    path = Path(path)
    docs: list[dict[str, Any]] = []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"{path} holds no .txt or .md files")
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            pieces = (
                chunk_paragraphs(text)
                if chunking == "paragraphs"
                else chunk_tokens(text, size, overlap, count)
            )
            rel = str(f.relative_to(path))
            docs += [{"id": f"{rel}#{i}", "text": p, "meta": {"source": rel}} for i, p in enumerate(pieces)]
        return docs
    if not path.is_file():
        raise FileNotFoundError(f"documents not found: {path} (a .jsonl file or a folder of .txt/.md files)")
    skipped = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError('expected an object with a string "text"')
        except ValueError as e:
            if on_bad == "skip":
                skipped += 1
                continue
            raise ValueError(f"{path}:{n}: {e}") from None
        meta = {k: v for k, v in row.items() if k not in ("id", "text")}
        docs.append({"id": str(row.get("id", n)), "text": row["text"], "meta": meta})
    if skipped:
        print(f"skipped {skipped} malformed lines of {path}")
    return docs


class SearchIndex:
    def __init__(self, embedder: str | None = "all-minilm-l6-v2", bm25: BM25 | None = None):
        self.embedder_name = embedder
        self.bm25 = bm25 or BM25()
        self.dense = None
        self.docs: dict[str, dict[str, Any]] = {}  # id -> {"text", "meta"}
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None and self.embedder_name:
            from lmforge.model import load_model

            self._encoder = load_model(self.embedder_name)
        return self._encoder

    def texts(self) -> dict[str, str]:
        return {i: d["text"] for i, d in self.docs.items()}

    def add(self, docs: Sequence[dict[str, Any]], batch_size: int = 32, progress: bool = True) -> SearchIndex:
        ids = [d["id"] for d in docs]
        check_new_ids(self.docs, ids)
        texts = [d["text"] for d in docs]
        self.bm25.add(texts, ids)
        if self.embedder_name:
            vecs = self.encoder.encode(texts, batch_size=batch_size, progress=progress).numpy()
            if self.dense is None:
                self.dense = DenseIndex(vecs.shape[1], model=self.embedder_name)
            self.dense.add(vecs, ids, [d.get("meta", {}) for d in docs])
        for d in docs:
            self.docs[d["id"]] = {"text": d["text"], "meta": d.get("meta", {})}
        return self

    def delete(self, ids: Sequence[str]) -> SearchIndex:
        missing = [i for i in ids if i not in self.docs]
        if missing:
            raise KeyError(f"no document with id {missing[0]!r} in the index")
        self.bm25.delete(ids)
        if self.dense is not None:
            self.dense.delete(ids)
        for i in ids:
            del self.docs[i]
        return self

    def search(
        self,
        query: str,
        k: int = 10,
        mode: str = "hybrid",
        fusion: str = "rrf",
        weight: float = 0.5,
        where: dict | None = None,
        depth: int = 100,
    ) -> list[tuple[str, float]]:
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose one of {MODES}")
        if mode != "bm25" and self.dense is None:
            raise ValueError("this index has no dense vectors (built without an embedder): use --mode bm25")
        mask = metadata_mask([self.docs[i]["meta"] for i in self.bm25.ids], where) if where else None
        lexical = (
            self.bm25.search(query, depth if mode == "hybrid" else k, mask=mask) if mode != "dense" else []
        )
        if mode == "bm25":
            return lexical
        qv = self.encoder.encode([query]).numpy()
        dense = self.dense.search(qv, depth if mode == "hybrid" else k, where=where)[0]
        if mode == "dense":
            return dense
        if fusion == "rrf":
            return rrf([lexical, dense], top=k)
        return score_fusion(lexical, dense, weight, top=k)

    # ---- persistence: one folder, replaced in one rename ----
    def save(self, path: str | os.PathLike) -> Path:
        with atomic_folder(path) as tmp:
            self.bm25.save(tmp / "bm25")
            if self.dense is not None:
                self.dense.save(tmp / "dense")
            body = {
                "format": FORMAT,
                "version": VERSION,
                "embedder": self.embedder_name,
                "docs": [{"id": i, **d} for i, d in self.docs.items()],
            }
            (tmp / "index.json").write_text(json.dumps(body), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchIndex:
        path = Path(path)
        f = path / "index.json"
        if not f.is_file():
            raise FileNotFoundError(
                f"{path} is not a search index (no index.json): build one with lmforge index build"
            )
        try:
            body = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f} is corrupt: {e}") from None
        if body.get("format") != FORMAT or body.get("version") != VERSION:
            raise ValueError(
                f"{f}: format {body.get('format')!r} version {body.get('version')!r}, expected "
                f"{FORMAT!r} version {VERSION}: rebuild the index"
            )
        self = cls(body.get("embedder"), BM25.load(path / "bm25"))
        if (path / "dense").is_dir():
            self.dense = DenseIndex.load(path / "dense")
        self.docs = {d["id"]: {"text": d["text"], "meta": d.get("meta", {})} for d in body["docs"]}
        if list(self.docs) != self.bm25.ids or (self.dense is not None and self.dense.ids != self.bm25.ids):
            raise ValueError(f"{path}: the documents, bm25/ and dense/ disagree; rebuild the index")
        return self
