"""Our cross-entropy equals F.cross_entropy (values and gradients, ignored positions, huge logits); bpb."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.train.losses import bits_per_byte, cross_entropy

B, T, V = 3, 7, 50


def reference(logits, targets, ignore_index=-100):
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


def batch(seed: int = 0, scale: float = 3.0, offset: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen) * scale + offset
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, :3] = -100  # e.g. a prompt in fine-tuning, or padding
    targets[2, -1] = -100
    return logits, targets


def test_equals_f_cross_entropy_values_and_gradients():
    logits, targets = batch()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours, theirs = cross_entropy(a, targets), reference(b, targets)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[0, :3].abs().max() == 0  # ignored positions get no gradient


def test_mean_is_over_kept_tokens_and_ignore_index():
    logits, targets = batch(1)
    targets[targets == -100] = -1  # nanochat's ignore index
    ours = cross_entropy(logits, targets, ignore_index=-1)
    torch.testing.assert_close(ours, reference(logits, targets, -1))
    # the mean divides by the kept tokens only: dropping the ignored rows first gives the same number
    keep = targets != -1
    torch.testing.assert_close(ours, F.cross_entropy(logits[keep], targets[keep]))
    none_kept = torch.full((B, T), -100)
    assert torch.isnan(cross_entropy(logits, none_kept)) and torch.isnan(reference(logits, none_kept))


def test_stable_for_huge_logits():
    """exp(1000) overflows float32; log-sum-exp after subtracting the maximum does not."""
    logits, targets = batch(2, scale=300.0, offset=1e4)
    naive = torch.log(torch.exp(logits).sum(-1)) - logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    assert not torch.isfinite(naive).all()
    ours = cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, reference(logits, targets))


def test_bf16_logits_are_computed_in_float32():
    logits, targets = batch(3)
    low = logits.bfloat16()
    ours = cross_entropy(low, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference(low.float(), targets))


def test_bits_per_byte():
    assert bits_per_byte(math.log(256), 1000, 1000) == pytest.approx(8.0)  # uniform over bytes: 8 bits each
    assert bits_per_byte(1.0, 250, 1000) == pytest.approx(0.25 / math.log(2))
    # Tokenizer independence: one model's 12 nats over a 12-byte text, cut into 12 byte tokens (1 nat
    # each) or into 3 word tokens (4 nats each). Per-token losses differ 4×; bits per byte do not.
    assert bits_per_byte(1.0, 12, 12) == pytest.approx(bits_per_byte(4.0, 3, 12))
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 10, 0)
