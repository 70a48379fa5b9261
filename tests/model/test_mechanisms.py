"""Each mechanism against its definition, on small random tensors."""

from __future__ import annotations

import torch

from lmforge.model.attention import Attention, attention_math, build_mask, repeat_kv
from lmforge.model.config import ModelConfig
from lmforge.model.layers import MoE
from lmforge.model.rope import apply_rope, rope_cos_sin, rope_frequencies
from lmforge.model.transformer import Transformer


def test_rope_preserves_norms_and_depends_on_relative_position():
    torch.manual_seed(0)
    d = 32
    inv, _ = rope_frequencies(d, 10000.0, None, 128)
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def rot(x, pos):
        cos, sin = rope_cos_sin(inv, torch.tensor([[pos]]))
        return apply_rope(x, cos, sin)

    assert torch.allclose(rot(q, 7).norm(), q.norm(), atol=1e-5)
    dots = [(rot(q, m) * rot(k, m - 3)).sum() for m in (3, 10, 50, 100)]
    assert all(torch.allclose(dots[0], x, atol=1e-4) for x in dots)
    assert not torch.allclose((rot(q, 10) * rot(k, 3)).sum(), (rot(q, 10) * rot(k, 4)).sum(), atol=1e-4)


def test_causal_and_sliding_masks():
    m = build_mask(None, 6, causal=True, window=None, dtype=torch.float32, device=torch.device("cpu"))[0, 0]
    assert ((m == 0) == torch.tril(torch.ones(6, 6, dtype=torch.bool))).all()
    w = build_mask(None, 6, causal=True, window=3, dtype=torch.float32, device=torch.device("cpu"))[0, 0]
    allowed = w == 0
    for i in range(6):
        assert allowed[i].nonzero().flatten().tolist() == list(range(max(0, i - 2), i + 1))
    pad = build_mask(
        torch.tensor([[0, 1, 1]]),
        3,
        causal=False,
        window=None,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    assert ((pad[0, 0] == 0) == torch.tensor([[0, 1, 1]] * 3, dtype=torch.bool)).all()


def test_gqa_equals_mha_with_repeated_kv_heads_and_sdpa_equals_math():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_heads=8, n_kv_heads=2, n_layers=1, vocab_size=10, ffn_dim=8)
    attn = Attention(cfg, 0)
    x = torch.randn(2, 9, 64)
    mask = build_mask(None, 9, True, None, torch.float32, x.device, 2)
    fast = attn(x, None, mask)
    attn.use_sdpa = False
    slow = attn(x, None, mask)
    assert torch.allclose(fast, slow, atol=1e-5)
    # the same layer as plain MHA: key/value projections with each kv head copied to its query group
    mha_cfg = ModelConfig(dim=64, n_heads=8, n_kv_heads=8, n_layers=1, vocab_size=10, ffn_dim=8)
    mha = Attention(mha_cfg, 0)
    with torch.no_grad():
        mha.q_proj.weight.copy_(attn.q_proj.weight)
        mha.o_proj.weight.copy_(attn.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(attn, name).weight.view(2, 8, 64)  # (kv heads, head_dim, dim)
            getattr(mha, name).weight.copy_(w.repeat_interleave(4, dim=0).reshape(64, 64))
    assert torch.allclose(mha(x, None, mask), fast, atol=1e-5)
    k = torch.randn(2, 2, 5, 8)
    assert torch.equal(repeat_kv(k, 4)[:, 4:8], k[:, 1:2].expand(2, 4, 5, 8))


def test_softcap_limits_logits():
    q, k, v = torch.randn(1, 1, 4, 8) * 50, torch.randn(1, 1, 4, 8) * 50, torch.eye(4, 8)[None, None]
    capped = attention_math(q, k, v, None, 1.0, softcap=1.0)
    # with logits squashed into (-1, 1) no weight can exceed e^2 / (e^2 + 3·1) for 4 keys
    assert capped.max() <= torch.e**2 / (torch.e**2 + 3) + 1e-5


def test_moe_with_all_experts_equals_dense_mixture():
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=16, ffn_dim=24, n_heads=2, n_layers=1, vocab_size=10, n_experts=4, n_experts_per_tok=4
    )
    moe = MoE(cfg)
    x = torch.randn(3, 5, 16)
    probs = torch.softmax(moe.router(x), -1)
    dense = sum(probs[..., e, None] * moe.experts[e](x) for e in range(4))
    assert torch.allclose(moe(x), dense, atol=1e-5)
    cfg.n_experts_per_tok = 2
    moe2 = MoE(cfg)
    assert torch.allclose(moe2(x), moe2.forward_dense(x), atol=1e-5)
    cfg.shared_expert_dim = 20  # Qwen-MoE: an always-on expert behind a sigmoid gate
    moe3 = MoE(cfg)
    assert torch.allclose(moe3(x), moe3.forward_dense(x), atol=1e-5)
    assert not torch.allclose(moe3(x), moe3(x) - moe3.shared(x), atol=1e-3)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=50, ffn_dim=48)
    ).eval()
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6)
    assert not torch.allclose(a[0, 7:], b[0, 7:])


def test_sinusoidal_positions_follow_the_formula():
    from lmforge.model.transformer import sinusoidal_positions

    pe = sinusoidal_positions(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert abs(pe[pos, 2 * i] - torch.tensor(angle).sin()) < 1e-5
            assert abs(pe[pos, 2 * i + 1] - torch.tensor(angle).cos()) < 1e-5
    model = Transformer(
        ModelConfig(dim=16, n_heads=2, n_layers=1, vocab_size=20, ffn_dim=8, position="sinusoidal")
    )
    assert model(torch.randint(0, 20, (2, 9))).shape == (2, 9, 20)
