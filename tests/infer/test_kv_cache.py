"""KV-cache decoding gives the logits of a full re-forward at every step; greedy output equals transformers'."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.infer.kv_cache import KVCache, StaticKVCache
from tests.model.test_families import roundtrip, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def steps_equal_full_forward(model, cache, kind: str) -> None:
    """Prefill 9 tokens, then a chunk of 4, then 8 single tokens: each step's logits equal a fresh forward
    over the whole sequence (Mistral's window is 5 and Gemma's 6, so the windows slide in the cache)."""
    ids = torch.randint(0, 211, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        pos = 0
        for step in [9, 4] + [1] * 8:
            got = model(ids[:, pos : pos + step], cache=cache)
            assert (got - full[:, pos : pos + step]).abs().max().item() < 1e-4, (kind, pos, step)
            pos += step


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3", "gpt2", "qwen2_moe"])
def test_cached_steps_equal_full_forward(kind, tmp_path):
    model = roundtrip(tiny(kind), tmp_path)
    cache = KVCache(model.config, 2, 32, torch.float32)
    steps_equal_full_forward(model, cache, kind)
    assert cache.length == 21


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_static_cache_steps_equal_full_forward(kind, tmp_path):
    """The static cache (fixed-length buffers, a tensor position, a mask over unwritten slots) does the same."""
    model = roundtrip(tiny(kind), tmp_path)
    cache = StaticKVCache(model.config, 2, 24, torch.float32)
    steps_equal_full_forward(model, cache, kind)
    assert cache.length.tolist() == [21, 21]
    assert all(k.shape == (2, model.config.n_kv_heads, 24, model.config.head_dim) for k in cache.k)


def test_static_cache_rows_of_different_lengths(tmp_path):
    """Rows at different positions in one static cache each get what they would alone."""
    model = roundtrip(tiny("llama"), tmp_path)
    ids = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(5))
    cache = StaticKVCache(model.config, 2, 16, torch.float32)
    with torch.no_grad():
        full = model(ids)
        model(ids[:, :8], cache=cache)
        cache.length[1] = 5  # row 1 forgets its last 3 tokens: it now continues from position 5
        got = model(torch.stack([ids[0, 8:10], ids[1, 5:7]]), cache=cache)
        alone = model(ids[1:, :7])
    assert (got[0] - full[0, 8:10]).abs().max().item() < 1e-4
    assert (got[1] - alone[0, 5:7]).abs().max().item() < 1e-4


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
