"""The transformer's small parts: normalization, activations, the feed-forward and mixture of experts.

- LayerNorm (Ba et al. 2016) centres and scales each vector; RMSNorm (Zhang & Sennrich 2019) only
  scales by the root mean square — cheaper, and it works as well, so Llama and its descendants use it.
  Norms are computed in float32 whatever the model's dtype: squares of bf16 values lose too much.
- The feed-forward is two (or, gated, three) matrices around a non-linearity. GLU variants (Shazeer
  2020) multiply act(x W_gate) by x W_up: SwiGLU (SiLU, Llama) and GeGLU (GELU, Gemma).
- Mixture of experts (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024)
  replaces the one feed-forward with n experts and a router that sends each token to its top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight). Gemma stores weight - 1 and uses offset 1."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma: scale in float32, then cast
            return (h * (self.offset + self.weight.float())).to(dtype)
        return self.weight * h.to(dtype)  # Llama: cast, then scale


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps, cfg.norm_offset)
    if cfg.norm == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.norm_eps)
    raise ValueError(f"unknown norm {cfg.norm!r}; use 'rmsnorm' or 'layernorm'")


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Feed-forward: down(act(gate(x)) * up(x)) when gated (SwiGLU/GeGLU), else down(act(up(x)))."""

    def __init__(self, cfg: ModelConfig, ffn_dim: int | None = None):
        super().__init__()
        ffn_dim = ffn_dim or cfg.ffn_dim
        self.act = activation(cfg.activation)
        self.gate_proj = nn.Linear(cfg.dim, ffn_dim, bias=cfg.mlp_bias) if cfg.gated_ffn else None
        self.up_proj = nn.Linear(cfg.dim, ffn_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(ffn_dim, cfg.dim, bias=cfg.mlp_bias)
        self.gate_up_proj = None  # gate and up in one matmul (lmforge.model.quantize.fuse_projections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        if self.gate_proj is not None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class MoE(nn.Module):
    """Sparse mixture of experts: each token goes to its top-k experts, weighted by the router.

    forward() runs each expert only on the tokens routed to it; forward_dense() runs every expert on
    every token and mixes with the same (mostly zero) weights — slow, obviously right, used by tests.
    The routing of the last forward is kept in `routing` for the load-balancing loss.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.renormalize = (
            cfg.n_experts,
            cfg.n_experts_per_tok,
            cfg.moe_renormalize,
        )
        self.router = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, cfg.moe_ffn_dim) for _ in range(cfg.n_experts))
        self.shared_expert = MLP(cfg, cfg.shared_expert_dim) if cfg.shared_expert_dim else None
        self.shared_gate = nn.Linear(cfg.dim, 1, bias=False) if cfg.shared_expert_dim else None
        self.routing: tuple[torch.Tensor, torch.Tensor] | None = None  # (probs (N, E), experts (N, k))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) tokens → router probabilities (N, E), top-k weights (N, k) and expert ids (N, k)."""
        probs = F.softmax(self.router(x), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        probs, weights, experts = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(experts == e)
            if token.numel():
                out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        self.routing = (probs, experts)
        return (out + self.shared(x)).reshape(shape)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Qwen-MoE's shared expert: every token gets it, scaled by a learned sigmoid gate."""
        if self.shared_expert is None:
            return torch.zeros_like(x)
        return torch.sigmoid(self.shared_gate(x)) * self.shared_expert(x)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        _, weights, experts = self.route(x)
        mix = torch.zeros(x.shape[0], self.n_experts, dtype=x.dtype, device=x.device)
        mix.scatter_(1, experts, weights)  # (N, E), zero for experts a token was not sent to
        every = torch.stack([expert(x) for expert in self.experts], dim=1)  # (N, E, D)
        return ((mix[..., None] * every).sum(1) + self.shared(x)).reshape(shape)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss: n · Σ_e (share of routings to e) · (mean probability of e).

    It is smallest (1.0) when tokens spread evenly; added to the training loss it keeps the router
    from sending everything to a few experts. Matches transformers' load_balancing_loss_func.
    """
    mask = F.one_hot(experts, n_experts).float()  # (N, k, E)
    tokens_per_expert = mask.mean(dim=0)  # (k, E)
    prob_per_expert = probs.mean(dim=0)  # (E,)
    return (tokens_per_expert * prob_per_expert[None]).sum() * n_experts
