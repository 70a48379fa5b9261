"""Reading a corpus: files, folders and globs of .txt, .jsonl and .parquet → documents.

A document is the unit that separators (EOS) mark and that the train/validation split assigns. In a
.txt file documents are separated by blank lines (a paragraph or a TinyStories story each: a whole book
as one document would put all of it on one side of the split); in .jsonl each line's `text` field is
one; in .parquet each row's `text` column. Order is deterministic: paths sorted, then file order.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".parquet")


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of corpus files."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        elif any(c in str(p) for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matched:
                raise ValueError(f"corpus pattern {p} matches no file")
            files += matched
        else:
            raise ValueError(f"corpus path {p} does not exist")
    bad = [f for f in files if f.suffix not in SUFFIXES]
    if bad:
        raise ValueError(f"{bad[0]}: unsupported corpus file type (expected {', '.join(SUFFIXES)})")
    if not files:
        raise ValueError(f"no corpus files in {', '.join(map(str, paths))}")
    return files


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def iter_documents(paths: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Every non-empty document of the corpus, in a fixed order. Errors name the file (and line)."""
    for path in corpus_files(paths):
        n = 0
        if path.suffix == ".txt":
            for doc in re.split(r"\n\s*\n", _read_text(path)):
                if doc.strip():
                    n += 1
                    yield doc.strip("\n")
        elif path.suffix == ".jsonl":
            for i, line in enumerate(_read_text(path).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise ValueError(f"{path}:{i}: no string field {text_field!r}")
                if record[text_field].strip():
                    n += 1
                    yield record[text_field]
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
            table = pq.read_table(path)
            if text_field not in table.column_names:
                raise ValueError(
                    f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)})"
                )
            for text in table.column(text_field).to_pylist():
                if isinstance(text, str) and text.strip():
                    n += 1
                    yield text
        if n == 0:
            raise ValueError(f"{path}: no text (the file is empty)")
