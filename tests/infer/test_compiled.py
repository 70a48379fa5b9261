"""Compiled decoding (torch.compile over a static KV cache) gives eager decoding's logits and tokens."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.compiled import compiled_decode_step, new_static_cache, static_capacity
from lmforge.infer.generate import stream_ids
from lmforge.infer.sampling import SamplingParams
from tests.model.test_families import roundtrip, tiny


def test_static_capacity_rounds_up_to_the_bucket():
    assert [static_capacity(n) for n in (1, 256, 257, 700)] == [256, 256, 512, 768]
    assert [static_capacity(n, 300) for n in (1, 257, 301)] == [256, 300, 301]  # the context window caps it


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_compiled_steps_equal_full_forward(kind, tmp_path):
    """Every compiled decode step's logits equal a full forward over the sequence so far (Gemma's sliding
    window of 6 slides inside the compiled graph), and greedy generation picks the same tokens."""
    model = roundtrip(tiny(kind), tmp_path).eval()
    ids = torch.randint(0, 211, (1, 20), generator=torch.Generator().manual_seed(7))
    cache = new_static_cache(model, 1, 20)
    with torch.inference_mode():
        full = model(ids)
        model(ids[:, :8], cache=cache)  # eager prefill into the static cache
        for pos in range(8, 20):
            got = compiled_decode_step(model, ids[:, pos : pos + 1], cache)
            assert (got - full[:, pos]).abs().max().item() < 1e-4, (kind, pos)
    assert cache.length.tolist() == [20]
    greedy = SamplingParams(temperature=0)
    eager = list(stream_ids(model, ids[:, :5], 24, greedy))
    assert list(stream_ids(model, ids[:, :5], 24, greedy, compiled=True)) == eager
