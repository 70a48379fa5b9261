"""One HTTP request's generations: fan out its sequences to the engine, follow each one's text and tokens.

An OpenAI request can ask for several sequences at once (`n`, or a list of prompts); each becomes its own
engine request, so the continuous-batching engine (lmforge.infer.engine) interleaves them with everyone
else's. A `Plan` holds them, `Fanout` merges their event streams into one, and `Choice` turns one
sequence's events into text (UTF-8 safe, cut at stop strings), token counts and logprobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from lmforge.infer.engine import AsyncEngine, GenerationRequest, TokenEvent
from lmforge.serve.textstream import TextStream


class Fanout:
    """Runs several engine requests concurrently and yields (sequence index, event) as they arrive.

    Each request is read by its own task; `cancel(i)` or `close()` cancels the task, which closes the
    engine's event iterator and so cancels the request in the engine (its KV blocks are freed).
    """

    def __init__(self, engine: AsyncEngine, requests: Sequence[GenerationRequest]):
        self._engine = engine
        self._queue: asyncio.Queue[tuple[int, TokenEvent | Exception]] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._pump(i, r)) for i, r in enumerate(requests)]

    async def _pump(self, i: int, req: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(self._engine.generate(req)) as events:
                async for event in events:
                    self._queue.put_nowait((i, event))
        except Exception as e:  # noqa: BLE001 — handed to the reader, who knows how to report it
            self._queue.put_nowait((i, e))

    async def next(self) -> tuple[int, TokenEvent | Exception]:
        return await self._queue.get()

    def cancel(self, i: int) -> None:
        self._tasks[i].cancel()

    def close(self) -> None:
        """Cancel every request still running. Synchronous on purpose: it runs in `finally` blocks of
        cancelled tasks, where an await would be cancelled again before it could do anything."""
        for task in self._tasks:
            task.cancel()


class Choice:
    """One generated sequence as the client sees it."""

    def __init__(self, index: int, tokenizer, stop: Sequence[str] = ()):
        self.index = index
        self.text = TextStream(tokenizer, stop)
        self.tokens = 0  # completion tokens (the stop token is not one)
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.logprobs: list[tuple[int, float, list[tuple[int, float]] | None]] = []
        self._sent_logprobs = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def hit_stop_string(self) -> bool:
        return self.text.stopped

    def on_event(self, event: TokenEvent) -> str:
        """Take one engine event; return the text that can be sent now."""
        if self.done:
            return ""  # a late event after a stop string ended this sequence
        delta = ""
        if event.token_id is not None:
            self.tokens += 1
            if event.logprob is not None:
                self.logprobs.append((event.token_id, event.logprob, event.top_logprobs))
            delta = self.text.push(event.token_id)
            if self.text.stopped:
                self.finish_reason = "stop"
                return delta
        if event.finish_reason is not None:
            self.error = getattr(event, "error", None) or "the engine reported an error"
            self.finish_reason = event.finish_reason
            delta += self.text.finish()
        return delta

    def new_logprobs(self) -> list[tuple[int, float, list[tuple[int, float]] | None]]:
        """The logprob entries not handed out yet (streaming sends each once)."""
        new = self.logprobs[self._sent_logprobs :]
        self._sent_logprobs = len(self.logprobs)
        return new


async def next_event(fanout: Fanout, choices: Sequence[Choice]) -> tuple[Choice, str] | None:
    """Wait for the next event of a running choice; apply it. None when every choice is done.

    Raises ValueError when the engine refused a request (before it produced anything)."""
    while not all(c.done for c in choices):
        i, event = await fanout.next()
        if isinstance(event, Exception):
            if isinstance(event, ValueError):
                raise event
            choices[i].finish_reason, choices[i].error = "error", f"{type(event).__name__}: {event}"
            return choices[i], ""
        choice = choices[i]
        if choice.done:
            continue
        delta = choice.on_event(event)
        if choice.hit_stop_string:
            fanout.cancel(i)  # the text is complete: free the engine's slot now
        return choice, delta
    return None


async def run_to_end(fanout: Fanout, choices: Sequence[Choice]) -> None:
    """Drive every choice to its end (the non-streaming path)."""
    while await next_event(fanout, choices) is not None:
        pass


async def events(fanout: Fanout, choices: Sequence[Choice]) -> AsyncIterator[tuple[Choice, str]]:
    while (item := await next_event(fanout, choices)) is not None:
        yield item


@dataclass
class Plan:
    """One HTTP request's work: an engine request and a client-side Choice per sequence, n per prompt
    (choice i samples prompt i // n)."""

    requests: list[GenerationRequest]
    choices: list[Choice]
    prompts: list[list[int]]
    n: int
    logprobs: int | None  # as GenerationRequest.logprobs: None (off), 0 (chosen token) or k (top k too)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def prompt_of(self, choice: Choice) -> list[int]:
        return self.prompts[choice.index // self.n]
