"""The OpenAI endpoints' logic: check a request, turn it into engine requests, answer or stream.

Every request's sequences go to one shared AsyncEngine (lmforge.infer.engine), where they join the
running batch between decode steps (Orca, Yu et al. 2022), so many clients are served at once. A client
that disconnects cancels its sequences, which frees their KV-cache blocks at the engine's next step.

Limits, each a clear error rather than a slow failure: the prompt must fit the context window, and
prompt + max_tokens too (400, with the numbers); at most `max_concurrent` sequences are in flight,
running or queued (503 beyond it, so a flood is refused at once instead of queueing without end).
Model names: a request's `model` must be the served model's name or one of its registry aliases (any
case), or be left out; anything else is a 404 `model_not_found`, as OpenAI answers, so a client
configured for another model finds out instead of silently getting this one.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import threading
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lmforge.infer.engine import AsyncEngine, GenerationRequest
from lmforge.infer.generate import prompt_ids
from lmforge.infer.sampling import SamplingParams
from lmforge.serve import responses
from lmforge.serve.generation import Choice, Fanout, Plan, run_to_end
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
    invalid,
    parse_body,
)

FINGERPRINT = "lmforge-0.1.0"


def model_aliases(name: str) -> set[str]:
    """The names a request may use for a model: its own and, for a packaged model, the registry's aliases."""
    from lmforge.registry import packaged_model

    names = {name.lower()}
    packaged = packaged_model(name)
    if packaged is not None:
        names |= {a.lower() for a in (packaged.name, *packaged.aliases)}
    return names


async def wait_disconnected(request: Request, every: float = 0.25) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every)


