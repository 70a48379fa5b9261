"""What every tokenizer shares: ids ↔ tokens, special tokens and chat templates.

The concrete algorithms (byte-level BPE, SentencePiece-style BPE, WordPiece) live in their own modules
and implement `encode` and `decode`; this base holds the bookkeeping they have in common.
"""

from __future__ import annotations

from typing import Any

from lmforge.tokenizer.chat_template import render_chat_template


class MissCache(dict):
    """key → tuple of ids; a miss computes once. Cleared when full, so memory stays bounded.

    Tokenizers cache the result per pre-token: with `map(cache.__getitem__, pieces)` the hot loop
    stays in C and only a miss runs Python.
    """

    __slots__ = ("compute", "limit")

    def __init__(self, compute, limit: int):
        super().__init__()
        self.compute = compute
        self.limit = limit

    def __missing__(self, key: str) -> tuple[int, ...]:
        ids = self.compute(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = ids
        return ids


def token_str(t: Any) -> str | None:
    """A special token as Hugging Face config files write it: a string or {"content": ...}."""
    return t.get("content") if isinstance(t, dict) else t


class Tokenizer:
    """Base class: subclasses set `vocab` (id → bytes), `special_tokens` (str → id) and implement encode/decode."""

    vocab: dict[int, bytes]
    special_tokens: dict[str, int]
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1 if self.vocab else 0

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self.special_tokens.get(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(self.eos_token) if self.eos_token else None

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        if not hasattr(self, "_token_ids"):
            self._token_ids = {b: i for i, b in self.vocab.items()}
        return self._token_ids.get(token.encode("utf-8"))

    def id_to_token(self, i: int) -> bytes:
        return self.vocab[i]

    def encode_batch(self, texts: list[str], **kwargs: Any) -> list[list[int]]:
        return [self.encode(t, **kwargs) for t in texts]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render messages with the model's chat template (as Hugging Face's apply_chat_template does)."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template; pass chat_template=... explicitly")
        context = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **kwargs}
        text = render_chat_template(template, messages, add_generation_prompt, **context)
        return self.encode(text) if tokenize else text
