"""Pre-tokenizer patterns: the regex that cuts text into pieces before BPE sees it.

BPE never merges across a piece boundary, so the pattern decides what a token *can* be: GPT-2 keeps
a leading space with the word (" hello"), keeps letters, digits and punctuation apart, and splits the
English contractions ('s, 't, ...). Later models tuned this: cl100k (GPT-4) and Llama 3 make the
contractions case-insensitive and cap digit runs at three (so numbers tokenize in a regular way);
o200k (GPT-4o) also splits CamelCase words; SmolLM2 splits every digit alone before the GPT-2 regex.

A pre-tokenizer here is a sequence of patterns applied one after another, as llama.cpp does
(`regex_exprs`): each pattern cuts every piece that the previous one left. Most tokenizers use one.
"""

from __future__ import annotations

# Radford et al. 2019 (GPT-2), as in OpenAI's encoder.py and Hugging Face's ByteLevel pre-tokenizer.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4's cl100k_base (tiktoken). Possessive quantifiers (++ ?+) only make the regex faster.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# GPT-4o's o200k_base (tiktoken): splits "CamelCase" into "Camel" + "Case" and attaches contractions.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Llama 3 (Meta's tokenizer.json and llama.cpp's "llama-bpe"): cl100k's rules written without
# possessive quantifiers.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# SmolLM2 / llama.cpp "smollm": every digit on its own, then the GPT-2 regex on what is left.
# (Hugging Face writes this as Sequence[Digits(individual_digits=True), ByteLevel].)
SMOLLM_PATTERNS = (r"\p{N}", GPT2_PATTERN)

PATTERNS: dict[str, str | tuple[str, ...]] = {
    "gpt2": GPT2_PATTERN,
    "cl100k": CL100K_PATTERN,
    "o200k": O200K_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "smollm": SMOLLM_PATTERNS,
}

# llama.cpp's `tokenizer.ggml.pre` names → our patterns (the ones we know to be exact).
GGUF_PRE_PATTERNS: dict[str, str | tuple[str, ...]] = {
    "default": GPT2_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "gpt2": GPT2_PATTERN,
    "smollm": SMOLLM_PATTERNS,
    "llama3": LLAMA3_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama-v3": LLAMA3_PATTERN,
    "dbrx": CL100K_PATTERN,
    "gpt-4o": O200K_PATTERN,
}
