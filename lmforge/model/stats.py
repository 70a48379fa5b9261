"""Counting a model: parameters and the floating-point operations of a forward pass.

A matrix multiply of (1 × n) by (n × m) costs 2nm FLOPs (a multiply and an add per weight), so a
token's forward pass costs about 2 FLOPs per weight it touches (Kaplan et al. 2020) — every
non-embedding weight plus the output projection — plus attention itself: scores and the weighted sum,
each 2 · T · d_head per head, for T tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmforge.model.config import ModelConfig


@dataclass
class ModelStats:
    params: int
    embedding_params: int
    active_params: int  # per token: with MoE only the routed experts count
    flops_per_token: float  # forward, at the given context length

    def summary(self, seq_len: int) -> str:
        return (
            f"parameters {self.params / 1e6:.1f}M (embedding {self.embedding_params / 1e6:.1f}M, "
            f"active per token {self.active_params / 1e6:.1f}M); forward {self.flops_per_token / 1e9:.2f} "
            f"GFLOP per token at {seq_len} tokens of context"
        )


def count(model, seq_len: int = 512) -> ModelStats:
    """Parameter counts of a built model and its forward FLOPs per token for a context of seq_len."""
    cfg: ModelConfig = model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + (
        model.pos_embed.weight.numel() if model.pos_embed is not None else 0
    )
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if cfg.tie_embeddings:
        linear += cfg.dim * cfg.vocab_size  # the output projection reuses the embedding matrix
    inactive = 0
    if cfg.n_experts:  # each token runs only n_experts_per_tok of the experts
        per_expert = sum(p.numel() for p in model.layers[0].ffn.experts[0].parameters())
        inactive = cfg.n_layers * per_expert * (cfg.n_experts - cfg.n_experts_per_tok)
    active = params - inactive
    matmul = 2 * (linear - inactive)
    context = [
        min(seq_len, cfg.sliding_window) if cfg.is_sliding(i) and cfg.sliding_window else seq_len
        for i in range(cfg.n_layers)
    ]
    attention = sum(2 * 2 * cfg.n_heads * cfg.head_dim * t for t in context)  # q·k and weights·v
    return ModelStats(params, embedding, active, float(matmul + attention))
