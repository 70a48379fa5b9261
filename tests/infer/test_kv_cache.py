"""KV-cache decoding gives the logits of a full re-forward at every step; greedy output equals transformers'."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.infer.kv_cache import KVCache
from tests.model.test_families import roundtrip, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3", "gpt2", "qwen2_moe"])
def test_cached_steps_equal_full_forward(kind, tmp_path):
    """Prefill 9 tokens, then a chunk of 4, then 8 single tokens: each step's logits equal a fresh forward
    over the whole sequence (Mistral's window is 5 and Gemma's 6, so the windows slide in the cache)."""
    model = roundtrip(tiny(kind), tmp_path)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 211, (2, 21), generator=g)
    cache = KVCache(model.config, 2, 32, torch.float32)
    with torch.no_grad():
        full = model(ids)
        pos = 0
        for step in [9, 4] + [1] * 8:
            got = model(ids[:, pos : pos + step], cache=cache)
            assert (got - full[:, pos : pos + step]).abs().max().item() < 1e-4, (kind, pos, step)
            pos += step
    assert cache.length == 21


def test_cache_overflow_is_a_clear_error(tmp_path):
    model = roundtrip(tiny("llama"), tmp_path)
    cache = KVCache(model.config, 1, 4, torch.float32)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_per_row_offsets_mask_each_row_at_its_own_length():
    """A (B,) offset (a paged cache of ragged rows) gives each row the mask it would get alone."""
    from lmforge.model.attention import build_mask

    offsets = torch.tensor([0, 3, 6])
    for window in (None, 4):
        got = build_mask(
            None, 2, True, window, torch.float32, torch.device("cpu"), 3, offsets
        )  # (3, 1, 2, 8)
        for row, off in enumerate(offsets.tolist()):
            alone = build_mask(None, 2, True, window, torch.float32, torch.device("cpu"), 1, off)
            s = off + 2
            assert torch.equal(got[row, :, :, :s], alone[0]), (window, row)
            assert (got[row, :, :, s:] < -1e30).all()  # keys past the row's end are never seen


def test_crop_drops_the_tail(tmp_path):
    model = roundtrip(tiny("llama"), tmp_path)
    ids = torch.randint(0, 211, (1, 10), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config, 1, 16, torch.float32)
    with torch.no_grad():
        model(ids[:, :6], cache=cache)
        model(ids[:, 6:9], cache=cache)  # three "draft" tokens
        cache.crop(7)  # keep one of them
        got = model(ids[:, 7:10], cache=cache)
        full = model(ids)
    assert (got - full[:, 7:10]).abs().max() < 1e-4 and cache.length == 10
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(11)
