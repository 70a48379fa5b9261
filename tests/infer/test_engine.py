"""The paged KV cache gives a full re-forward's logits; the continuous-batching engine gives every request
exactly what generating it alone gives, however requests join, leave, wait, fail or get cancelled."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import torch

import lmforge
from lmforge.infer.engine import AsyncEngine, Engine, GenerationRequest, TokenEvent
from lmforge.infer.generate import generate_ids, stream_ids
from lmforge.infer.paged import PagedKVCache
from lmforge.infer.sampling import SamplingParams
from tests.model.test_families import roundtrip, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return roundtrip(tiny("llama"), tmp_path_factory.mktemp("llama"))


def prompts(*lengths: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=g).tolist() for n in lengths]


def alone(model, prompt: list[int], n: int, params: SamplingParams | None = None, stop=None) -> list[int]:
    """The reference: the single-sequence loop of generate.py."""
    return list(stream_ids(model, torch.tensor([prompt]), n, params, stop))


def drain(engine: Engine, out: dict[int, list[TokenEvent]] | None = None, max_steps: int = 500):
    """Step until the engine is idle; every request's events."""
    out = {} if out is None else out
    for _ in range(max_steps):
        if not engine.has_work():
            return out
        for ev in engine.step():
            out.setdefault(ev.request_id, []).append(ev)
    raise AssertionError("the engine did not finish")


def tokens(events: list[TokenEvent]) -> list[int]:
    return [ev.token_id for ev in events if ev.token_id is not None]


# ---- the paged cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3"])
def test_paged_view_equals_full_forward(kind, tmp_path):
    """Three sequences in blocks of 4, prefilled alone, then a 2-token chunk and 6 single tokens decoded
    together in a shuffled row order: each row's logits equal a fresh forward over its whole sequence
    (Mistral's window is 5 and Gemma's 6, so windows slide across block boundaries)."""
    model = roundtrip(tiny(kind), tmp_path)
    lens = [9, 3, 14]
    seqs = [torch.tensor([p]) for p in prompts(*(n + 8 for n in lens), seed=3)]
    cache = PagedKVCache(model.config, num_blocks=40, block_size=4)
    with torch.no_grad():
        for i, n in enumerate(lens):
            assert cache.allocate(i, n + 8)
            got = model(seqs[i][:, :n], cache=cache.view([i]))
            assert (got - model(seqs[i][:, :n])).abs().max() < 1e-4
        assert cache.tables[1] == [5, 6, 7], "sequence 1's blocks follow sequence 0's five"
        pos, order = list(lens), [2, 0, 1]
        for step in [2] + [1] * 6:
            chunk = torch.cat([seqs[i][:, pos[i] : pos[i] + step] for i in order])  # (3, step)
            got = model(chunk, cache=cache.view(order))
            for row, i in enumerate(order):
                want = model(seqs[i][:, : pos[i] + step])[0, -step:]
                assert (got[row] - want).abs().max() < 1e-4, (kind, i, pos[i])
            pos = [p + step for p in pos]
    assert [cache.lengths[i] for i in range(3)] == [n + 8 for n in lens]


def test_paged_blocks_are_allocated_freed_and_bounded(llama):
    cfg = llama.config
    cache = PagedKVCache(cfg, num_blocks=6, block_size=4)
    # the docstring's formula: 2 × layers × H_kv × D × block_size × num_blocks × 4 bytes
    assert cache.nbytes() == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * 6 * 4
    assert cache.allocate(0, 9)  # 3 blocks
    assert cache.num_free_blocks == 3
    assert not cache.allocate(1, 13)  # needs 4: refused, and nothing taken
    assert cache.num_free_blocks == 3 and 1 not in cache.tables
    assert cache.allocate(1, 12) and cache.num_free_blocks == 0
    cache.free(0)
    assert cache.num_free_blocks == 3 and cache.allocate(2, 4) and cache.tables[2] == [0]
    cache.free(0)  # twice: harmless
    assert cache.num_free_blocks == 2
    with torch.no_grad(), pytest.raises(ValueError, match="needs 5 tokens but its blocks hold 4"):
        llama(torch.zeros(1, 5, dtype=torch.long), cache=cache.view([2]))
    with pytest.raises(ValueError, match="allocate them first"):
        cache.view([7])


# ---- the engine: same tokens as one by one -----------------------------------------------------------------


