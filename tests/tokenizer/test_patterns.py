"""Our pre-tokenizer regexes cut text exactly as Hugging Face's Split pre-tokenizer (Oniguruma) does."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.bpe import compile_pretokenizer, pretokenize
from lmforge.tokenizer.patterns import PATTERNS
from tests.tokenizer.texts import HARD_CASES, corpus_texts, paragraphs

tokenizers = pytest.importorskip("tokenizers")


def hf_pretokenizer(pattern):
    from tokenizers import Regex, pre_tokenizers

    stages = [pattern] if isinstance(pattern, str) else list(pattern)
    # Oniguruma reads "{1,3}+" as "({1,3})+" (one or more runs), not as a possessive interval like
    # tiktoken's Rust engine and the regex module do; an atomic group says the same thing to it.
    stages = [p.replace(r"\p{N}{1,3}+", r"(?>\p{N}{1,3})") for p in stages]
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated") for p in stages])


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_matches_hf_split(data, name):
    ours = compile_pretokenizer(PATTERNS[name])
    ref = hf_pretokenizer(PATTERNS[name])
    texts = [t for t in HARD_CASES if "\ud800" not in t]
    for text in corpus_texts(data).values():
        texts.extend(paragraphs(text, 60))
    for text in texts:
        assert pretokenize(text, ours) == [p for p, _ in ref.pre_tokenize_str(text)], repr(text[:60])


def test_fast_path_equals_general_path(data):
    """findall (fast path for known patterns) and the gap-keeping splitter agree."""
    text = (data / "text/wiki_demo.txt").read_text(encoding="utf-8")[:200_000]
    for name in ("gpt2", "cl100k", "o200k", "llama3"):
        compiled = compile_pretokenizer(PATTERNS[name])
        assert compiled[0].findall(text) == pretokenize(text, compiled)
