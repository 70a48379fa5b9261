"""Reading a corpus: files, folders and globs of .txt, .jsonl and .parquet → documents (strings).

A document is the unit that the separator token (EOS) closes, that the train/validation split assigns
and that best-fit packing places whole. Where it comes from:

- `.txt`: the whole file is one document, or, with `split_on_blank_lines=True`, every run of text
  between blank lines is one (a paragraph, a TinyStories story, a speech in Shakespeare). One book as a
  single document would put all of it on one side of the split, so the pipeline (tokenize_corpus) splits
  by default; iter_documents does too, pass False for one document per file.
- `.jsonl`: one JSON object per line, its `text` field (configurable: `text_field`).
- `.parquet`: the `text` column, read in record batches (pyarrow, imported only when needed).

Order is deterministic: the paths as given, each folder or glob expanded in sorted order (a folder
recursively), then the order inside each file. Errors name the file (and the line, or the byte offset of
a non-UTF-8 byte), so a bad file in a folder of thousands is found at once.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".parquet")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")  # one or more blank (or whitespace-only) lines


def corpus_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursively) and glob patterns → the corpus files, deduplicated, in a fixed order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
            if not found:
                raise ValueError(f"corpus folder {p} has no {'/'.join(SUFFIXES)} files")
            files += found
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise ValueError(f"{p}: unsupported corpus file type (expected {', '.join(SUFFIXES)})")
            files.append(p)
        elif glob.has_magic(str(p)):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            matched = [m for m in matched if m.is_file() and m.suffix in SUFFIXES]
            if not matched:
                raise ValueError(f"corpus pattern {p} matches no {'/'.join(SUFFIXES)} file")
            files += matched
        else:
            raise ValueError(f"corpus path {p} does not exist")
    if not files:
        raise ValueError("empty corpus: no paths given")
    seen: set[Path] = set()  # a file named twice (a folder and a glob) is read once
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _decode(data: bytes, path: Path, base: int = 0, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line is not None else str(path)
        raise ValueError(
            f"{where}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte offset {base + e.start})"
        ) from None


def _txt(path: Path, split_on_blank_lines: bool) -> Iterator[str]:
    text = _decode(path.read_bytes(), path)
    if not split_on_blank_lines:
        if text.strip():
            yield text
        return
    for doc in _BLANK_LINES.split(text):
        doc = doc.strip("\n")
        if doc.strip():
            yield doc


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = _decode(raw, path, offset, number)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg}, column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                keys = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{number}: no string field {text_field!r} (has: {keys})")
            if record[text_field].strip():
                yield record[text_field]


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading .parquet files needs pyarrow: pip install pyarrow") from None
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors differ by version; name the file either way
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    names = file.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(names)})")
    for batch in file.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def iter_documents(
    paths: str | Path | Sequence[str | Path],
    text_field: str = "text",
    split_on_blank_lines: bool = True,
) -> Iterator[str]:
    """Every non-empty document of the corpus, in a fixed order (see the module docstring).

    Raises ValueError naming the file for: a missing path, a folder or glob with no corpus file, an empty
    file, a non-UTF-8 byte (with its offset), a JSONL line that is not JSON or lacks `text_field`.
    """
    for path in corpus_files(paths):
        n = 0
        if path.suffix == ".txt":
            docs = _txt(path, split_on_blank_lines)
        elif path.suffix == ".jsonl":
            docs = _jsonl(path, text_field)
        else:
            docs = _parquet(path, text_field)
        for doc in docs:
            n += 1
            yield doc
        if n == 0:
            raise ValueError(f"{path}: no text (the file is empty or only whitespace)")
