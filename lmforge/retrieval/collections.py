"""Test collections on disk: documents, queries and relevance judgments (qrels), and run files.

TREC's plain-text formats are what every IR tool reads and writes:

- qrels: ``qid 0 docid grade`` per line (grade > 0 is relevant; higher is more relevant);
- runs:  ``qid Q0 docid rank score tag`` per line.

The Cranfield collection (Cleverdon, 1967: 1,400 aerodynamics abstracts, 225 queries) ships in its own
SMART format: records start with ``.I n`` and fields with ``.T`` (title), ``.A``, ``.B``, ``.W`` (text).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmforge.fileio import atomic_write_text

Qrels = dict[str, dict[str, int]]  # qid -> docid -> grade
Run = dict[str, dict[str, float]]  # qid -> docid -> score


@dataclass
class Collection:
    """Documents and queries by id, with graded judgments."""

    docs: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels


def _smart_records(path: Path) -> list[dict[str, str]]:
    """Parse a SMART file into records of {field letter: text}."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    records: list[dict[str, str]] = []
    field = None
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.startswith(".I"):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '.I <number>', got {line!r}")
            records.append({"I": parts[1]})
            field = None
        elif len(line) == 2 and line[0] == "." and line[1].isalpha():
            if not records:
                raise ValueError(f"{path}:{n}: field {line} before the first .I record")
            field = line[1]
            records[-1].setdefault(field, "")
        elif field is not None:
            records[-1][field] += line + "\n"
    return records


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line) for the non-blank lines of a TREC-style file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            yield n, line


def read_qrels(path: str | os.PathLike) -> Qrels:
    """TREC qrels: ``qid iter docid grade`` lines; a malformed line is an error with its number."""
    qrels: Qrels = {}
    for n, line in _lines(path):
        try:
            qid, _, doc, grade = line.split()
            qrels.setdefault(qid, {})[doc] = int(grade)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'qid 0 docid grade', got {line!r}") from None
    return qrels


def read_run(path: str | os.PathLike) -> Run:
    """A TREC run file: ``qid Q0 docid rank score tag`` lines."""
    run: Run = {}
    for n, line in _lines(path):
        try:
            qid, _, doc, _, score = line.split()[:5]
            run.setdefault(qid, {})[doc] = float(score)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line!r}") from None
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "lmforge") -> None:
    """Write a run in TREC format, each query's documents by descending score."""
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda x: (-x[1], x[0]))
        lines += [f"{qid} Q0 {d} {r} {s:.6f} {tag}" for r, (d, s) in enumerate(ranked, 1)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_cranfield(folder: str | os.PathLike) -> Collection:
    """Cranfield: documents are title + text; queries are renumbered 1..225 in file order, as the qrels are.

    The graded judgments come from ``QRelsCorrectedforTRECeval`` (higher = more relevant)."""
    folder = Path(folder)
    docs = {}
    for r in _smart_records(folder / "cran.all.1400"):
        docs[r["I"]] = " ".join((r.get("T", "") + " " + r.get("W", "")).split())
    queries = {}
    for i, r in enumerate(_smart_records(folder / "cran.qry"), 1):  # .I numbers skip values; qrels do not
        queries[str(i)] = " ".join(r.get("W", "").split())
    return Collection(docs, queries, read_qrels(folder / "QRelsCorrectedforTRECeval"))