def test_greedy_batch_equals_one_by_one(llama):
    ps = prompts(3, 11, 1, 20, 7)
    engine = Engine(llama, max_batch=8, block_size=4)
    ids = [engine.add_request(GenerationRequest(p, 10)) for p in ps]
    out = drain(engine)
    for rid, p in zip(ids, ps):
        assert tokens(out[rid]) == generate_ids(llama, torch.tensor([p]), 10).tolist()
        assert [ev.finish_reason for ev in out[rid]] == [None] * 9 + ["length"]
    assert engine.stats["running"] == 0 and engine.stats["free_blocks"] == engine.cache.num_blocks
    assert engine.stats["tokens_generated"] == 50 and engine.stats["steps"] == 10


SAMPLED = [
    SamplingParams(temperature=0.8, top_k=20, seed=1),
    SamplingParams(temperature=1.2, top_p=0.9, repetition_penalty=1.3, seed=2),
    SamplingParams(temperature=1.0, min_p=0.05, frequency_penalty=0.5, presence_penalty=0.3, seed=3),
    SamplingParams(temperature=0, repetition_penalty=1.5, logit_bias={5: 3.0}),
    SamplingParams(temperature=0.7, seed=4),
]


def test_sampled_with_seeds_equals_stream_ids(llama):
    """Each row keeps its own seeded generator and penalty history while batched with the others."""
    ps = prompts(5, 9, 2, 14, 6, seed=2)
    engine = Engine(llama, max_batch=8, block_size=4)
    ids = [engine.add_request(GenerationRequest(p, 12, params)) for p, params in zip(ps, SAMPLED)]
    out = drain(engine)
    for rid, p, params in zip(ids, ps, SAMPLED):
        assert tokens(out[rid]) == alone(llama, p, 12, params), params
    # a different seed gives a different stream: the test can tell
    other = SamplingParams(temperature=0.8, top_k=20, seed=99)
    assert alone(llama, ps[0], 12, other) != tokens(out[ids[0]])


def test_requests_join_mid_flight_and_leave(llama):
    """Requests arrive while others decode and finish at different steps; each still gets its own tokens.
    A stop id ends a request with "stop" and is not emitted."""
    ps = prompts(4, 13, 8, 2, 17, seed=5)
    lengths = [12, 3, 7, 9, 5]
    want = [alone(llama, p, n) for p, n in zip(ps, lengths)]
    stop = want[3][4]  # request 3 meets it at its 5th token (or earlier)
    want[3] = alone(llama, ps[3], lengths[3], stop={stop})
    engine = Engine(llama, max_batch=8, block_size=4)
    out: dict[int, list[TokenEvent]] = {}
    ids = [engine.add_request(GenerationRequest(ps[i], lengths[i])) for i in (0, 1)]
    for _ in range(2):
        for ev in engine.step():
            out.setdefault(ev.request_id, []).append(ev)
    ids.append(engine.add_request(GenerationRequest(ps[2], lengths[2])))
    ids.append(engine.add_request(GenerationRequest(ps[3], lengths[3], stop_ids={stop})))
    for ev in engine.step():
        out.setdefault(ev.request_id, []).append(ev)
    assert engine.stats["running"] == 3  # request 1 (3 tokens) has left, 2 and 3 have joined
    ids.append(engine.add_request(GenerationRequest(ps[4], lengths[4])))
    drain(engine, out)
    for i, rid in enumerate(ids):
        assert tokens(out[rid]) == want[i], i
    assert out[ids[3]][-1] == TokenEvent(ids[3], None, finish_reason="stop")
    assert len(want[3]) < lengths[3]


def test_memory_bound_queues_requests(llama):
    """A pool of 8 blocks of 4 holds two requests of 6 + 10 tokens at a time: the rest wait, in order,
    and all finish with their own tokens."""
    ps = prompts(6, 6, 6, 6, 6, seed=7)
    engine = Engine(llama, max_batch=16, num_blocks=8, block_size=4)
    ids = [engine.add_request(GenerationRequest(p, 10)) for p in ps]
    assert engine.stats["waiting"] == 5
    out: dict[int, list[TokenEvent]] = {}
    first: dict[int, int] = {}  # request -> the step of its first token
    peak = 0
    while engine.has_work():
        for ev in engine.step():
            out.setdefault(ev.request_id, []).append(ev)
            first.setdefault(ev.request_id, engine.stats["steps"])
        peak = max(peak, engine.stats["running"])
        if engine.stats["steps"] == 1:
            assert engine.stats == {**engine.stats, "running": 2, "waiting": 3, "free_blocks": 0}
    assert peak == 2
    assert [first[r] for r in ids] == [1, 1, 11, 11, 21]  # first come, first served, as blocks come back
    for rid, p in zip(ids, ps):
        assert tokens(out[rid]) == alone(llama, p, 10)
    assert engine.stats["free_blocks"] == 8


