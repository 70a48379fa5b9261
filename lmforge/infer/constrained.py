"""Constrained decoding: at each step, mask the logits so only tokens that keep the output a valid prefix
of a language (a JSON schema, a regex, a list of choices) can be chosen.

Willard & Louf 2023 ("Efficient Guided Generation for Large Language Models") compile the language to an
automaton and precompute, per state, the set of vocabulary tokens whose bytes the automaton can read:
sampling under the mask can only produce valid output, and each step costs a look-up instead of a scan
of the vocabulary. We let llguidance (pip `llguidance`, the engine behind Guidance and vLLM's structured
outputs) compile schemas and regexes: it lexes with derivative-based regexes over a token trie and parses
JSON schemas as a context-free grammar (so nesting, integer ranges and maxItems are exact), and gives a
token bitmask in well under a millisecond per step on a 49k vocabulary. Its vocabulary is built from our
own tokenizer (`decode_bytes([i])` for every id), so any of our tokenizers works, byte-level BPE or
SentencePiece. The masking in the sampler (`apply_constraint`) and the end-token rule are ours.

Costs are cached at two levels: the tokenizer-side index (the token trie: ~0.4 s for 49k tokens, ~3.5 s for
Gemma's 262k) once per (tokenizer, vocab size), and each compiled grammar once (LRU); a Constraint is a cheap
copy (~1 µs) of the compiled grammar's start state.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

import llguidance
import numpy as np
import torch

from lmforge.infer.generate import end_ids

NEG_INF = float("-inf")
GRAMMAR_CACHE_SIZE = 128  # compiled grammars kept per tokenizer

# JSON as models usually write it ({"a": 1, "b": [2, 3]}), with no free whitespace anywhere else: a
# greedy model would otherwise happily emit newlines or spaces forever and never close the object.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _TokenizerAdapter:
    """What llguidance's LLTokenizer reads from a tokenizer: every id's bytes, the special ids, encode."""

    def __init__(self, tokenizer, n: int):
        self.is_tokenizer_wrapper = True
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.tokens: list[bytes] = []
        for i in range(n):
            try:
                self.tokens.append(tokenizer.decode_bytes([i]))
            except (ValueError, KeyError):  # a gap in the ids: an empty token, which matches nothing
                self.tokens.append(b"")
        # Special tokens (<|im_start|>, ...) must never spell out their text inside a JSON string.
        self.special_token_ids = sorted(i for i in getattr(tokenizer, "special_tokens", {}).values() if i < n)
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, allow_special=False)


class _Compiled:
    """The tokenizer-side index for one (tokenizer, vocab size), and the grammars compiled against it."""

    def __init__(self, tokenizer, vocab_size: int):
        n = min(tokenizer.vocab_size, vocab_size)  # ids past the model's vocab can never be sampled
        ends = [i for i in sorted(end_ids(tokenizer)) if i < vocab_size]
        if not ends:
            raise ValueError(
                f"the tokenizer has no end token below vocab_size={vocab_size} (eos_id={tokenizer.eos_id})"
            )
        self.vocab_size, self.n = vocab_size, n
        adapter = _TokenizerAdapter(tokenizer, n)
        self.lltok = llguidance.LLTokenizer(adapter, n_vocab=n, eos_token=ends)
        # Ids the tokenizer really has (gaps in its ids are False); ids n..vocab_size are the model's padding.
        self.real = np.array([bool(t) for t in adapter.tokens], dtype=np.bool_)
        self.real[ends] = True
        self.grammars: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self.lock = threading.Lock()

    def start(self, grammar: str, what: str) -> llguidance.LLMatcher:
        """A matcher at the start of `grammar`, compiled once (LRU) and copied per use."""
        with self.lock:
            matcher = self.grammars.get(grammar)
            if matcher is not None:
                self.grammars.move_to_end(grammar)
                return matcher.deep_copy()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltok)
        if is_error:
            raise ValueError(f"cannot compile {what}: {messages[0]}")
        matcher = llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"cannot compile {what}: {matcher.get_error()}")
        with self.lock:
            self.grammars[grammar] = matcher
            if len(self.grammars) > GRAMMAR_CACHE_SIZE:
                self.grammars.popitem(last=False)
        return matcher.deep_copy()


_compiled: weakref.WeakKeyDictionary[Any, dict[int, _Compiled]] = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def _compiled_for(tokenizer, vocab_size: int | None) -> _Compiled:
    """The cached index for this tokenizer object (dropped with it) and vocab size."""
    vocab_size = tokenizer.vocab_size if vocab_size is None else int(vocab_size)
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    with _compiled_lock:
        per_size = _compiled.setdefault(tokenizer, {})
        if vocab_size not in per_size:
            per_size[vocab_size] = _Compiled(tokenizer, vocab_size)
        return per_size[vocab_size]


class Constraint:
    """One generation's state in the compiled language."""

    def __init__(self, matcher: llguidance.LLMatcher, compiled: _Compiled):
        self._matcher = matcher
        self._compiled = compiled
        self._allowed: torch.Tensor | None = None  # this state's mask, computed on first ask
        self.ids: list[int] = []  # the tokens consumed so far

    @property
    def vocab_size(self) -> int:
        return self._compiled.vocab_size

    def allowed(self) -> torch.Tensor:
        """(V,) bool on the CPU: the tokens that keep the output valid. The end token is in it exactly
        when the output is complete; padding ids past the tokenizer's vocab never are. The tensor is
        cached for this state: read it, do not modify it in place."""
        if self._allowed is None:
            # numpy, not torch: on a busy CPU torch's threaded kernels cost ~20 ms here, numpy ~20 µs.
            bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)  # bit i of byte k: id 8k+i
            mask = np.zeros(self.vocab_size, dtype=np.bool_)  # padding ids past the tokenizer stay False
            n = self._compiled.n
            mask[:n] = np.unpackbits(bits, bitorder="little")[:n].view(np.bool_) & self._compiled.real
            if self._matcher.is_error():
                raise RuntimeError(f"constraint engine error: {self._matcher.get_error()}")
            if not mask.any():
                raise ValueError(f"no token can continue the constrained output {self._text()!r}")
            self._allowed = torch.from_numpy(mask)
        return self._allowed

    def advance(self, token_id: int) -> None:
        """Consume the chosen token. Raises ValueError (and keeps the state) if it was not allowed."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size or not self.allowed()[token_id]:
            raise ValueError(
                f"token {token_id} is not allowed after {self._text()!r} "
                f"({int(self.allowed().sum())} tokens are)"
            )
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(
                f"constraint engine rejected allowed token {token_id}: {self._matcher.get_error()}"
            )
        self.ids.append(token_id)
        self._allowed = None

    def is_done(self) -> bool:
        """The output is complete and nothing more may follow: only the end token is allowed."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def clone(self) -> Constraint:
        """An independent copy of this state (before any advance: a fresh one per sample). No recompile."""
        other = Constraint(self._matcher.deep_copy(), self._compiled)
        other.ids = list(self.ids)
        return other

    def _text(self) -> str:
        return self._compiled.lltok.decode_str(self.ids)


