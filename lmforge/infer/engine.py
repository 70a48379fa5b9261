"""Continuous batching: requests join and leave the running batch between decode steps.

Static batching runs a padded batch until its longest member finishes: rows that finished early idle,
and new requests wait for the whole batch. Orca (Yu et al. 2022, "Orca: A Distributed Serving System for
Transformer-Based Generative Models") schedules per iteration instead: each `Engine.step()`
  1. drops cancelled requests and frees their KV blocks;
  2. admits waiting requests, first come first served, while fewer than max_batch run and the paged
     cache (paged.py) has blocks for prompt + max_tokens — reserved at admission, so a running request
     can never run out of memory mid-answer and nothing is ever preempted;
  3. prefills each newly admitted prompt on its own (B = 1) and samples its first token;
  4. decodes one token for every other running request in one batched (B, 1) forward: rows of
     different lengths share it through the cache's per-row lengths;
  5. retires finished requests (end token, max_tokens, constraint done) and frees their blocks at once.
Each request keeps its own SamplingParams, seeded generator, seen-token history (for penalties) and
constraint, so its tokens are the ones `generate.stream_ids` would give it alone.

`AsyncEngine` runs step() in one background thread and hands each request's events to an asyncio
consumer (the HTTP server); a consumer that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from lmforge.infer.paged import PagedKVCache
from lmforge.infer.sampling import NEG_INF, SamplingParams, process_logits, sample

log = logging.getLogger(__name__)

DEFAULT_SEQ_CAP = 2048  # tokens per sequence the default pool is sized for


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0))
    stop_ids: set[int] = field(default_factory=set)  # end tokens: finish with reason "stop", not emitted
    logprobs: int | None = None  # None: none; 0: the chosen token's logprob; k > 0: also the top k
    constraint: object | None = None  # has .allowed() -> (V,) bool tensor, .advance(token_id), .is_done()


@dataclass
class TokenEvent:
    request_id: int
    token_id: int | None  # None on a final event that carries no token
    logprob: float | None = None  # log-softmax of the *unprocessed* logits (float32), as OpenAI reports
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # None while running; "stop", "length", "cancelled", "error"


@dataclass
class _Sequence:
    """A request's running state."""

    id: int
    req: GenerationRequest
    generator: torch.Generator | None
    seen: torch.Tensor  # (1, prompt + max_tokens): prompt then generated ids, the first n_seen valid
    n_seen: int
    generated: int = 0
    last: int | None = None  # the token sampled last, not yet fed to the model

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits is this row's choice: batch it with the other such rows."""
        p = self.req.params
        return (
            p.temperature == 0
            and self.req.constraint is None
            and p.repetition_penalty == 1.0
            and not p.frequency_penalty
            and not p.presence_penalty
            and not p.logit_bias
        )


