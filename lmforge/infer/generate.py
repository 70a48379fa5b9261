"""Autoregressive generation: prefill the prompt once, then decode one token at a time from the cache."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from lmforge.infer.compiled import compiled_decode_step, decode_step, new_static_cache
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.sampling import SamplingParams, process_logits, sample


def stream_ids(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    eos_ids: set[int] | None = None,
    constraint=None,
    compiled: bool = False,
) -> Iterator[int]:
    """Yield new token ids for input_ids (1, T), up to max_new_tokens, stopping at an end token.

    Prefill runs the whole prompt through the model once, filling the KV cache; each decode step feeds
    only the token just chosen. constraint (lmforge.infer.constrained): only tokens it allows are
    chosen, and generation ends when it is complete. compiled: decode steps run as one torch.compile
    graph over a static cache (lmforge.infer.compiled: faster on a CPU once compiled).
    """
    params = params or SamplingParams(temperature=0)
    if input_ids.shape[0] != 1:
        raise ValueError("generation takes one prompt (batch of 1)")
    needed = input_ids.shape[1] + max_new_tokens
    if compiled:
        cache = new_static_cache(model, 1, needed)
        step = compiled_decode_step
    else:
        cache = KVCache(model.config, 1, needed, model.embed.weight.dtype, model.device)
        step = decode_step
    generator = (
        torch.Generator(device=model.device).manual_seed(params.seed) if params.seed is not None else None
    )
    seen = input_ids
    with torch.inference_mode():
        logits = model(input_ids, cache=cache, logits_to_keep=1)[:, -1]  # prefill
        for _ in range(max_new_tokens):
            if constraint is not None:  # before the filters, so top-k/top-p choose among allowed tokens
                if constraint.is_done():
                    return
                logits = logits.float().masked_fill(~constraint.allowed().to(logits.device), float("-inf"))
            logits = process_logits(logits, params, seen)
            nxt = sample(logits, params, generator)  # (1,)
            token = int(nxt)
            if eos_ids and token in eos_ids:
                return
            if constraint is not None:
                constraint.advance(token)
            yield token
            seen = torch.cat([seen, nxt[:, None]], dim=1)
            logits = step(model, nxt[:, None], cache)  # decode: one token


def batch_generate_ids(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    eos_ids: set[int] | None = None,
    pad_id: int = 0,
    until: Callable[[int, list[int]], bool] | None = None,
    keep_end: bool = False,
) -> list[list[int]]:
    """Generate for several prompts of different lengths at once; each row's new ids, end token excluded
    unless keep_end (RL needs the exact token that ended a row: it was sampled, so it is an action).

    until(row, new_ids), when given, is asked after every new token whether that row is finished (the
    evaluator stops a row once its text holds a stop string, e.g. "Question:" in GSM8K).

    Prompts are left-padded to one length so every row's next token sits in the same column: the attention
    mask hides the padding from every query, and position ids count only real tokens, so each row computes
    what it would alone (tests check batched == one by one). Finished rows keep feeding a pad token until
    the last row ends; their outputs are ignored.
    """
    params = params or SamplingParams(temperature=0)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("batch_generate_ids needs at least one prompt, and every prompt needs a token")
    b, width = len(prompts), max(len(p) for p in prompts)
    device = model.device
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((b, width), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, device=device)
        mask[row, width - len(p) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): real tokens count from 0 in every row
    cache = KVCache(model.config, b, width + max_new_tokens, model.embed.weight.dtype, device)
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    penalties = params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
    seen = [torch.tensor([p], device=device) for p in prompts]  # per row: padding is never "seen"
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * b
    with torch.inference_mode():
        logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1)[:, -1]
        for _ in range(max_new_tokens):
            if penalties:  # each row is penalized by its own history
                logits = torch.cat([process_logits(logits[r : r + 1], params, seen[r]) for r in range(b)])
            else:
                logits = process_logits(logits, params)
            nxt = sample(logits, params, generator)  # (B,)
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                if eos_ids and token in eos_ids:
                    done[row] = True
                    if keep_end:
                        out[row].append(token)
                else:
                    out[row].append(token)
                    seen[row] = torch.cat([seen[row], nxt[row, None, None]], dim=1)
                    done[row] = len(out[row]) == max_new_tokens or bool(until and until(row, out[row]))
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            fed = torch.where(torch.tensor(done, device=device), pad_id, nxt)[:, None]  # (B, 1)
            logits = model(fed, attention_mask=mask, position_ids=positions, cache=cache)[:, -1]
    return out


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


class StopText:
    """Cut streamed text at the first stop string. A tail that could be the start of a stop string is held
    back until the next piece shows whether it is one, so a stop string is never half printed."""

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [x for x in stops if x]
        self.buffer = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add generated text; return what is safe to show. Sets .stopped once a stop string appears."""
        if self.stopped:
            return ""
        self.buffer += piece
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        hits = [i for i in (self.buffer.find(x) for x in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        hold = max(
            (n for x in self.stops for n in range(min(len(x) - 1, len(self.buffer)), 0, -1)
             if self.buffer.endswith(x[:n])),
            default=0,
        )  # fmt: skip
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        """The held-back tail, once generation has ended without a stop string."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


# Tokens that end a chat turn: a model trained with a template stops on its turn's end token, which is not
# always the tokenizer's eos (Gemma's turn ends with <end_of_turn>, its eos is <eos>).
TURN_ENDS = ("<|endoftext|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


def end_ids(tok) -> set[int]:
    """The ids that end a generation: the tokenizer's end token and any turn-end token it has."""
    return {i for i in (tok.eos_id, *(tok.token_to_id(t) for t in TURN_ENDS)) if i is not None}


def prompt_ids(tok, prompt_or_messages) -> list[int]:
    """The ids a model sees for a prompt. A conversation (a list of messages) goes through the model's own
    chat template, ending with the assistant's turn; the template writes any BOS itself. Plain text gets
    the special tokens the model file asks for (Gemma needs its <bos>, or it babbles)."""
    if isinstance(prompt_or_messages, str):
        return tok.encode(prompt_or_messages, add_special_tokens=True)
    return tok.encode(tok.apply_chat_template(list(prompt_or_messages), add_generation_prompt=True))


def _prepare(model_or_name, prompt_or_messages, ignore_eos: bool, sampling: dict):
    if isinstance(model_or_name, str):
        from lmforge.model import load_model

        model = load_model(model_or_name)
    else:
        model = model_or_name
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("this model has no tokenizer: set model.tokenizer or load it by name or path")
    ids = torch.tensor([prompt_ids(tok, prompt_or_messages)], device=model.device)
    context = model.config.max_seq_len
    if ids.shape[1] >= context:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens; the model's context window is {context}")
    return model, tok, ids, SamplingParams(**sampling), (set() if ignore_eos else end_ids(tok))


def stream(
    model_or_name,
    prompt_or_messages,
    max_tokens: int = 256,
    ignore_eos: bool = False,
    stop: Iterable[str] = (),
    constraint=None,
    compiled: bool = False,
    **sampling: Any,
) -> Iterator[str]:
    """Generate and yield text deltas as they come (UTF-8 safe), ending before any `stop` string.
    constraint: see lmforge.infer.constrained; compiled: see stream_ids. Sampling options as in
    SamplingParams; greedy unless temperature > 0 is given."""
    sampling.setdefault("temperature", 0.0)
    model, tok, ids, params, eos = _prepare(model_or_name, prompt_or_messages, ignore_eos, sampling)
    max_tokens = min(max_tokens, model.config.max_seq_len - ids.shape[1])
    cut = StopText(stop)
    for piece in text_deltas(tok, stream_ids(model, ids, max_tokens, params, eos, constraint, compiled)):
        out = cut.push(piece)
        if out:
            yield out
        if cut.stopped:
            return  # closing the token stream stops the model
    tail = cut.flush()
    if tail:
        yield tail


def generate(
    model_or_name,
    prompt_or_messages,
    max_tokens: int = 256,
    ignore_eos: bool = False,
    stop: Iterable[str] = (),
    n: int = 1,
    constraint=None,
    **sampling: Any,
) -> str | list[str]:
    """Generate text for a prompt or a list of chat messages. Greedy unless temperature > 0 is given.
    n > 1 returns a list of n samples, generated together as one batch."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return "".join(
            stream(model_or_name, prompt_or_messages, max_tokens, ignore_eos, stop, constraint, **sampling)
        )
    if constraint is not None:
        raise ValueError("n > 1 with a constraint: use the server's engine, which keeps one state per sample")
    sampling.setdefault("temperature", 0.0)
    model, tok, ids, params, eos = _prepare(model_or_name, prompt_or_messages, ignore_eos, sampling)
    max_tokens = min(max_tokens, model.config.max_seq_len - ids.shape[1])
    rows = batch_generate_ids(model, [ids[0].tolist()] * n, max_tokens, params, eos)
    texts = []
    for row in rows:
        cut = StopText(stop)
        texts.append("".join(cut.push(p) for p in text_deltas(tok, row)) + cut.flush())
    return texts
