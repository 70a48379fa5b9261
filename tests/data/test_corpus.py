"""Corpora → documents: text/jsonl/parquet, folders and globs in a fixed order, and every bad input's message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.data import corpus_files, iter_documents


def write_corpus(root: Path) -> list[Path]:
    (root / "sub").mkdir()
    (root / "a.txt").write_text("first story about a cat.\n\nsecond story, a dog.\n \n\nthird one\nends.\n")
    (root / "b.jsonl").write_text(
        json.dumps({"text": "a web page", "url": "x"}) + "\n\n" + json.dumps({"text": "más texto"}) + "\n"
    )
    (root / "sub" / "c.txt").write_text("nested")
    (root / "notes.md").write_text("not a corpus file")  # ignored in a folder
    return [root / "a.txt", root / "b.jsonl", root / "sub" / "c.txt"]


def test_text_jsonl_folders_and_globs(tmp_path):
    files = write_corpus(tmp_path)
    docs = list(iter_documents(files))
    assert docs == [
        "first story about a cat.",
        "second story, a dog.",
        "third one\nends.",
        "a web page",
        "más texto",
        "nested",
    ]
    # one document per file instead of one per blank-line-separated block
    assert list(iter_documents(files[0], split_on_blank_lines=False)) == [files[0].read_text()]
    assert list(iter_documents([tmp_path])) == docs  # a folder: recursive, sorted, only corpus suffixes
    assert corpus_files([tmp_path]) == files
    assert list(iter_documents([str(tmp_path / "**" / "*.txt")])) == docs[:3] + docs[5:]  # a glob
    # the order is the order of the arguments; a file named twice is read once
    assert list(iter_documents([files[1], tmp_path])) == docs[3:5] + docs[:3] + docs[5:]
    # another field name
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "in body"}) + "\n")
    assert list(iter_documents(tmp_path / "d.jsonl", text_field="body")) == ["in body"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="reading .parquet needs pyarrow: pip install pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["one row", "", "two row"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list(iter_documents(tmp_path / "t.parquet", text_field="content")) == ["one row", "two row"]
    with pytest.raises(ValueError, match=r"t\.parquet: no column 'text' \(columns: content, n\)"):
        list(iter_documents(tmp_path / "t.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable parquet file"):
        list(iter_documents(tmp_path / "bad.parquet"))


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        ValueError, match=r"t\.parquet: reading \.parquet files needs pyarrow: pip install pyarrow"
    ):
        list(iter_documents(tmp_path / "t.parquet"))


def test_real_corpora(data):
    c4 = list(iter_documents(data / "text" / "c4_demo.jsonl"))
    assert len(c4) == 300 and all(d.strip() for d in c4)
    plays = list(iter_documents(data / "text" / "tinyshakespeare.txt"))  # speeches, split on blank lines
    assert len(plays) > 7000 and plays[0].startswith("First Citizen:\nBefore we proceed any further")
    whole = list(iter_documents(data / "text" / "tinyshakespeare.txt", split_on_blank_lines=False))
    assert len(whole) == 1 and len(whole[0]) > 1_000_000


def test_bad_input_names_the_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("ok\ncafé".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    (tmp_path / "list.jsonl").write_text('["x"]\n')
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    (tmp_path / "nothing").mkdir()
    cases = {
        "empty.txt": "empty.txt: no text (the file is empty or only whitespace)",
        "blank.jsonl": "blank.jsonl: no text",
        "latin1.txt": "latin1.txt: not UTF-8 text (invalid byte 0xe9 at byte offset 6)",
        "latin1.jsonl": "latin1.jsonl:2: not UTF-8 text (invalid byte 0xe9 at byte offset 28)",
        "bad.jsonl": "bad.jsonl:2: not a JSON line (Expecting value, column 1)",
        "nofield.jsonl": "nofield.jsonl:2: no string field 'text' (has: 'body')",
        "list.jsonl": "list.jsonl:1: no string field 'text' (has: list)",
        "doc.pdf": "doc.pdf: unsupported corpus file type (expected .txt, .jsonl, .parquet)",
        "nothing": "has no .txt/.jsonl/.parquet files",
        "missing.txt": "missing.txt does not exist",
        "*.nope": "matches no .txt/.jsonl/.parquet file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError) as e:
            list(iter_documents([tmp_path / name]))
        assert message in str(e.value), (name, str(e.value))
        assert str(tmp_path) in str(e.value)  # the full path is named
    with pytest.raises(ValueError, match="empty corpus: no paths given"):
        list(iter_documents([]))
