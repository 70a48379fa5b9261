"""Optimizers: our AdamW equals torch's, which parameters get decay / Muon, Newton–Schulz, clipping."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.optim import (
    NS_COEFFICIENTS,
    AdamW,
    Muon,
    build_optimizers,
    clip_grad_norm_,
    hidden_matrices,
    newton_schulz,
    param_groups,
)
from lmforge.train.schedules import set_lr

SHAPES = [(33, 17), (17,), (5, 7, 3), (), (64, 8)]


def tiny(**over) -> Transformer:
    """A 2-layer Llama-style model (RMSNorm, no biases, tied head) unless overridden."""
    cfg = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=61, max_seq_len=32)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**cfg, **over}))


def gpt2_like() -> Transformer:
    """Learned positions, LayerNorm (weight + bias), biases everywhere, an untied head."""
    return tiny(position="learned", norm="layernorm", attn_bias=True, o_bias=True, mlp_bias=True,
                gated_ffn=False, activation="gelu", tie_embeddings=False)  # fmt: skip


def names(model, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


# ------------------------------------------------------------------------------------------ AdamW


def run_adamw(cls, steps: int = 60, **kw) -> list[torch.Tensor]:
    """Two groups with their own lr / decay, the lr changed between steps, one parameter skipping steps."""
    torch.manual_seed(1)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    groups = [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0, "lr": 3e-3}]
    opt = cls(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    gen = torch.Generator().manual_seed(2)
    for i in range(steps):
        for j, p in enumerate(ps):
            # the last parameter gets a gradient only on even steps: its own step count and bias correction
            p.grad = None if (j == len(ps) - 1 and i % 2) else torch.randn(p.shape, generator=gen) * (1 + j)
        opt.param_groups[0]["lr"] = 1e-2 * (1 + i % 3)  # as a schedule would
        opt.param_groups[1]["lr"] = 3e-3 * math.cos(i / steps)
        opt.step()
    return ps


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_equals_torch(foreach):
    ref = run_adamw(torch.optim.AdamW, foreach=False)
    ours = run_adamw(AdamW, foreach=foreach)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)  # float32 rounding (bit-equal today)


def test_adamw_first_step_is_the_formula():
    """Step 1: m̂ = g and v̂ = g², so p ← p·(1 − lr·wd) − lr·g / (|g| + ε), whatever the betas."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, 5))
    g = torch.randn(7, 5)
    expected = p.detach() * (1 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8)
    p.grad = g.clone()
    AdamW([p], lr=0.01, betas=(0.8, 0.99), weight_decay=0.1).step()
    torch.testing.assert_close(p.detach(), expected)


def test_adamw_state_dict_round_trip_and_torch_interchange():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randint(0, 61, (2, 9))

    def steps(opt, n):
        for _ in range(n):
            opt.zero_grad()
            F.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
            opt.step()

    opt = AdamW(param_groups(model, 0.1), lr=1e-2)
    steps(opt, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    steps(opt, 3)
    after = [p.detach().clone() for p in model.parameters()]

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # the trainer's checkpoints load this way
    model.load_state_dict(saved["model"])
    resumed = AdamW(param_groups(model, 0.1), lr=1e-2)
    resumed.load_state_dict(saved["opt"])
    steps(resumed, 3)
    for a, b in zip(after, model.parameters()):
        assert torch.equal(a, b)

    # torch's AdamW keeps the same state (step, exp_avg, exp_avg_sq): a run of theirs continues in ours
    model.load_state_dict(saved["model"])
    theirs = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, foreach=False)
    steps(theirs, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ours = AdamW(param_groups(model, 0.1), lr=1e-2)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # state_dict() shares the tensors
    steps(theirs, 3)
    expected = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(start)
    steps(ours, 3)
    for a, b in zip(expected, model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_adamw_rejects_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="≥ 0"):
        AdamW(p, lr=-1.0)


# ------------------------------------------------------------------------------------------ decay groups


def test_param_groups_tied_llama():
    model = tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    d, nd = names(model, decay["params"]), names(model, no_decay["params"])
    assert not d & nd and d | nd == {n for n, _ in model.named_parameters()}
    proj = "attn.q_proj attn.k_proj attn.v_proj attn.o_proj ffn.gate_proj ffn.up_proj ffn.down_proj".split()
    assert d == {f"layers.{i}.{m}.weight" for i in range(2) for m in proj}
    assert "embed.weight" in nd  # the tied head is this tensor: not decayed
    assert all(n.endswith("norm.weight") for n in nd - {"embed.weight"})


def test_param_groups_gpt2_untied_biases_positions():
    model = gpt2_like()
    decay, no_decay = param_groups(model, 0.1)
    d, nd = names(model, decay["params"]), names(model, no_decay["params"])
    assert "lm_head.weight" in d  # untied: a linear layer like any other
    assert {"embed.weight", "pos_embed.weight", "norm.weight", "norm.bias"} <= nd
    assert all(n.endswith(".bias") for n in nd if n.startswith("layers.") and "norm" not in n)
    assert all(model.get_parameter(n).ndim == 2 for n in d)
    # a frozen parameter is in neither group
    model.embed.weight.requires_grad_(False)
    assert "embed.weight" not in names(model, [p for g in param_groups(model, 0.1) for p in g["params"]])


# ------------------------------------------------------------------------------------------ Muon


@pytest.mark.parametrize("shape", [(64, 128), (200, 48), (96, 96)])
def test_newton_schulz_singular_values(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    if shape[0] == shape[1]:  # a square Gaussian has σ near 0; give it a spread of 0.2 … 5 instead
        u, _, vh = torch.linalg.svd(g)
        g = u @ torch.diag(torch.linspace(0.2, 5.0, shape[0])) @ vh
    o = newton_schulz(g)
    assert o.shape == g.shape and o.dtype == torch.bfloat16
    s = torch.linalg.svdvals(o.double())
    assert s.min() > 0.65 and s.max() < 1.2, (s.min(), s.max())  # the quintic's band, not exactly 1

    # each singular value follows the scalar iteration σ ← aσ + bσ³ + cσ⁵ from σ / ‖g‖_F (bf16: ±0.03)
    sigma = torch.linalg.svdvals(g.double())
    x = sigma / sigma.norm()
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    torch.testing.assert_close(s.sort().values, x.sort().values, atol=0.03, rtol=0)

    # and the directions are g's: O ≈ U·S'·Vᵀ points the way of the polar factor U·Vᵀ
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh
    assert (o.double() * polar).sum() / (o.double().norm() * polar.norm()) > 0.98


def test_newton_schulz_rejects_non_matrices():
    with pytest.raises(ValueError, match="matrices"):
        newton_schulz(torch.randn(4, 4, 4))


def test_muon_one_step_is_the_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(48, 16))  # tall: the step is scaled by √(48/16)
    g = torch.randn(48, 16)
    start = p.detach().clone()
    p.grad = g.clone()
    opt = Muon([p], lr=0.02, momentum=0.95, weight_decay=0.1)
    opt.step()
    buf = 0.05 * g  # lerp from 0
    update = newton_schulz(g.lerp(buf, 0.95)).float()  # Nesterov: (1 − μ)·g + μ·buf
    torch.testing.assert_close(p.detach(), start * (1 - 0.02 * 0.1) - 0.02 * 3**0.5 * update)
    assert torch.equal(p.grad, g)  # the gradient is left as it was
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)


