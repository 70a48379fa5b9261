"""train_bpe must equal a plain, obviously-correct BPE trainer on real corpora.

The naive trainer below recounts every pair of every word for every merge: slow, but it states the
semantics directly. The fast trainer (incremental counts, heap, parallel chunked pre-tokenization)
must produce the same vocabulary and the same merges in the same order.
"""

from __future__ import annotations

from collections import Counter

import pytest
import regex

from lmforge.tokenizer import BPETokenizer, train_bpe
from lmforge.tokenizer.patterns import CL100K_PATTERN, GPT2_PATTERN, SMOLLM_PATTERNS
from lmforge.tokenizer.train import count_file, count_pretokens


def naive_train_bpe(text: str, vocab_size: int, special_tokens: list[str], pattern: str):
    vocab = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    for b in range(256):
        vocab[len(vocab)] = bytes([b])
    docs = regex.split("|".join(regex.escape(s) for s in special_tokens), text) if special_tokens else [text]
    words: Counter = Counter()
    for doc in docs:
        for piece in regex.findall(pattern, doc):
            data = piece.encode("utf-8", errors="surrogateescape")
            words[tuple(data[i : i + 1] for i in range(len(data)))] += 1
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # most frequent; ties: greatest (bytes, bytes)
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        new_words: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return vocab, merges


def _cases(data):
    text = data / "text"
    shakespeare = (text / "tinyshakespeare.txt").read_bytes()[:40_000]
    melville = (text / "gutenberg/melville-moby_dick.txt").read_bytes()[50_000:80_000]
    stories = (text / "tinystories_val_subset.txt").read_bytes()[:30_000].replace(b"\n\n", b"<|endoftext|>")
    wiki = (text / "wiki_demo.txt").read_bytes()[:20_000]
    latin1 = "naïve café façade Ærø - déjà vu ".encode("latin-1") * 50 + shakespeare[:5000]
    return [
        ("shakespeare", shakespeare, 600, [], GPT2_PATTERN),
        ("melville", melville, 500, ["<|endoftext|>"], GPT2_PATTERN),
        ("stories+specials", stories, 700, ["<|endoftext|>", "<pad>"], GPT2_PATTERN),
        ("wiki-cl100k", wiki, 450, [], CL100K_PATTERN),
        ("latin1-bytes", latin1, 400, [], GPT2_PATTERN),
        ("tiny-vocab", shakespeare[:5000], 257, ["<s>"], GPT2_PATTERN),
        (
            "repeats",
            b"aaaa aaaaa aaaaaaa abab ababab bbbb aabb   \n\n\n\n    " * 30 + shakespeare[:2000],
            330,
            [],
            GPT2_PATTERN,
        ),
    ]


@pytest.mark.parametrize("case", range(7))
def test_matches_naive_reference(data, tmp_path, case):
    name, raw, vocab_size, specials, pattern = _cases(data)[case]
    path = tmp_path / f"{name}.txt"
    path.write_bytes(raw)
    vocab, merges = train_bpe(path, vocab_size, specials, pattern=pattern, progress=False)
    ref_vocab, ref_merges = naive_train_bpe(
        raw.decode("utf-8", errors="surrogateescape"), vocab_size, specials, pattern
    )
    assert merges == ref_merges, name
    assert vocab == ref_vocab, name
    assert len(vocab) == vocab_size


def test_parallel_chunked_counts_equal_whole_file(data, tmp_path):
    """Chunks cut at safe boundaries and special tokens must not change a single pre-token count."""
    stories = (data / "text/tinystories_val_subset.txt").read_text(encoding="utf-8")
    text = (
        stories.replace("\n\n", "<|endoftext|>") + (data / "text/wiki_demo.txt").read_text(encoding="utf-8")
    ) * 2
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    for pattern in (GPT2_PATTERN, CL100K_PATTERN, SMOLLM_PATTERNS):
        whole = count_pretokens(text, pattern, ["<|endoftext|>"])
        assert count_file(path, pattern, ["<|endoftext|>"], num_workers=2) == whole
        assert count_file(path, pattern, ["<|endoftext|>"], num_workers=1) == whole
    import lmforge.tokenizer.train as train

    old = train.CHUNK_BYTES
    train.CHUNK_BYTES = 50_000  # force many chunks, each cut at a safe place
    try:
        assert count_file(path, GPT2_PATTERN, ["<|endoftext|>"], num_workers=2) == count_pretokens(
            text, GPT2_PATTERN, ["<|endoftext|>"]
        )
    finally:
        train.CHUNK_BYTES = old


def test_trained_tokenizer_round_trips(data, tmp_path):
    path = data / "text/tinyshakespeare.txt"
    vocab, merges = train_bpe(path, 1000, ["<|endoftext|>"], progress=False)
    tok = BPETokenizer(vocab, merges, ["<|endoftext|>"])
    assert tok.special_tokens == {"<|endoftext|>": 0}
    text = path.read_text(encoding="utf-8")[:50_000] + "<|endoftext|>ünïcödé 🤗"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # it compresses (~2.4 bytes per token at 1k)
    # encode_iterable over lines yields exactly encode() of the whole, lazily
    lines = text.splitlines(keepends=True)
    assert list(tok.encode_iterable(iter(lines))) == ids
    tok.save(tmp_path / "tok.json")
    assert BPETokenizer.from_file(tmp_path / "tok.json").encode(text) == ids


def test_encode_iterable_on_a_file_equals_encode(data):
    from lmforge.tokenizer.formats import load_tiktoken

    tok = load_tiktoken(data / "tokenizers/tiktoken/cl100k_base.tiktoken")
    path = data / "text/wikitext2_raw/wiki.test.raw"
    with open(path, encoding="utf-8") as f:
        streamed = list(tok.encode_iterable(f))
    assert streamed == tok.encode(path.read_text(encoding="utf-8"))


def test_encode_iterable_with_special_tokens_across_lines(data):
    from lmforge.tokenizer.formats import load_tiktoken

    tok = load_tiktoken(data / "tokenizers/tiktoken/cl100k_base.tiktoken")
    stories = (data / "text/tinystories_val_subset.txt").read_text(encoding="utf-8")[:200_000]
    text = stories.replace("\n\n", "<|endoftext|>\n").replace("Once", "<|endoftext|><|fim_prefix|>Once")
    lines = text.splitlines(keepends=True)
    assert list(tok.encode_iterable(lines)) == tok.encode(text)
    # chunks that cut special tokens in half
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert list(tok.encode_iterable(chunks)) == tok.encode(text)
    assert list(tok.encode_iterable(chunks, allow_special=False)) == tok.encode(text, allow_special=False)