def test_max_batch_bounds_the_running_set(llama):
    engine = Engine(llama, max_batch=2, block_size=4)
    for p in prompts(3, 4, 5):
        engine.add_request(GenerationRequest(p, 4))
    out: dict[int, list[TokenEvent]] = {}
    for ev in engine.step():
        out.setdefault(ev.request_id, []).append(ev)
    assert engine.stats["running"] == 2 and engine.stats["waiting"] == 1
    drain(engine, out)
    assert [len(tokens(v)) for v in out.values()] == [4, 4, 4]


def test_impossible_requests_are_clear_errors(llama):
    engine = Engine(llama, max_batch=4, num_blocks=10, block_size=4)  # 40 tokens in the whole pool
    with pytest.raises(ValueError, match=r"= 50 tokens needs 13 KV blocks of 4, but the whole pool has 10"):
        engine.add_request(GenerationRequest(list(range(20)), 30))
    default = Engine(llama)  # a pool for max_batch (16) sequences of the model's 128 positions
    assert default.cache.num_blocks == 16 * 128 // 16
    with pytest.raises(ValueError, match="maximum sequence length 128"):
        default.add_request(GenerationRequest([1] * 100, 29))
    with pytest.raises(ValueError, match="maximum sequence length 32"):
        Engine(llama, max_seq_len=32).add_request(GenerationRequest([1] * 30, 3))
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        engine.add_request(GenerationRequest([], 3))
    with pytest.raises(ValueError, match=r"ints in \[0, 211\)"):
        engine.add_request(GenerationRequest([3, 211], 3))
    with pytest.raises(ValueError, match="max_tokens must be"):
        engine.add_request(GenerationRequest([3], 0))
    assert not engine.has_work()  # nothing was queued


def test_cancel_frees_blocks(llama):
    ps = prompts(5, 8, 3, seed=9)
    engine = Engine(llama, max_batch=2, num_blocks=20, block_size=4)
    a, b, c = (engine.add_request(GenerationRequest(p, 20)) for p in ps)
    engine.step()
    engine.step()
    assert engine.stats["running"] == 2 and engine.stats["waiting"] == 1
    used = engine.cache.num_blocks - engine.stats["free_blocks"]
    engine.cancel(a)
    engine.cancel(c)  # still waiting
    events = engine.step()
    assert events[:2] == [
        TokenEvent(c, None, finish_reason="cancelled"),
        TokenEvent(a, None, finish_reason="cancelled"),
    ]
    assert engine.stats["running"] == 1 and engine.stats["waiting"] == 0
    assert engine.cache.num_blocks - engine.stats["free_blocks"] == used - engine.cache.blocks_for(5 + 20)
    out = drain(engine)
    assert a not in out and c not in out
    assert len(tokens(out[b])) == 17  # 20 in all: 3 came before
    engine.cancel(b)  # finished already: a no-op
    engine.cancel(12345)
    assert engine.step() == []
    assert engine.stats["free_blocks"] == engine.cache.num_blocks


def test_logprobs_equal_log_softmax_of_a_full_forward(llama):
    p = prompts(6, seed=11)[0]
    engine = Engine(llama, block_size=4)
    params = SamplingParams(temperature=1.0, top_k=5, seed=0)
    rid = engine.add_request(GenerationRequest(p, 6, params, logprobs=3))
    other = engine.add_request(GenerationRequest(prompts(3)[0], 6, logprobs=0))  # batched alongside
    out = drain(engine)
    got = tokens(out[rid])
    with torch.no_grad():
        lp = torch.log_softmax(llama(torch.tensor([p + got]))[0, len(p) - 1 : -1].float(), dim=-1)  # (6, V)
    for i, ev in enumerate(out[rid]):
        assert ev.logprob == pytest.approx(lp[i, ev.token_id].item(), abs=1e-4)
        top_v, top_i = lp[i].topk(3)
        assert [t for t, _ in ev.top_logprobs] == top_i.tolist()
        assert [v for _, v in ev.top_logprobs] == pytest.approx(top_v.tolist(), abs=1e-4)
    assert all(ev.top_logprobs is None and ev.logprob <= 0 for ev in out[other])


class EvenOnly:
    """A toy constraint: only even token ids, done after `n` tokens."""

    def __init__(self, n: int, vocab: int = 211):
        self.mask = torch.arange(vocab) % 2 == 0
        self.n, self.seen = n, []

    def allowed(self) -> torch.Tensor:
        return self.mask

    def advance(self, token_id: int) -> None:
        self.seen.append(token_id)

    def is_done(self) -> bool:
        return len(self.seen) >= self.n


