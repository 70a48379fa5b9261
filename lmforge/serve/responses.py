"""What OpenAI's responses look like: completion objects, streamed chunks (server-sent events), logprobs.

Layouts follow https://platform.openai.com/docs/api-reference/chat and .../completions: a chat stream
opens each choice with a {"role": "assistant"} delta, sends content deltas, closes each choice with an
empty delta and its finish_reason, then (with stream_options.include_usage) one chunk with no choices and
the usage, then `data: [DONE]`. An error after the headers went out can only be told in the stream: as
OpenAI does, a `data: {"error": {...}}` event, which the official clients raise as an APIError.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from lmforge.serve.generation import Choice, Fanout, Plan, events
from lmforge.serve.protocol import APIError

DONE = "data: [DONE]\n\n"


def sse(data: Any) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that always runs `on_close`, even when the client left before the
    body began (then the body generator never starts, and its own `finally` would never run)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy buffering
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def token_text(tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.decode_bytes([token_id])
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer, entries) -> dict[str, Any]:
    """The chat format: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}."""
    content = []
    for token_id, logprob, top in entries:
        text, raw = token_text(tokenizer, token_id)
        tops = []
        for tid, lp in top or []:
            t, b = token_text(tokenizer, tid)
            tops.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": tops})
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, entries, offset: int = 0) -> dict[str, Any]:
    """The legacy completions format: parallel lists of the tokens, their logprobs, the top alternatives
    ({token: logprob}) and each token's character offset in the returned text."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, logprob, top in entries:
        text, _ = token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(logprob)
        top_logprobs.append({token_text(tokenizer, tid)[0]: lp for tid, lp in top or []})
        text_offset.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}  # fmt: skip


def usage(plan: Plan) -> dict[str, int]:
    completion = sum(c.tokens for c in plan.choices)
    total = plan.prompt_tokens + completion
    return {"prompt_tokens": plan.prompt_tokens, "completion_tokens": completion, "total_tokens": total}


def generation_error(choice: Choice) -> APIError:
    return APIError(500, f"generation failed: {choice.error}", None, "generation_error")


# ---- whole responses ----


def chat_completion(tokenizer, plan: Plan, meta: dict) -> dict[str, Any]:
    choices = []
    for c in plan.choices:
        lp = chat_logprobs(tokenizer, c.logprobs) if plan.logprobs is not None else None
        message = {"role": "assistant", "content": c.text.output, "refusal": None}
        choices.append(
            {"index": c.index, "message": message, "logprobs": lp, "finish_reason": c.finish_reason}
        )
    return {**meta, "object": "chat.completion", "choices": choices, "usage": usage(plan)}


def text_completion(tokenizer, plan: Plan, meta: dict, echo: bool = False) -> dict[str, Any]:
    choices = []
    for c in plan.choices:
        prefix = tokenizer.decode(plan.prompt_of(c)) if echo else ""
        lp = completion_logprobs(tokenizer, c.logprobs, len(prefix)) if plan.logprobs is not None else None
        text = prefix + c.text.output
        choices.append({"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage(plan)}


# ---- streams ----


async def chat_chunks(tokenizer, plan: Plan, fanout: Fanout, meta: dict, include_usage: bool,
                      on_close: Callable[[], None]) -> AsyncIterator[str]:  # fmt: skip
    head = {**meta, "object": "chat.completion.chunk", **({"usage": None} if include_usage else {})}

    def chunk(c: Choice, delta: dict, finish: str | None = None, logprobs=None) -> str:
        choice = {"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    try:
        for c in plan.choices:
            yield chunk(c, {"role": "assistant", "content": ""})
        async for c, text in events(fanout, plan.choices):
            if c.finish_reason == "error":
                yield sse(generation_error(c).body())
                return
            new = c.new_logprobs() if plan.logprobs is not None else []
            if text or new:
                lp = chat_logprobs(tokenizer, new) if new else None
                yield chunk(c, {"content": text}, None, lp)
            if c.done:
                yield chunk(c, {}, c.finish_reason)
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage(plan)})
        yield DONE
    except ValueError as e:  # the engine refused a request: the headers are out, so say it in the stream
        yield sse(APIError(400, str(e)).body())
    finally:
        on_close()


async def text_chunks(tokenizer, plan: Plan, fanout: Fanout, meta: dict, include_usage: bool,
                      on_close: Callable[[], None], echo: bool = False) -> AsyncIterator[str]:  # fmt: skip
    head = {**meta, "object": "text_completion", **({"usage": None} if include_usage else {})}
    offsets = [0] * len(plan.choices)  # characters sent per choice, for the logprobs' text_offset

    def chunk(c: Choice, text: str, finish: str | None = None, logprobs=None) -> str:
        choice = {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    try:
        if echo:
            for c in plan.choices:
                prefix = tokenizer.decode(plan.prompt_of(c))
                offsets[c.index] = len(prefix)
                yield chunk(c, prefix)
        async for c, text in events(fanout, plan.choices):
            if c.finish_reason == "error":
                yield sse(generation_error(c).body())
                return
            new = c.new_logprobs() if plan.logprobs is not None else []
            lp = None
            if new:
                lp = completion_logprobs(tokenizer, new, offsets[c.index])
                offsets[c.index] += sum(map(len, lp["tokens"]))
            if text or new or c.done:
                yield chunk(c, text, c.finish_reason, lp)
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage(plan)})
        yield DONE
    except ValueError as e:
        yield sse(APIError(400, str(e)).body())
    finally:
        on_close()