class OpenAIServer:
    """The routes' logic, over one model, its engine and an optional embedder."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_name: str,
        engine: AsyncEngine,
        embedder=None,
        embedder_name: str | None = None,
        api_key: str | None = None,
        max_prompt_tokens: int | None = None,
        max_tokens_limit: int | None = None,
        default_max_tokens: int = 1024,
        max_concurrent: int = 64,
    ):
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.names = model_aliases(model_name)
        self.engine = engine
        self.embedder = embedder
        self.embedder_name = embedder_name
        self.embedder_names = model_aliases(embedder_name) if embedder_name else set()
        self.api_key = api_key
        core = engine.engine
        # The longest sequence (prompt + completion) the engine can ever hold: its length limit, and the
        # block pool, since a request reserves its blocks up front.
        self.context = min(core.max_seq_len, core.cache.num_blocks * core.cache.block_size)
        self.max_prompt_tokens = min(max_prompt_tokens or self.context - 1, self.context - 1)
        self.max_tokens_limit = max_tokens_limit or self.context
        self.default_max_tokens = default_max_tokens
        self.max_concurrent = max_concurrent
        self.vocab_size = model.config.vocab_size
        ends = (tokenizer.eos_id, tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|im_end|>"))
        self.stop_ids = {i for i in ends if i is not None}
        self.active = 0  # sequences in flight (waiting or running in the engine); only the event loop writes
        self.created = int(time.time())
        self._embed_lock = threading.Lock()

    # ---- checks shared by the routes ----

    def check_model(self, name: str | None, names: set[str] | None = None, served: str | None = None) -> None:
        names, served = names or self.names, served or self.model_name
        if name is not None and name.lower() not in names:
            msg = f"the model '{name}' does not exist here; this server serves '{served}'"
            raise APIError(404, msg, "model", "model_not_found")

    def budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The completion's max_tokens, after checking the prompt and the request against the context."""
        ctx = self.context
        if prompt_tokens == 0:
            raise invalid("the prompt is empty", "prompt")
        if prompt_tokens > self.max_prompt_tokens:
            raise invalid(
                f"the prompt has {prompt_tokens} tokens; this server takes at most {self.max_prompt_tokens} "
                f"(the context window is {ctx} tokens)", "messages", "context_length_exceeded",
            )  # fmt: skip
        if max_tokens is None:
            return min(self.default_max_tokens, self.max_tokens_limit, ctx - prompt_tokens)
        if max_tokens > self.max_tokens_limit:
            raise invalid(f"max_tokens is {max_tokens}; this server allows at most {self.max_tokens_limit}",
                          "max_tokens")  # fmt: skip
        if prompt_tokens + max_tokens > ctx:
            raise invalid(
                f"this model's maximum context length is {ctx} tokens, but you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
                "completion); reduce the prompt or max_tokens", "max_tokens", "context_length_exceeded",
            )  # fmt: skip
        return max_tokens

    def sampling(self, body, i: int) -> SamplingParams:
        bias = {}
        for key, value in (body.logit_bias or {}).items():
            if not 0 <= int(key) < self.vocab_size:
                raise invalid(f"logit_bias token id {key} is outside the vocabulary [0, {self.vocab_size})",
                              "logit_bias")  # fmt: skip
            bias[int(key)] = value
        try:
            return SamplingParams(
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
                repetition_penalty=body.repetition_penalty, frequency_penalty=body.frequency_penalty,
                presence_penalty=body.presence_penalty, logit_bias=bias,
                # n samples from one seed: each its own stream, the whole set reproducible
                seed=None if body.seed is None else body.seed + i,
            )  # fmt: skip
        except ValueError as e:
            raise invalid(str(e)) from None

    async def constraint(self, fmt: ResponseFormat | None):
        """The constraint for response_format, compiled off the event loop (constrained.py caches it)."""
        if fmt is None or fmt.type == "text":
            return None
        from lmforge.infer import constrained

        if fmt.type == "json_object":
            build = functools.partial(constrained.json_object_constraint, self.tokenizer, self.vocab_size)
        else:
            schema = (fmt.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise invalid("response_format json_schema needs {'json_schema': {'schema': {...}}}",
                              "response_format")  # fmt: skip
            build = functools.partial(
                constrained.json_schema_constraint, schema, self.tokenizer, self.vocab_size
            )
        try:
            return await asyncio.to_thread(build)
        except ValueError as e:
            raise invalid(f"invalid response_format: {e}", "response_format") from None

    def acquire(self, k: int) -> None:
        """Count k more sequences in flight, or refuse: 400 if k could never run, 503 if not now."""
        if k > self.max_concurrent:
            raise invalid(f"this request asks for {k} sequences (n × prompts); this server runs at most "
                          f"{self.max_concurrent} at once", "n")  # fmt: skip
        if self.active + k > self.max_concurrent:
            busy = f"{self.active} sequences in flight, at most {self.max_concurrent}"
            msg = f"the server is busy ({busy}); retry later"
            raise APIError(503, msg, None, "server_busy")
        self.active += k

    # ---- chat and text completions ----

    async def chat_completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), ChatCompletionRequest)
        self.check_model(body.model)
        if body.tools:
            raise invalid("tools (function calling) are not supported by this server", "tools", None)
        if body.top_logprobs and not body.logprobs:
            raise invalid("top_logprobs needs logprobs=true", "top_logprobs")
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in body.messages]  # fmt: skip
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 — a template raises whatever jinja raises
            raise invalid(f"could not format the messages: {e}", "messages") from None
        prompt = await asyncio.to_thread(self.tokenizer.encode, text)  # a long prompt takes a while
        max_tokens = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        plan = await self.plan(body, [prompt], max_tokens, logprobs)
        return await self.respond(request, body, plan, chat=True)

    async def completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), CompletionRequest)
        self.check_model(body.model)
        if body.suffix:
            raise invalid("suffix (fill-in-the-middle) is not supported by this server", "suffix", None)
        items = body.prompt
        if isinstance(items, str) or (items and isinstance(items[0], int)):
            items = [items]  # one prompt, as text or token ids
        if not items:
            raise invalid("prompt is empty", "prompt")
        prompts = []
        for item in items:
            if isinstance(item, str):
                prompts.append(await asyncio.to_thread(prompt_ids, self.tokenizer, item))  # + BOS if asked
                continue
            if bad := [t for t in item if not 0 <= t < self.vocab_size]:
                raise invalid(
                    f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})", "prompt"
                )
            prompts.append(list(item))
        plan = await self.plan(body, prompts, body.max_tokens, body.logprobs)
        return await self.respond(request, body, plan, chat=False)

    async def plan(
        self, body, prompts: list[list[int]], max_tokens: int | None, logprobs: int | None
    ) -> Plan:
        """An engine request and a Choice for each of the n samples of each prompt."""
        budgets = [self.budget(len(p), max_tokens) for p in prompts]
        constraint = await self.constraint(body.response_format)
        stop_ids = set() if body.ignore_eos else self.stop_ids
        requests, choices = [], []
        for k, (prompt, budget) in enumerate(zip(prompts, budgets)):
            for j in range(body.n):
                i = k * body.n + j
                own = constraint.clone() if constraint is not None else None  # each sample its own state
                requests.append(
                    GenerationRequest(prompt, budget, self.sampling(body, i), stop_ids, logprobs, own)
                )
                choices.append(Choice(i, self.tokenizer, body.stop))
        return Plan(requests, choices, prompts, body.n, logprobs)

    async def respond(self, request: Request, body, plan: Plan, chat: bool) -> Response:
        """Run the plan: a stream of chunks, or (waiting for every choice to end) one JSON answer."""
        self.acquire(len(plan.requests))
        fanout = Fanout(self.engine, plan.requests)
        released = False

        def close() -> None:  # idempotent: the stream's finally and the response both call it
            nonlocal released
            fanout.close()
            if not released:
                released = True
                self.active -= len(plan.requests)

        prefix = "chatcmpl" if chat else "cmpl"
        meta = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self.model_name, "system_fingerprint": FINGERPRINT}  # fmt: skip
        echo = getattr(body, "echo", False)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            if chat:
                chunks = responses.chat_chunks(self.tokenizer, plan, fanout, meta, usage, close)
            else:
                chunks = responses.text_chunks(self.tokenizer, plan, fanout, meta, usage, close, echo)
            return responses.EventStream(chunks, close)
        try:
            task = asyncio.ensure_future(run_to_end(fanout, plan.choices))
            watcher = asyncio.ensure_future(wait_disconnected(request))
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            if task not in done:  # the client left: nobody will read an answer
                task.cancel()
                return Response(status_code=499)
            try:
                task.result()
            except ValueError as e:  # the engine refused a request
                raise invalid(str(e), code=None) from None
            if failed := [c for c in plan.choices if c.finish_reason == "error"]:
                raise responses.generation_error(failed[0])
            if chat:
                return JSONResponse(responses.chat_completion(self.tokenizer, plan, meta))
            return JSONResponse(responses.text_completion(self.tokenizer, plan, meta, echo))
        finally:
            close()

    # ---- embeddings, models, health ----

    async def embeddings(self, request: Request) -> Response:
        if self.embedder is None:
            msg = (
                "no embedding model is loaded; start the server with --embedder NAME (e.g. all-minilm-l6-v2)"
            )
            raise APIError(404, msg, "model", "model_not_found")
        body = parse_body(await request.body(), EmbeddingRequest)
        self.check_model(body.model, self.embedder_names, self.embedder_name)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise invalid("input is empty", "input")
        if not all(isinstance(t, str) for t in texts):
            raise invalid("token-id input is not supported here: send the texts as strings", "input")
        if not all(texts):
            raise invalid("input strings must not be empty", "input")
        if len(texts) > 2048:
            raise invalid(f"at most 2048 inputs per request, got {len(texts)}", "input")
        dim = self.embedder.config.dim
        if body.dimensions is not None and body.dimensions != dim:
            raise invalid(
                f"this model's embeddings have {dim} dimensions, not {body.dimensions}", "dimensions"
            )
        self.acquire(1)
        try:
            vectors, tokens = await asyncio.to_thread(self._embed, texts)
        finally:
            self.active -= 1
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":  # little-endian float32, what the official clients decode
                emb = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
            else:
                emb = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": self.embedder_name, "usage": usage})

    def _embed(self, texts: list[str]):
        with self._embed_lock:  # one batch at a time: it shares the cores with the engine anyway
            vectors = self.embedder.encode(texts)  # (N, D), L2-normalized
            limit = self.embedder.max_seq_length
            tokens = sum(min(len(self.embedder.tokenizer.encode(t)), limit) for t in texts)
        return vectors, tokens

    def models(self) -> dict[str, Any]:
        names = [self.model_name] + ([self.embedder_name] if self.embedder is not None else [])
        return {"object": "list", "data": [self.model_card(n) for n in names]}

    def model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "lmforge"}

    def find_model(self, name: str) -> dict[str, Any]:
        for served, names in [(self.model_name, self.names), (self.embedder_name, self.embedder_names)]:
            if served and name.lower() in names:
                return self.model_card(served)
        raise APIError(404, f"the model '{name}' does not exist here", "model", "model_not_found")

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "embedder": self.embedder_name,
                "auth_required": self.api_key is not None, "context_length": self.context,
                "active_sequences": self.active, "engine": self.engine.engine.stats}  # fmt: skip