def json_schema_constraint(schema: dict | str, tokenizer, vocab_size: int | None = None) -> Constraint:
    """Output that is one JSON document valid under `schema` (a dict, or its JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot compile JSON schema: invalid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"cannot compile JSON schema: expected a JSON object, got {type(schema).__name__}")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema),
            defaults=JSON_OPTIONS,  # property order is output order
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot compile JSON schema: {e}") from None
    compiled = _compiled_for(tokenizer, vocab_size)
    return Constraint(compiled.start(grammar, "JSON schema"), compiled)


def json_object_constraint(tokenizer, vocab_size: int | None = None) -> Constraint:
    """Any JSON object (OpenAI's response_format={"type": "json_object"})."""
    return json_schema_constraint({"type": "object"}, tokenizer, vocab_size)


def regex_constraint(pattern: str, tokenizer, vocab_size: int | None = None) -> Constraint:
    """Output that fullmatches `pattern` (Rust regex syntax, as Python's for the common cases;
    note \\d and \\w are Unicode-aware in both)."""
    if not isinstance(pattern, str):
        raise ValueError(f"cannot compile regex: expected a string, got {type(pattern).__name__}")
    compiled = _compiled_for(tokenizer, vocab_size)
    return Constraint(compiled.start(llguidance.LLMatcher.grammar_from_regex(pattern), "regex"), compiled)


def choice_constraint(choices: list[str], tokenizer, vocab_size: int | None = None) -> Constraint:
    """Output that is exactly one of `choices`."""
    if (
        not isinstance(choices, list | tuple)
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError(
            f"cannot compile choice: expected a non-empty list of non-empty strings, got {choices!r}"
        )
    grammar = llguidance.grammar_from("choice", json.dumps(list(choices)))
    compiled = _compiled_for(tokenizer, vocab_size)
    return Constraint(compiled.start(grammar, "choice"), compiled)


def apply_constraint(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """logits (B, V) or (V,) with -inf where `allowed` ((V,) or (B, V) bool) is False.

    A mask shorter than the logits (a tokenizer-sized mask for a model with padded embeddings) leaves
    the extra ids disallowed.
    """
    if allowed.dtype != torch.bool:
        raise ValueError(f"allowed must be a bool tensor, got {allowed.dtype}")
    v, n = logits.shape[-1], allowed.shape[-1]
    if n > v:
        raise ValueError(f"the mask covers {n} ids but the logits only {v}")
    if n < v:
        allowed = torch.nn.functional.pad(allowed, (0, v - n), value=False)
    return logits.masked_fill(~allowed.to(logits.device), NEG_INF)
