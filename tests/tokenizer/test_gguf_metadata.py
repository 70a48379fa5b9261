"""Our GGUF metadata reader returns what llama.cpp's own reader (gguf.GGUFReader) returns."""

from __future__ import annotations

import math

import pytest

from lmforge.tokenizer.gguf_metadata import read_gguf_metadata

gguf = pytest.importorskip("gguf")


def test_same_fields_as_gguf_reader(smollm2_gguf):
    ours = read_gguf_metadata(smollm2_gguf)
    reader = gguf.GGUFReader(str(smollm2_gguf))
    ref = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        if isinstance(value, float):
            assert math.isclose(ours[key], value, rel_tol=1e-7), key
        else:
            assert ours[key] == value, key
    assert ours["tokenizer.ggml.model"] == "gpt2" and len(ours["tokenizer.ggml.tokens"]) == 49152


def test_gemma_tokenizer_fields(gemma_gguf):
    meta = read_gguf_metadata(gemma_gguf)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.scores"]) == 262144


def test_truncated_files_fail_cleanly(smollm2_gguf, tmp_path):
    head = smollm2_gguf.read_bytes()[:3_000_000]
    for n in (4, 10, 23, 24, 100, 5000, 400_000, 1_000_000):  # all inside the metadata section
        f = tmp_path / f"cut{n}.gguf"
        f.write_bytes(head[:n])
        with pytest.raises(ValueError, match="truncated or corrupt|not a GGUF"):
            read_gguf_metadata(f)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_gguf_metadata(empty)
