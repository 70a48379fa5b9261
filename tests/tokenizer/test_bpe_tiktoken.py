"""Byte-level BPE must encode exactly as tiktoken does (gpt2, cl100k_base, o200k_base)."""

from __future__ import annotations

import random

import pytest

from lmforge.tokenizer.formats import load_gpt2, load_tiktoken
from tests.tokenizer.texts import HARD_CASES, corpus_texts

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is a dev oracle: pip install -e '.[dev]'")

ENCODINGS = ["gpt2", "cl100k_base", "o200k_base"]


@pytest.fixture(scope="module")
def pairs(data, tiktoken_cache):
    """(ours, tiktoken's) for each encoding, loaded from the same shared files."""
    tok = data / "tokenizers"
    ours = {
        "gpt2": load_gpt2(tok / "gpt2_openai/encoder.json", tok / "gpt2_openai/vocab.bpe"),
        "cl100k_base": load_tiktoken(tok / "tiktoken/cl100k_base.tiktoken"),
        "o200k_base": load_tiktoken(tok / "tiktoken/o200k_base.tiktoken"),
    }
    return {name: (ours[name], tiktoken.get_encoding(name)) for name in ENCODINGS}


@pytest.fixture(scope="module")
def corpora(data):
    return corpus_texts(data)


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_shared_text_identical(pairs, corpora, name):
    ours, ref = pairs[name]
    assert len(corpora) >= 18
    for fname, text in corpora.items():
        got, want = ours.encode_ordinary(text), ref.encode_ordinary(text)
        if got != want:
            i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
            pytest.fail(f"{name} differs on {fname} at token {i}: {got[i : i + 5]} vs {want[i : i + 5]}")
        assert ours.decode(got) == text


@pytest.mark.parametrize("name", ENCODINGS)
def test_hard_cases_identical(pairs, name):
    ours, ref = pairs[name]
    for text in HARD_CASES:
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text), repr(text)
        assert ours.encode(text) == ref.encode(text, allowed_special="all"), repr(text)
        if "\ud800" not in text:  # lone surrogates are replaced by U+FFFD, as in tiktoken
            assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name", ENCODINGS)
def test_long_pieces_use_the_heap_path_identically(pairs, name):
    """Pieces over 64 bytes take the O(n log n) merge; it must agree with the reference too."""
    ours, ref = pairs[name]
    rng = random.Random(0)
    alphabet = "ab \n\t.1é中🤗"
    for n in (65, 100, 1000, 20000):
        for text in ("a" * n, " " * n, "ab" * (n // 2), "".join(rng.choice(alphabet) for _ in range(n))):
            assert ours.encode_ordinary(text) == ref.encode_ordinary(text), (n, text[:20])
    word = "".join(rng.choice("abcdefghij") for _ in range(500))
    assert ours._bpe(word) == tuple(ref.encode_ordinary(word))


@pytest.mark.parametrize("name", ENCODINGS)
def test_special_tokens(pairs, name):
    ours, ref = pairs[name]
    text = "a<|endoftext|>b <|endoftext|><|endoftext|>\n<|endoftext"
    assert ours.encode(text) == ref.encode(text, allowed_special="all")
    assert ours.encode(text, allow_special=False) == ref.encode_ordinary(text)
    assert ours.decode(ours.encode(text)) == text


def test_random_bytes_round_trip(pairs):
    """decode never raises; invalid UTF-8 comes back as U+FFFD exactly like bytes.decode(errors='replace')."""
    ours, ref = pairs["cl100k_base"]
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(100000) for _ in range(20)]
        assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode_bytes(ours.encode("héllo")) == "héllo".encode()


def test_rank_vocab_recovers_merges(pairs):
    """tiktoken files carry ranks, not merges: the recovered merges drive the same encoding."""
    from lmforge.tokenizer.bpe import BPETokenizer

    ours, ref = pairs["gpt2"]
    rank_tok = BPETokenizer(ours.vocab, None, ours.special_tokens, ours.pattern, merge_mode="ranks")
    recovered = BPETokenizer(ours.vocab, rank_tok.merges, ours.special_tokens, ours.pattern)
    assert rank_tok.merges == ours.merges  # GPT-2's rank order is its merge order
    text = "The quick brown fox jumps over the lazy dog's back 1234567!"
    assert recovered.encode(text) == ref.encode(text) == rank_tok.encode(text)
