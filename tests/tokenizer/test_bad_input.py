"""Bad files and arguments give a clear error that names the file and the problem."""

from __future__ import annotations

import json

import pytest

from lmforge.tokenizer import BPETokenizer, load_tokenizer, train_bpe
from lmforge.tokenizer.formats import load_gguf_bpe, load_gpt2, load_hf_json, load_tiktoken


def test_missing_files(tmp_path):
    for loader in (load_hf_json, load_tiktoken, load_gguf_bpe):
        with pytest.raises(FileNotFoundError, match="nope"):
            loader(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        BPETokenizer.from_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        train_bpe(tmp_path / "missing.txt", 300)


def test_malformed_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        load_hf_json(bad)
    bad.write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}), encoding="utf-8")
    with pytest.raises(ValueError, match="model.type 'BPE'"):
        load_hf_json(bad)


def test_merge_with_unknown_token(tmp_path, data):
    enc = json.loads((data / "tokenizers/gpt2_openai/encoder.json").read_text(encoding="utf-8"))
    (tmp_path / "encoder.json").write_text(json.dumps(enc), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nzzzq qqq\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.bpe: merge #1 .* not in the vocabulary"):
        load_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected two tokens"):
        load_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_bad_tiktoken_line(tmp_path):
    f = tmp_path / "x.tiktoken"
    f.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"x.tiktoken:2"):
        load_tiktoken(f)


def test_not_a_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_tokenizer(f)
    f.write_bytes(b"GGUF\x03\x00\x00\x00")  # truncated header
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_gguf_bpe(f)


def test_vocab_size_too_small(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("hello hello", encoding="utf-8")
    with pytest.raises(ValueError, match="smaller than the base alphabet"):
        train_bpe(f, 257, ["<a>", "<b>"])


def test_non_utf8_corpus_is_bytes_not_a_crash(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"caf\xe9 caf\xe9 \xff\xfe hello hello \x80\x81" * 20)
    vocab, merges = train_bpe(f, 270)
    # Invalid bytes are kept as bytes (never U+FFFD) and merged like any other symbols.
    assert b"\xff\xfe" in vocab.values() and b" \x80\x81" in vocab.values()
    assert (b"ca", b"f") in merges
    # Every pair got merged before the vocabulary filled up: training stops early, it does not crash.
    assert len(vocab) == 256 + len(merges) < 270


def test_decode_unknown_id_and_bad_types(data):
    tok = load_tiktoken(data / "tokenizers/tiktoken/cl100k_base.tiktoken")
    with pytest.raises(ValueError, match="token id 999999999 is not in the vocabulary"):
        tok.decode([1, 999999999])
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_unknown_format_and_pattern(tmp_path):
    f = tmp_path / "weird.json"
    f.write_text(json.dumps([1, 2, 3]), encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer format we know"):
        BPETokenizer.from_file(f)
    with pytest.raises(ValueError, match="invalid pre-tokenizer pattern"):
        BPETokenizer({i: bytes([i]) for i in range(256)}, [], pattern="(unclosed")


def test_cli_errors_are_one_line(capsys):
    from lmforge.cli import main

    with pytest.raises(SystemExit, match="error: .*neither an existing path nor a known model"):
        main(["tokenizer", "encode", "-t", "no-such-model-anywhere", "x"])
