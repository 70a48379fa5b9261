"""Speculative decoding: greedy gives plain decoding's tokens; sampling keeps the target's distribution."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.infer import speculative
from lmforge.infer.generate import generate_ids
from lmforge.infer.sampling import SamplingParams, process_logits
from lmforge.infer.speculative import (
    LayerSkipDrafter,
    NgramDrafter,
    speculative_generate_ids,
    speculative_stream_ids,
    verify,
)
from tests.model.test_families import roundtrip, tiny

scipy_stats = pytest.importorskip("scipy.stats")
GREEDY = SamplingParams(temperature=0)


class OracleDrafter:
    """Proposes a known continuation: every draft is accepted (for exact counts and eos mid-draft)."""

    def __init__(self, prompt_len: int, continuation: list[int]):
        self.prompt_len, self.continuation = prompt_len, continuation

    def propose(self, context_ids, k):
        done = len(context_ids) - self.prompt_len
        return self.continuation[done : done + k], None


class JunkDrafter:
    """Always proposes token 0: (nearly) every draft is rejected."""

    def propose(self, context_ids, k):
        return [0] * k, None


class TooManyDrafter:
    def propose(self, context_ids, k):
        return [1] * (k + 1), None


class FixedQDrafter:
    """A stochastic drafter with a fixed distribution q (≠ p): draws from q and reports it."""

    def __init__(self, q: torch.Tensor, seed: int):
        self.q, self.gen = q, torch.Generator().manual_seed(seed)

    def propose(self, context_ids, k):
        tokens = torch.multinomial(self.q, k, replacement=True, generator=self.gen).tolist()
        return tokens, self.q.expand(k, -1)


# ---------------------------------------------------------------------- tiny random model


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny forwards are all overhead: a second OpenMP thread only waits (100x slower on a busy machine)."""
    if "smol" in request.fixturenames:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return roundtrip(tiny("llama"), tmp_path_factory.mktemp("tiny_llama")).eval()


