"""Parameter and FLOP counts agree with PyTorch's own FLOP counter."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.model.config import ModelConfig
from lmforge.model.stats import count
from lmforge.model.transformer import Transformer


def test_flops_match_torch_flop_counter():
    cfg = ModelConfig(
        dim=64, n_heads=4, n_kv_heads=2, n_layers=3, vocab_size=300, ffn_dim=96, tie_embeddings=False
    )
    model = Transformer(cfg).eval()
    t = 40
    stats = count(model, seq_len=t)
    assert stats.params == sum(p.numel() for p in model.parameters())
    for layer in model.layers:  # the written-out attention: PyTorch's counter sees its matmuls
        layer.attn.use_sdpa = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 300, (1, t)))
    assert counter.get_total_flops() == stats.flops_per_token * t


def test_moe_counts_only_active_experts():
    cfg = ModelConfig(
        dim=32, n_heads=4, n_layers=2, vocab_size=100, ffn_dim=48, n_experts=8, n_experts_per_tok=2
    )
    model = Transformer(cfg)
    stats = count(model)
    expert = 3 * 32 * 48
    assert stats.params - stats.active_params == 2 * 6 * expert
