"""Our cross-entropy equals F.cross_entropy (values and gradients, ignored positions, huge logits); bpb."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.train.losses import bits_per_byte, cross_entropy, linear_cross_entropy

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


# ------------------------------------------------------------------- the head and the loss, fused


def head_case(seed: int = 0, n: int = 37, d: int = 16, v: int = 101):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, d, generator=gen) * 2).requires_grad_()
    w = torch.randn(v, d, generator=gen).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)
    y[:5] = -100
    y[20] = -100
    return h, w, y


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize(
    "chunk_bytes", [4 * 101 * 5, 1 << 26]
)  # 5 rows a chunk (8 chunks, one ragged), or one
def test_linear_cross_entropy_equals_head_then_cross_entropy(softcap, chunk_bytes):
    h, w, y = head_case()
    z = h @ w.T
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    want = F.cross_entropy(z, y, ignore_index=-100)
    want.backward()
    want_dh, want_dw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, y, softcap=softcap, chunk_bytes=chunk_bytes)
    (got * 2.5).backward()  # a non-unit upstream gradient is passed through
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    torch.testing.assert_close(h.grad, 2.5 * want_dh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.grad, 2.5 * want_dw, atol=1e-5, rtol=1e-4)
    assert h.grad[:5].abs().max() == 0  # ignored tokens send nothing back


def test_linear_cross_entropy_frozen_weight_no_grad_and_nothing_scored():
    h, w, y = head_case()
    w.requires_grad_(False)
    got = linear_cross_entropy(h, w, y, chunk_bytes=4 * 101 * 4)
    got.backward()
    assert w.grad is None and h.grad is not None
    with torch.no_grad():  # evaluation: the loss alone
        assert float(linear_cross_entropy(h, w, y)) == pytest.approx(
            float(F.cross_entropy(h @ w.T, y)), abs=1e-5
        )
    none = torch.full_like(y, -100)
    assert math.isnan(float(linear_cross_entropy(h, w, none))) and math.isnan(
        float(F.cross_entropy(h @ w.T, none))
    )
    with pytest.raises(ValueError, match="h \\(N, D\\), weight \\(V, D\\)"):
        linear_cross_entropy(h, w.T, y)


@pytest.mark.parametrize("tie", [True, False])
def test_lm_loss_fused_equals_logits_path_and_skips_the_logits(tie, monkeypatch):
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.train.lora import LoRAConfig, apply_lora
    from lmforge.train.trainer import lm_loss

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=300, ffn_dim=48, family="llama",
                      max_seq_len=32, tie_embeddings=tie, final_softcap=None if tie else 5.0)  # fmt: skip
    model = Transformer(cfg).init_weights(0.2).train()
    ids = torch.randint(0, 300, (3, 17))
    labels = F.pad(ids[:, 1:], (0, 1), value=-100)
    labels[1, :6] = -100
    batch = {"input_ids": ids, "labels": labels}
    for lora in (False, True):  # full fine-tuning (the head trains), then LoRA (the head is frozen)
        if lora:
            apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
            for p in (a for n, a in model.named_parameters() if "lora_B" in n):
                torch.nn.init.normal_(p, std=0.1)
        params = [p for p in model.parameters() if p.requires_grad]
        want = lm_loss(model, batch, fused=False)
        want_grads = torch.autograd.grad(want, params)
        with monkeypatch.context() as m:  # the fused path never makes the (B, T, V) logits
            m.setattr(Transformer, "logits", lambda *a: pytest.fail("fused lm_loss computed the logits"))
            got = lm_loss(model, batch)
            got_grads = torch.autograd.grad(got, params)
        assert got.item() == pytest.approx(want.item(), abs=1e-5)
        for g, wg in zip(got_grads, want_grads):
            torch.testing.assert_close(g, wg, atol=1e-5, rtol=1e-4)