def tiny_prompt(seed: int, n: int = 9) -> torch.Tensor:
    return torch.randint(0, 211, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_draft", [1, 2, 3, 5])
def test_greedy_equals_plain_on_tiny_model(tiny_llama, num_draft):
    for seed in range(3):
        ids = tiny_prompt(seed)
        want = generate_ids(tiny_llama, ids, 23)  # 23: not a multiple of any num_draft + 1 here
        drafters = {
            "ngram": NgramDrafter(),
            "layerskip": LayerSkipDrafter(tiny_llama, layers=[0, 2]),
            "oracle": OracleDrafter(ids.shape[1], want.tolist()),
            "junk": JunkDrafter(),
        }
        for name, drafter in drafters.items():
            got, stats = speculative_generate_ids(tiny_llama, ids, 23, GREEDY, drafter, num_draft=num_draft)
            assert got.tolist() == want.tolist(), (name, seed)
            assert stats["tokens"] == 23 and stats["accepted"] <= stats["drafted"]
            if name == "oracle":
                assert stats["acceptance_rate"] == 1.0
                # every round yields num_draft + 1 tokens (the last one fewer): ceil(23 / (k + 1)) + prefill
                assert stats["target_forwards"] == 1 + -(-23 // (num_draft + 1))


def test_ngram_and_layerskip_drafts_get_accepted_on_tiny_model(tiny_llama):
    # a random model soon loops, so looked-up n-grams must be accepted; the shallow model agrees sometimes
    ids = tiny_prompt(0)
    for drafter in (NgramDrafter(), LayerSkipDrafter(tiny_llama, layers=[0, 2])):
        _, stats = speculative_generate_ids(tiny_llama, ids, 60, GREEDY, drafter, num_draft=4)
        assert stats["accepted"] > 0 and stats["target_forwards"] < 60


def test_penalties_see_the_drafted_tokens(tiny_llama):
    params = SamplingParams(temperature=0, repetition_penalty=1.8, presence_penalty=0.5, logit_bias={3: 1.0})
    ids = tiny_prompt(4)
    want = generate_ids(tiny_llama, ids, 30, params)
    for drafter in (NgramDrafter(), OracleDrafter(ids.shape[1], want.tolist()), LayerSkipDrafter(tiny_llama)):
        got, _ = speculative_generate_ids(tiny_llama, ids, 30, params, drafter, num_draft=3)
        assert got.tolist() == want.tolist()


def test_max_new_tokens_is_exact(tiny_llama):
    ids = tiny_prompt(1)
    for n in (0, 1, 2, 7):
        got = list(speculative_stream_ids(tiny_llama, ids, n, GREEDY, NgramDrafter(), num_draft=4))
        assert got == generate_ids(tiny_llama, ids, n).tolist()
    one = tiny_prompt(2, n=1)  # a one-token prompt: nothing to prefill
    got, _ = speculative_generate_ids(tiny_llama, one, 9, GREEDY, NgramDrafter(), num_draft=3)
    assert got.tolist() == generate_ids(tiny_llama, one, 9).tolist()


def test_eos_inside_an_accepted_draft(tiny_llama):
    ids = tiny_prompt(3)
    ref = generate_ids(tiny_llama, ids, 40).tolist()
    k = 4  # rounds yield 5 tokens: positions 5r .. 5r + 3 are drafts, 5r + 4 the bonus token
    stop = next(j for j in range(1, 40) if j % (k + 1) in (1, 2, 3) and ref[j] not in ref[:j])
    got, stats = speculative_generate_ids(
        tiny_llama, ids, 40, GREEDY, OracleDrafter(ids.shape[1], ref), eos_ids={ref[stop]}, num_draft=k
    )
    assert got.tolist() == ref[:stop] == generate_ids(tiny_llama, ids, 40, eos_ids={ref[stop]}).tolist()
    assert stats["tokens"] == stop and stats["acceptance_rate"] == 1.0


def test_ngram_drafter_proposes_what_followed():
    d = NgramDrafter(max_n=3)
    assert d.propose([1, 2, 3, 4, 9, 2, 3], 3) == ([4, 9, 2], None)  # "2 3" was followed by "4 9 2"
    assert d.propose([5, 6, 7, 5, 6, 7, 5, 6], 2) == ([7, 5], None)  # "7 5 6" occurred at 2..4
    assert d.propose([1, 2, 3], 4) == ([], None)  # nothing repeats
    assert NgramDrafter(max_n=2, min_n=2).propose([1, 2, 1, 3], 2) == ([], None)  # "1 3" never seen
    assert d.propose([1, 2, 1], 5) == ([2, 1], None)  # the continuation runs up to the end


def test_bad_input_is_a_clear_error(tiny_llama):
    ids = tiny_prompt(0)
    with pytest.raises(ValueError, match="one non-empty prompt"):
        list(speculative_stream_ids(tiny_llama, ids.repeat(2, 1), 4, GREEDY, NgramDrafter()))
    with pytest.raises(ValueError, match="num_draft"):
        list(speculative_stream_ids(tiny_llama, ids, 4, GREEDY, NgramDrafter(), num_draft=0))
    with pytest.raises(ValueError, match="at most"):
        list(speculative_stream_ids(tiny_llama, ids, 8, GREEDY, TooManyDrafter()))
    with pytest.raises(ValueError, match="must be in"):
        list(speculative_stream_ids(tiny_llama, ids, 8, GREEDY, OracleDrafter(ids.shape[1], [999] * 9)))
    with pytest.raises(ValueError, match="propose"):
        list(speculative_stream_ids(tiny_llama, ids, 8, GREEDY, object()))
    with pytest.raises(ValueError, match="layers must be"):
        LayerSkipDrafter(tiny_llama, layers=[0, 7])
    with pytest.raises(ValueError, match="min_n"):
        NgramDrafter(max_n=1, min_n=2)


# ---------------------------------------------------------------------- the distribution is the target's


def verify_always_accept(p_logits, draft, q, greedy, generator=None):
    """A wrong rule for the checker to catch: keep every draft, then a bonus token from p."""
    k = len(draft)
    return k, int(torch.multinomial(p_logits[k].softmax(-1), 1, generator=generator))


def verify_resample_from_p(p_logits, draft, q, greedy, generator=None):
    """A subtler wrong rule: the right acceptance test, but the correction drawn from p, not the residual."""
    p = p_logits.softmax(-1)
    for i, x in enumerate(draft):
        qx = 1.0 if q is None else float(q[i, x])
        if float(torch.rand((), generator=generator)) * qx < float(p[i, x]):
            continue
        return i, int(torch.multinomial(p[i], 1, generator=generator))
    return len(draft), int(torch.multinomial(p[len(draft)], 1, generator=generator))


def chi_square_pvalue(samples: list[tuple[int, ...]], exact: dict[tuple[int, ...], float]) -> float:
    """p-value of samples against the exact distribution (cells with expected count < 5 pooled);
    0 if any sample has zero target probability."""
    n = len(samples)
    if any(s not in exact for s in samples):
        return 0.0
    counts = {c: 0 for c in exact}
    for s in samples:
        counts[s] += 1
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for c, prob in exact.items():
        if n * prob >= 5:
            obs.append(counts[c])
            exp.append(n * prob)
        else:
            pool_o, pool_e = pool_o + counts[c], pool_e + n * prob
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    total = sum(exp)
    return float(scipy_stats.chisquare(obs, [e * n / total for e in exp]).pvalue)


SAMPLING = SamplingParams(temperature=1.0, top_k=4)  # 4 × 4 outcomes for two tokens: enumerable


def exact_two_tokens(model, ids: torch.Tensor) -> dict[tuple[int, int], float]:
    """P(x1, x2) = p(x1) p(x2 | x1) from full forwards (no cache, no speculation)."""
    with torch.inference_mode():
        p1 = process_logits(model(ids)[:, -1], SAMPLING).softmax(-1)[0]
        out = {}
        for x1 in torch.nonzero(p1).flatten().tolist():
            ctx = torch.cat([ids, torch.tensor([[x1]])], dim=1)
            p2 = process_logits(model(ctx)[:, -1], SAMPLING).softmax(-1)[0]
            for x2 in torch.nonzero(p2).flatten().tolist():
                out[(x1, x2)] = float(p1[x1] * p2[x2])
    return out


def two_token_samples(model, ids, make_drafter, n: int) -> list[tuple[int, int]]:
    samples = []
    for seed in range(n):
        params = SamplingParams(temperature=1.0, top_k=4, seed=seed)
        # 3 tokens with num_draft 2: x1 and x2 are both drafted and verified, x3 is the bonus
        out = list(speculative_stream_ids(model, ids, 3, params, make_drafter(seed), num_draft=2))
        samples.append(tuple(out[:2]))
    return samples


def test_sampling_keeps_the_target_distribution(tiny_llama, monkeypatch):
    ids = tiny_prompt(5, n=4)
    exact = exact_two_tokens(tiny_llama, ids)
    assert abs(sum(exact.values()) - 1) < 1e-5 and len(exact) == 16
    support = sorted({x for pair in exact for x in pair})
    q = torch.full((211,), 0.2 / 211)
    q[support[::2]] += 0.8 / len(support[::2])  # mass on half the target's tokens, a little everywhere
    drafters = {
        "layerskip": lambda seed: LayerSkipDrafter(tiny_llama, layers=[0]),
        "fixed q": lambda seed: FixedQDrafter(q, seed),
    }
    n = 1200
    for name, make in drafters.items():
        pv = chi_square_pvalue(two_token_samples(tiny_llama, ids, make, n), exact)
        assert pv > 0.001, (name, pv)
    # the same checker catches wrong acceptance rules
    for wrong in (verify_always_accept, verify_resample_from_p):
        monkeypatch.setattr(speculative, "verify", wrong)
        pv = chi_square_pvalue(two_token_samples(tiny_llama, ids, drafters["fixed q"], n), exact)
        assert pv < 0.001, (wrong.__name__, pv)


@pytest.mark.parametrize("deterministic", [False, True])
def test_verify_outputs_p_for_any_q(deterministic):
    """One draft position: the token that comes out (accepted draft or residual draw) is distributed as p."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    q = torch.tensor([0.1, 0.1, 0.5, 0.2, 0.1])
    logits = p.log().expand(2, -1)
    n, counts = 6000, torch.zeros(5)
    for _ in range(n):
        if deterministic:
            x = 2  # always guess token 2
            accepted, nxt = verify(logits, [x], None, False, g)
        else:
            x = int(torch.multinomial(q, 1, generator=g))
            accepted, nxt = verify(logits, [x], q[None], False, g)
        counts[x if accepted else nxt] += 1
    assert counts[4] == 0  # p = 0: never produced, even though q proposes it
    pv = scipy_stats.chisquare(counts[:4].tolist(), [n * x for x in (0.5, 0.3, 0.15, 0.05)]).pvalue
    assert pv > 0.001, (counts, pv)


# ---------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol():
    return lmforge.load_model("smollm2-135m-instruct")


SMOL_PROMPTS = [
    "Repeat this list exactly, twice: apple, banana, cherry, apple, banana, cherry.",
    "Rewrite this sentence in the past tense: The cat sits on the mat and the dog sleeps by the door.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def smol_cases(smol):
    tok = smol.tokenizer
    cases = []
    for text in SMOL_PROMPTS:
        ids = torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))])
        cases.append((ids, generate_ids(smol, ids, 48).tolist()))  # no end tokens: all 48
    return cases


@pytest.mark.parametrize("drafter,num_draft,prompts", [("ngram", 3, 3), ("ngram", 5, 1), ("layerskip", 2, 1)])
def test_greedy_equals_plain_on_smollm2(smol, smol_cases, drafter, num_draft, prompts):
    # prompts: how many of the cases (the first one repeats itself); each speculative run costs a few
    # seconds on 2 cores, the LayerSkip draft (26 of 30 blocks per draft token) the most
    accepted = 0
    for ids, want in smol_cases[:prompts]:
        d = NgramDrafter() if drafter == "ngram" else LayerSkipDrafter(smol)
        got, stats = speculative_generate_ids(smol, ids, 48, GREEDY, d, num_draft=num_draft)
        assert got.tolist() == want
        accepted += stats["accepted"]
    assert accepted > 0  # the repeated list at least gets drafts accepted