def test_muon_only_takes_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(8))])


def test_build_optimizers_split():
    model = tiny()
    muon, adamw = build_optimizers(model, lr_adamw=1e-3, lr_muon=0.02, weight_decay=0.1)
    m = names(model, muon.param_groups[0]["params"])
    a = names(model, [p for g in adamw.param_groups for p in g["params"]])
    assert not m & a and m | a == {n for n, _ in model.named_parameters()}
    assert m == names(model, param_groups(model, 0.1)[0]["params"])  # every hidden matrix, nothing else
    norms = {f"layers.{i}.{n}_norm.weight" for i in (0, 1) for n in ("attn", "ffn")}
    assert a == {"embed.weight", "norm.weight"} | norms
    assert all(g["weight_decay"] == 0.0 for g in adamw.param_groups)  # tied: no matrix left to decay
    set_lr([muon, adamw], 1e-3)  # the schedule's peak: each optimizer at its own rate
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02) and adamw.param_groups[0]["lr"] == 1e-3

    gpt2 = gpt2_like()
    adamw = build_optimizers(gpt2, 1e-3, 0.02, 0.1)[1]
    decayed = [p for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert names(gpt2, decayed) == {"lm_head.weight"}  # untied head: decayed, on AdamW

    moe = tiny(n_experts=4, n_experts_per_tok=2, moe_ffn_dim=24, shared_expert_dim=40)
    hidden = names(moe, hidden_matrices(moe))
    assert "layers.0.ffn.router.weight" in hidden and "layers.0.ffn.experts.3.down_proj.weight" in hidden
    assert "layers.0.ffn.shared_gate.weight" not in hidden  # (1, dim): a vector, AdamW's


def test_muon_reduces_loss():
    """Muon for the hidden matrices + AdamW for the rest (as nanochat) memorizes a batch: ln 61 → < 1."""
    x = torch.randint(0, 61, (4, 17), generator=torch.Generator().manual_seed(3))
    model = tiny()
    torch.nn.init.normal_(model.embed.weight, std=0.02)  # GPT-2's init: logits start near uniform
    opts = build_optimizers(model, lr_adamw=1e-2, lr_muon=0.02, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(61)) < 0.1
    assert losses[-1] < 0.25 * losses[0], losses


# ------------------------------------------------------------------------------------------ clipping


def grads(seed: int, scale: float) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    for p in ps[:-1]:  # the last one has no gradient: skipped, like torch
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return ps


@pytest.mark.parametrize("scale,max_norm", [(1.0, 1.0), (1.0, 1e3), (1e-3, 1.0)])
def test_clip_grad_norm_equals_torch(scale, max_norm):
    ours, theirs = grads(0, scale), grads(0, scale)
    n_ours = clip_grad_norm_(ours, max_norm)
    n_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(n_ours, n_theirs, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours if p.grad is not None]))
    assert after <= max_norm * (1 + 1e-5)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_non_finite_is_returned_untouched(bad):
    ps = grads(0, 1.0)
    ps[0].grad[0, 0] = bad
    before = [p.grad.clone() for p in ps if p.grad is not None]
    norm = clip_grad_norm_(ps, 1.0)
    assert not torch.isfinite(norm)
    for a, b in zip(before, [p.grad for p in ps if p.grad is not None]):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
    assert clip_grad_norm_([torch.nn.Parameter(torch.zeros(3))], 1.0) == 0  # no gradients at all