class Engine:
    """Continuous batching over a paged KV cache. Not thread-safe except add_request and cancel, which
    may be called from other threads while one thread calls step()."""

    def __init__(
        self,
        model,
        max_batch: int = 16,
        num_blocks: int | None = None,
        block_size: int = 16,
        max_seq_len: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        if num_blocks is None:
            per_seq = min(self.max_seq_len, DEFAULT_SEQ_CAP)
            num_blocks = max_batch * -(-per_seq // block_size)
        self.cache = PagedKVCache(
            model.config, num_blocks, block_size, model.embed.weight.dtype, model.device
        )
        self.vocab_size = model.config.vocab_size
        self._ids = itertools.count()
        self._lock = threading.Lock()  # guards waiting and cancelled against add_request/cancel threads
        self.waiting: deque[tuple[int, GenerationRequest]] = deque()
        self._cancelled: set[int] = set()
        self.running: dict[int, _Sequence] = {}  # in admission order
        self.steps = 0
        self.tokens_generated = 0

    # -- the public API ------------------------------------------------------------------------------------

    def add_request(self, req: GenerationRequest) -> int:
        """Queue a request; returns its id. A request that could never run is a ValueError now."""
        self._validate(req)
        with self._lock:
            rid = next(self._ids)
            self.waiting.append((rid, req))
        return rid

    def cancel(self, request_id: int) -> None:
        """Stop a request; at the next step its blocks are freed and it gets a "cancelled" event."""
        with self._lock:
            self._cancelled.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running or self._cancelled)

    @property
    def stats(self) -> dict:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "free_blocks": self.cache.num_free_blocks,
            "num_blocks": self.cache.num_blocks,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
        }

    def step(self) -> list[TokenEvent]:
        """One scheduling iteration; returns the events it produced, in order. Never raises for one
        request's fault: that request gets an "error" event and the rest go on."""
        events: list[TokenEvent] = []
        self._drop_cancelled(events)
        fresh = self._admit(events)
        decoding = [s for s in self.running.values() if s.id not in fresh]
        if decoding:
            self._decode(decoding, events)
        self.steps += 1
        return events

    # -- scheduling ----------------------------------------------------------------------------------------

    def _validate(self, req: GenerationRequest) -> None:
        if not isinstance(req, GenerationRequest):
            raise ValueError(f"expected a GenerationRequest, got {type(req).__name__}")
        if not req.prompt_ids:
            raise ValueError("prompt_ids is empty: a request needs at least one prompt token")
        bad = [i for i in req.prompt_ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids must be ints in [0, {self.vocab_size}), got {bad[:5]}")
        if not isinstance(req.max_tokens, int) or req.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {req.max_tokens!r}")
        if req.logprobs is not None and not 0 <= req.logprobs <= self.vocab_size:
            raise ValueError(f"logprobs must be None or in [0, {self.vocab_size}], got {req.logprobs}")
        total = len(req.prompt_ids) + req.max_tokens
        if total > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(req.prompt_ids)} tokens) + max_tokens ({req.max_tokens}) = {total} tokens "
                f"is more than the maximum sequence length {self.max_seq_len}"
            )
        blocks = self.cache.blocks_for(total)
        if blocks > self.cache.num_blocks:
            raise ValueError(
                f"prompt ({len(req.prompt_ids)} tokens) + max_tokens ({req.max_tokens}) = {total} tokens "
                f"needs {blocks} KV blocks of {self.cache.block_size}, but the whole pool has "
                f"{self.cache.num_blocks}"
            )
        c = req.constraint
        if c is not None and not all(
            callable(getattr(c, m, None)) for m in ("allowed", "advance", "is_done")
        ):
            raise ValueError("constraint must have .allowed(), .advance(token_id) and .is_done()")

    def _drop_cancelled(self, events: list[TokenEvent]) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                kept = deque(item for item in self.waiting if item[0] not in cancelled)
                dropped = [rid for rid, _ in self.waiting if rid in cancelled]
                self.waiting = kept
            else:
                dropped = []
        for rid in dropped:
            events.append(TokenEvent(rid, None, finish_reason="cancelled"))
        for rid in [r for r in self.running if r in cancelled]:
            self._finish(rid)
            events.append(TokenEvent(rid, None, finish_reason="cancelled"))

    def _admit(self, events: list[TokenEvent]) -> set[int]:
        """Admit the queue's head while it fits (strict FIFO: a big request is not starved by small
        ones behind it); prefill each and sample its first token. Returns the ids admitted."""
        fresh: set[int] = set()
        while len(self.running) < self.max_batch:
            with self._lock:
                if not self.waiting:
                    break
                rid, req = self.waiting[0]
                if not self.cache.allocate(rid, len(req.prompt_ids) + req.max_tokens):
                    break  # wait for blocks to come back
                self.waiting.popleft()
            fresh.add(rid)
            try:
                seq = self._start(rid, req)
                self.running[rid] = seq
                prompt = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.model.device)
                with torch.inference_mode():
                    logits = self.model(prompt, cache=self.cache.view([rid]), logits_to_keep=1)[:, -1]
                self._choose(seq, logits, None, events)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the others
                self._fail(rid, e, events)
        return fresh

    def _start(self, rid: int, req: GenerationRequest) -> _Sequence:
        p = req.params
        device = self.model.device
        generator = None
        if p.temperature > 0:
            # No seed: draw one from torch's global generator, so torch.manual_seed still reproduces runs.
            seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()))
            generator = torch.Generator(device=device).manual_seed(seed)
        seen = torch.zeros(1, len(req.prompt_ids) + req.max_tokens, dtype=torch.long, device=device)
        seen[0, : len(req.prompt_ids)] = torch.tensor(req.prompt_ids, dtype=torch.long)
        return _Sequence(rid, req, generator, seen, len(req.prompt_ids))

    def _decode(self, seqs: list[_Sequence], events: list[TokenEvent]) -> None:
        """Feed every row its last token in one (B, 1) forward and choose each row's next token."""
        ids = [s.id for s in seqs]
        tokens = torch.tensor([[s.last] for s in seqs], dtype=torch.long, device=self.model.device)  # (B, 1)
        try:
            with torch.inference_mode():
                logits = self.model(tokens, cache=self.cache.view(ids))[:, -1]  # (B, V)
        except Exception:  # noqa: BLE001
            # The batch failed: find the culprit row by row (lengths only advance after a whole
            # forward, so a retry rewrites the same slots).
            log.exception("batched decode failed; retrying row by row")
            for s in seqs:
                try:
                    with torch.inference_mode():
                        row = self.model(tokens[ids.index(s.id)][None], cache=self.cache.view([s.id]))[:, -1]
                    self._choose(s, row, None, events)
                except Exception as e:  # noqa: BLE001
                    self._fail(s.id, e, events)
            return
        greedy = logits.argmax(dim=-1).tolist()  # one argmax for all the plain-greedy rows
        for i, s in enumerate(seqs):
            try:
                self._choose(s, logits[i : i + 1], greedy[i] if s.plain_greedy else None, events)
            except Exception as e:  # noqa: BLE001
                self._fail(s.id, e, events)

    # -- one row's token -----------------------------------------------------------------------------------

    def _choose(
        self, seq: _Sequence, logits: torch.Tensor, token: int | None, events: list[TokenEvent]
    ) -> None:
        """Sample seq's next token from its raw logits (1, V) (or take `token`, already chosen), emit it."""
        req, p = seq.req, seq.req.params
        if token is None:
            scores = logits
            if req.constraint is not None:
                allowed = torch.as_tensor(req.constraint.allowed(), device=logits.device).bool()
                if allowed.shape != (logits.shape[-1],):
                    raise ValueError(
                        f"constraint.allowed() must be a ({logits.shape[-1]},) bool tensor, "
                        f"got shape {tuple(allowed.shape)}"
                    )
                if not allowed.any():
                    raise ValueError("the constraint allows no token")
                # Masked before the sampling filters, so top-k / top-p choose among allowed tokens only.
                scores = logits.float().masked_fill(~allowed, NEG_INF)
            seen = seq.seen[:, : seq.n_seen]
            token = int(sample(process_logits(scores, p, seen), p, seq.generator))
        logprob = top = None
        if req.logprobs is not None:
            lp = torch.log_softmax(logits.float(), dim=-1)[0]  # (V,)
            logprob = float(lp[token])
            if req.logprobs > 0:
                values, indices = lp.topk(req.logprobs)
                top = list(zip(indices.tolist(), values.tolist()))
        if token in req.stop_ids:
            self._finish(seq.id)
            events.append(TokenEvent(seq.id, None, finish_reason="stop"))
            return
        seq.seen[0, seq.n_seen] = token
        seq.n_seen += 1
        seq.generated += 1
        seq.last = token
        self.tokens_generated += 1
        finish = None
        if req.constraint is not None:
            req.constraint.advance(token)
            if req.constraint.is_done():
                finish = "stop"
        if finish is None and seq.generated >= req.max_tokens:
            finish = "length"
        if finish is not None:
            self._finish(seq.id)
        events.append(TokenEvent(seq.id, token, logprob, top, finish))

    def _finish(self, rid: int) -> None:
        self.running.pop(rid, None)
        self.cache.free(rid)

    def _fail(self, rid: int, error: Exception, events: list[TokenEvent]) -> None:
        log.warning("request %d failed: %s: %s", rid, type(error).__name__, error)
        self._finish(rid)
        events.append(TokenEvent(rid, None, finish_reason="error"))


