"""Each sampling transform equals transformers' logits processor of the same name."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.sampling import (
    SamplingParams,
    frequency_presence_penalty,
    min_p_filter,
    process_logits,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)

lp = pytest.importorskip("transformers.generation.logits_process")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 500, generator=g) * 3
    logits[1, :10] = logits[1, 10]  # ties
    seen = torch.randint(0, 500, (4, 30), generator=g)
    return logits, seen


def test_filters_match_transformers(batch):
    logits, seen = batch
    for k in (1, 5, 50, 500):
        assert torch.equal(top_k_filter(logits, k), lp.TopKLogitsWarper(k)(seen, logits.clone()))
    for p in (0.1, 0.5, 0.9, 0.999):
        assert torch.equal(top_p_filter(logits, p), lp.TopPLogitsWarper(p)(seen, logits.clone()))
    for m in (0.01, 0.1, 0.5):
        assert torch.equal(min_p_filter(logits, m), lp.MinPLogitsWarper(m)(seen, logits.clone()))
    for r in (0.8, 1.3, 2.0):
        want = lp.RepetitionPenaltyLogitsProcessor(r)(seen, logits.clone())
        assert torch.allclose(repetition_penalty(logits, seen, r), want)


def test_process_logits_matches_a_transformers_pipeline(batch):
    logits, seen = batch
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    pipeline = lp.LogitsProcessorList(
        [
            lp.RepetitionPenaltyLogitsProcessor(1.2),
            lp.TemperatureLogitsWarper(0.7),
            lp.TopKLogitsWarper(40),
            lp.TopPLogitsWarper(0.9),
            lp.MinPLogitsWarper(0.05),
        ]
    )
    assert torch.allclose(process_logits(logits, params, seen), pipeline(seen, logits.clone()))


def test_frequency_presence_and_bias():
    logits = torch.zeros(1, 6)
    seen = torch.tensor([[2, 2, 2, 4]])
    out = frequency_presence_penalty(logits, seen, frequency=0.5, presence=1.0)
    assert out.tolist() == [[0, 0, -2.5, 0, -1.5, 0]]
    params = SamplingParams(temperature=0, logit_bias={3: 5.0, 0: -100.0})
    assert sample(process_logits(logits, params), params).item() == 3


def test_same_seed_same_draws_and_greedy(batch):
    logits, _ = batch
    params = SamplingParams(temperature=1.0, top_p=0.95)
    processed = process_logits(logits, params)
    a = [sample(processed, params, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert all(torch.equal(a[0], x) for x in a)
    assert torch.equal(sample(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    # our draws follow the distribution: each token's frequency is close to its probability
    plain = SamplingParams()
    p = torch.softmax(logits[0], -1)
    draws = sample(logits[:1].expand(20000, -1), plain, torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=p.numel()).float() / draws.numel()
    assert (freq - p).abs().max() < 0.02


def test_bad_params():
    for bad in (
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"min_p": 2},
        {"top_k": -3},
        {"repetition_penalty": 0},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
