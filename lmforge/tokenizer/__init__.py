"""Tokenizers: text ↔ token ids.

- `bpe.py`: byte-level BPE (GPT-2, GPT-4, Llama 3, SmolLM2): encode/decode with a per-piece cache
- `train.py`: training byte-level BPE with incremental pair counts
- `patterns.py`: the pre-tokenizer regexes of the field
- `sentencepiece.py`: SentencePiece-style BPE (Llama 2, Gemma): ▁ for spaces, scores, byte fallback
- `wordpiece.py`: BERT's WordPiece with its basic tokenizer
- `formats.py`, `gguf_metadata.py`: files (ours, tokenizer.json, GPT-2, tiktoken, GGUF)
- `chat_template.py`: rendering a model's Jinja2 chat template
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.tokenizer.base import Tokenizer
from lmforge.tokenizer.bpe import BPETokenizer
from lmforge.tokenizer.patterns import (
    CL100K_PATTERN,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    O200K_PATTERN,
    SMOLLM_PATTERNS,
)
from lmforge.tokenizer.sentencepiece import SentencePieceTokenizer
from lmforge.tokenizer.train import train_bpe
from lmforge.tokenizer.wordpiece import WordPieceTokenizer

__all__ = [
    "BPETokenizer",
    "SentencePieceTokenizer",
    "WordPieceTokenizer",
    "Tokenizer",
    "train_bpe",
    "load_tokenizer",
    "GPT2_PATTERN",
    "CL100K_PATTERN",
    "O200K_PATTERN",
    "LLAMA3_PATTERN",
    "SMOLLM_PATTERNS",
]


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load any tokenizer we know: a model name, a folder, a GGUF, tokenizer.json, vocab.txt, .tiktoken ..."""
    from lmforge.registry import resolve

    path = resolve(name_or_path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return load_tokenizer(path / "tokenizer.json")
        if (path / "vocab.txt").is_file():
            from lmforge.tokenizer.wordpiece import load_wordpiece

            return load_wordpiece(path)
        return BPETokenizer.from_file(path)
    if path.suffix == ".gguf":
        from lmforge.tokenizer.gguf_metadata import read_gguf_metadata

        kind = read_gguf_metadata(path).get("tokenizer.ggml.model")
        if kind == "llama":
            from lmforge.tokenizer.sentencepiece import load_sentencepiece

            return load_sentencepiece(path)
        if kind == "gpt2":
            return BPETokenizer.from_file(path)
        raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (known: 'gpt2', 'llama')")
    if path.name.endswith(".txt") and path.name != "merges.txt":
        from lmforge.tokenizer.wordpiece import load_wordpiece

        return load_wordpiece(path)
    if path.suffix == ".json":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable JSON tokenizer file: {e}") from e
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and model.get("type") == "WordPiece":
            from lmforge.tokenizer.wordpiece import load_wordpiece

            return load_wordpiece(path)
        if isinstance(model, dict) and model.get("byte_fallback"):
            from lmforge.tokenizer.sentencepiece import load_sentencepiece

            return load_sentencepiece(path)
    return BPETokenizer.from_file(path)