class Broken(EvenOnly):
    def allowed(self) -> torch.Tensor:
        raise RuntimeError("boom")


def test_constraint_is_obeyed_and_a_broken_one_fails_alone(llama):
    ps = prompts(4, 7, 5, seed=13)
    engine = Engine(llama, block_size=4)
    even = EvenOnly(5)
    sampled = engine.add_request(
        GenerationRequest(ps[0], 20, SamplingParams(temperature=1.5, seed=1), constraint=even)
    )
    greedy = engine.add_request(GenerationRequest(ps[1], 20, constraint=EvenOnly(30)))
    broken = engine.add_request(GenerationRequest(ps[2], 20, constraint=Broken(3)))
    plain = engine.add_request(GenerationRequest(ps[2], 8))
    out = drain(engine)
    got = tokens(out[sampled])
    assert len(got) == 5 and all(t % 2 == 0 for t in got) and even.seen == got
    assert out[sampled][-1].finish_reason == "stop"  # the constraint is done
    g = tokens(out[greedy])
    assert len(g) == 20 and all(t % 2 == 0 for t in g) and out[greedy][-1].finish_reason == "length"
    unconstrained = alone(llama, ps[1], 20)
    assert any(t % 2 for t in unconstrained)  # the mask made a difference
    assert out[broken] == [TokenEvent(broken, None, finish_reason="error")]
    assert tokens(out[plain]) == alone(llama, ps[2], 8)
    assert engine.stats["free_blocks"] == engine.cache.num_blocks


# ---- AsyncEngine ------------------------------------------------------------------------------------------


def test_async_engine_streams_and_cancels(llama):
    ps = prompts(4, 9, 6, 3, seed=17)
    want = [alone(llama, p, 8) for p in ps]
    engine = Engine(llama, max_batch=8, block_size=4)
    runner = AsyncEngine(engine)

    async def consume(p):
        return [ev async for ev in runner.generate(GenerationRequest(p, 8))]

    async def early(p, keep):
        stream = runner.generate(GenerationRequest(p, 50))
        got = [await stream.__anext__() for _ in range(keep)]
        await stream.aclose()  # the client went away
        return got

    async def hang(p, seen):
        async for ev in runner.generate(GenerationRequest(p, 120)):
            seen.append(ev)

    async def main():
        full = asyncio.gather(*(consume(p) for p in ps[:3]))
        short = asyncio.create_task(early(ps[3], 2))
        seen: list[TokenEvent] = []
        hung = asyncio.create_task(hang(ps[3], seen))  # an HTTP handler whose client goes away
        results, cut = await full, await short
        while not seen:
            await asyncio.sleep(0.01)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert seen[-1].finish_reason is None  # it was cut short
        with pytest.raises(ValueError, match="max_tokens"):
            await runner.generate(GenerationRequest(ps[0], 0)).__anext__()
        return results, cut

    runner.start()
    try:
        results, cut = asyncio.run(main())
        deadline = time.monotonic() + 10
        while engine.has_work() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
    for events, w in zip(results, want):
        assert tokens(events) == w and events[-1].finish_reason == "length"
        assert len({ev.request_id for ev in events}) == 1
    assert len(cut) == 2 and cut[-1].finish_reason is None
    assert engine.stats["running"] == 0 and engine.stats["waiting"] == 0
    assert engine.stats["free_blocks"] == engine.cache.num_blocks
    assert engine.stats["tokens_generated"] < 3 * 8 + 50 + 120  # the cut streams did not run to the end


# ---- SmolLM2 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return lmforge.load_model("smollm2-135m-instruct")


def test_smollm2_batched_equals_one_by_one(smollm2):
    """Four real prompts greedy and a chat prompt sampled with a seed, batched: each gets the tokens
    generating it alone gives."""
    tok = smollm2.tokenizer
    texts = [
        "The history of the Roman Empire",
        "def quicksort(xs):",
        "Once upon a time, in a small village by the sea,",
        tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]),
    ]
    ps = [tok.encode(t) for t in texts]
    sampled = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=5)
    chat = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Write a haiku about rain."}]))
    engine = Engine(smollm2, max_batch=8)
    ids = [engine.add_request(GenerationRequest(p, 24)) for p in ps]
    sid = engine.add_request(GenerationRequest(chat, 24, sampled))
    out = drain(engine)
    for rid, p, text in zip(ids, ps, texts):
        assert tokens(out[rid]) == generate_ids(smollm2, torch.tensor([p]), 24).tolist(), text
    assert tokens(out[sid]) == alone(smollm2, chat, 24, sampled)
