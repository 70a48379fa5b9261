"""Named starting points: each family's published shape as a ModelConfig, for building from scratch.

`preset("gpt2")` gives GPT-2 small (124M) and `preset("smollm2-135m")` SmolLM2's shape; pass overrides
to shrink one for an experiment: `preset("llama", n_layers=4, dim=256)`. Loading a checkpoint never
needs these: its config comes from the file (families.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lmforge.model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Radford et al. 2019, the 124M model
    "gpt2": ModelConfig(
        family="gpt2", vocab_size=50257, dim=768, n_layers=12, n_heads=12, ffn_dim=3072, max_seq_len=1024,
        norm="layernorm", activation="gelu_tanh", gated_ffn=False, mlp_bias=True, attn_bias=True, o_bias=True,
        position="learned",
    ),
    # Llama family at SmolLM2-135M's shape (Allal et al. 2025)
    "smollm2-135m": ModelConfig(
        family="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
        max_seq_len=8192, rope_theta=100000.0,
    ),
    # Mistral 7B's choices at a small size: GQA and a sliding window
    "mistral": ModelConfig(
        family="mistral", vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1408,
        max_seq_len=4096, sliding_window=1024, rope_theta=1e6, tie_embeddings=False,
    ),
    # Mixtral's top-2-of-8 experts at a small size
    "mixtral": ModelConfig(
        family="mixtral", vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1024,
        n_experts=8, n_experts_per_tok=2, rope_theta=1e6, tie_embeddings=False, router_aux_loss_coef=0.02,
    ),
    # Gemma 3 270M (Gemma Team 2025)
    "gemma3-270m": ModelConfig(
        family="gemma3_text", vocab_size=262144, dim=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256,
        ffn_dim=2048, max_seq_len=32768, norm_eps=1e-6, norm_offset=1.0, norm_position="sandwich", qk_norm=True,
        activation="gelu_tanh", sliding_window=512, rope_theta=1e6, rope_local_theta=10000.0,
        layer_types=["full" if (i + 1) % 6 == 0 else "sliding" for i in range(18)], embed_scale=640**0.5,
    ),
}  # fmt: skip
PRESETS["llama"] = PRESETS["smollm2-135m"]


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a named preset, with any fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    base = PRESETS[name]
    if "n_layers" in overrides and base.layer_types is not None and "layer_types" not in overrides:
        # keep the local/global rhythm (every 6th layer global) at the new depth
        overrides["layer_types"] = [
            "full" if (i + 1) % 6 == 0 else "sliding" for i in range(overrides["n_layers"])
        ]
    if "n_heads" in overrides and "n_kv_heads" not in overrides:
        # keep the preset's grouping (GPT-2: one KV head per query head; SmolLM2: 3 queries per KV head)
        group = base.n_heads // base.n_kv_heads
        n = overrides["n_heads"]
        overrides["n_kv_heads"] = n // group if n % group == 0 else n
    if "dim" in overrides and "n_heads" in overrides and "head_dim" not in overrides:
        overrides["head_dim"] = None  # recomputed as dim // n_heads, not the preset's
    return replace(base, **overrides)