class AsyncEngine:
    """Runs Engine.step() in one background thread; `generate` streams one request's events to asyncio."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()  # makes add_request + registering its queue one act for dispatch
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current step; open streams end with "cancelled"."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            queues, self._queues = self._queues, {}
        for rid, (loop, queue) in queues.items():
            self.engine.cancel(rid)
            self._put(loop, queue, TokenEvent(rid, None, finish_reason="cancelled"))

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Yield this request's events until its final one. A ValueError for a request that could never
        run is raised at the first iteration. Stopping early (aclose, or the task is cancelled) cancels
        the request in the engine."""
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        with self._lock:
            rid = self.engine.add_request(req)
            self._queues[rid] = (loop, queue)
        self._wake.set()
        done = False
        try:
            while not done:
                event = await queue.get()
                done = event.finish_reason is not None
                yield event
        finally:
            with self._lock:
                self._queues.pop(rid, None)
            if not done:
                self.engine.cancel(rid)
                self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception:  # noqa: BLE001 - step should never raise; if it does, fail every stream
                log.exception("engine step failed")
                with self._lock:
                    queues, self._queues = self._queues, {}
                for rid, (loop, queue) in queues.items():
                    self.engine.cancel(rid)
                    self._put(loop, queue, TokenEvent(rid, None, finish_reason="error"))
                continue
            with self._lock:
                targets = [(self._queues.get(e.request_id), e) for e in events]
            for target, event in targets:
                if target is not None:
                    self._put(*target, event)

    @staticmethod
    def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, event: TokenEvent) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening
            pass
