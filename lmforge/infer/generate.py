"""Autoregressive generation: prefill the prompt once, then decode one token at a time from the cache."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from lmforge.infer.kv_cache import KVCache
from lmforge.infer.sampling import SamplingParams, process_logits, sample


def stream_ids(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    eos_ids: set[int] | None = None,
) -> Iterator[int]:
    """Yield new token ids for input_ids (1, T), up to max_new_tokens, stopping at an end token.

    Prefill runs the whole prompt through the model once, filling the KV cache; each decode step feeds
    only the token just chosen.
    """
    params = params or SamplingParams(temperature=0)
    if input_ids.shape[0] != 1:
        raise ValueError("generation takes one prompt (batch of 1)")
    cache = KVCache(
        model.config, 1, input_ids.shape[1] + max_new_tokens, model.embed.weight.dtype, model.device
    )
    generator = (
        torch.Generator(device=model.device).manual_seed(params.seed) if params.seed is not None else None
    )
    seen = input_ids
    with torch.inference_mode():
        logits = model(input_ids, cache=cache, logits_to_keep=1)[:, -1]  # prefill
        for _ in range(max_new_tokens):
            nxt = sample(process_logits(logits, params, seen), params, generator)  # (1,)
            token = int(nxt)
            if eos_ids and token in eos_ids:
                return
            yield token
            seen = torch.cat([seen, nxt[:, None]], dim=1)
            logits = model(nxt[:, None], cache=cache)[:, -1]  # decode: one token


def generate_ids(model, input_ids: torch.Tensor, max_new_tokens: int, params: SamplingParams | None = None,
                 eos_ids: set[int] | None = None) -> torch.Tensor:  # fmt: skip
    """The new token ids (N,) of stream_ids, collected."""
    return torch.tensor(list(stream_ids(model, input_ids, max_new_tokens, params, eos_ids)), dtype=torch.long)


def text_deltas(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Token ids → text pieces that never split a UTF-8 character: bytes wait until the character is whole."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        piece = decoder.decode(tokenizer.decode_bytes([i]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _prepare(model_or_name, prompt_or_messages, max_tokens: int, ignore_eos: bool, sampling: dict):
    if isinstance(model_or_name, str):
        from lmforge.model import load_model

        model = load_model(model_or_name)
    else:
        model = model_or_name
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("this model has no tokenizer: set model.tokenizer or load it by name or path")
    if isinstance(prompt_or_messages, str):
        text = prompt_or_messages
    else:  # a conversation: the model's own chat template, ending with the assistant's turn
        text = tok.apply_chat_template(list(prompt_or_messages), add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text)], device=model.device)
    eos = (
        set() if ignore_eos else {i for i in (tok.eos_id, tok.token_to_id("<|endoftext|>")) if i is not None}
    )
    return model, tok, ids, SamplingParams(**sampling), eos


def stream(
    model_or_name, prompt_or_messages, max_tokens: int = 256, ignore_eos: bool = False, **sampling: Any
) -> Iterator[str]:
    """Generate and yield text deltas as they come (UTF-8 safe). Sampling options as in SamplingParams."""
    model, tok, ids, params, eos = _prepare(
        model_or_name, prompt_or_messages, max_tokens, ignore_eos, sampling
    )
    yield from text_deltas(tok, stream_ids(model, ids, max_tokens, params, eos))


def generate(
    model_or_name, prompt_or_messages, max_tokens: int = 256, ignore_eos: bool = False, **sampling: Any
) -> str:
    """Generate text for a prompt or a list of chat messages. Greedy unless temperature > 0 is given."""
    sampling.setdefault("temperature", 0.0)
    return "".join(stream(model_or_name, prompt_or_messages, max_tokens, ignore_eos, **sampling))
