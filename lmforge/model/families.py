"""Families: how each checkpoint format describes a model, translated into one ModelConfig and our names.

A Hugging Face folder says what it is in config.json (`model_type`), a GGUF file in its metadata
(`general.architecture`). Each family below maps those fields to ModelConfig and its tensor names to
ours (`layers.3.attn.q_proj.weight`, ...). Adding a family is adding an entry here, not a model class.
"""

from __future__ import annotations

import re
from typing import Any

from lmforge.model.config import ModelConfig

HF_FAMILIES = ("llama", "mistral", "qwen2", "mixtral")
GGUF_FAMILIES = ("llama", "gemma3")


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers 4's rope_theta/rope_scaling or 5's rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(theta), scaling


def config_from_hf(cfg: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict."""
    family = cfg.get("model_type")
    if family not in HF_FAMILIES:
        raise ValueError(
            f"{where}: model_type {family!r} is not supported; supported: {', '.join(HF_FAMILIES)}"
        )
    theta, scaling = _rope(cfg)
    act = cfg.get("hidden_act", "silu")
    act = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act)
    try:
        c = ModelConfig(
            family=family,
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads"),
            head_dim=cfg.get("head_dim"),
            ffn_dim=cfg["intermediate_size"],
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            activation=act,
            rope_theta=theta,
            rope_scaling=scaling,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None
    if family == "llama":
        c.attn_bias = c.o_bias = bool(cfg.get("attention_bias", False))
        c.mlp_bias = bool(cfg.get("mlp_bias", False))
    if family == "qwen2":
        c.attn_bias = True  # q, k, v have biases; the output projection does not
        if cfg.get("use_sliding_window"):
            c.sliding_window = cfg.get("sliding_window")
    if family in ("mistral", "mixtral"):
        c.sliding_window = cfg.get("sliding_window")
    if family == "mixtral":
        c.n_experts = cfg["num_local_experts"]
        c.n_experts_per_tok = cfg["num_experts_per_tok"]
        c.router_aux_loss_coef = cfg.get("router_aux_loss_coef", 0.0)
    return c


# Hugging Face tensor names → ours (first match wins). Mixtral's hub files keep one tensor per expert.
_HF_NAMES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"layers.\1.attn.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"layers.\1.ffn.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight", r"layers.\1.ffn.router.weight"),
    (
        r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w1\.weight",
        r"layers.\1.ffn.experts.\2.gate_proj.weight",
    ),
    (
        r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w3\.weight",
        r"layers.\1.ffn.experts.\2.up_proj.weight",
    ),
    (
        r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w2\.weight",
        r"layers.\1.ffn.experts.\2.down_proj.weight",
    ),
]
_HF_COMPILED = [(re.compile(p + r"\Z"), r) for p, r in _HF_NAMES]


def hf_name_to_ours(name: str) -> str | None:
    for pat, repl in _HF_COMPILED:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


# ---------------------------------------------------------------------- GGUF
def config_from_gguf(meta: dict[str, Any], where: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in GGUF_FAMILIES:
        raise ValueError(
            f"{where}: architecture {arch!r} is not supported; supported: {', '.join(GGUF_FAMILIES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        full = f"{arch}.{key}"
        if full not in meta and default is None:
            raise ValueError(f"{where}: GGUF metadata has no '{full}'")
        return meta.get(full, default)

    n_heads = get("attention.head_count")
    dim = get("embedding_length")
    tokens = meta.get("tokenizer.ggml.tokens")
    cfg = ModelConfig(
        family=arch,
        vocab_size=get("vocab_size", len(tokens) if tokens else 0) or len(tokens),
        dim=dim,
        n_layers=get("block_count"),
        n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", n_heads),
        head_dim=get("attention.key_length", dim // n_heads),
        ffn_dim=get("feed_forward_length"),
        max_seq_len=get("context_length", 2048),
        norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        tie_embeddings=True,  # decided by the loader: untied when the file has output.weight
    )
    if arch == "gemma3":
        # Gemma 3 (Gemma Team 2025): GeGLU, (1 + w) norms around both sub-layers, QK-norm, embeddings
        # scaled by √dim, and five sliding-window (local) layers per global one; the local layers use
        # RoPE base 10,000 (llama.cpp and transformers fix these; the GGUF does not store them).
        cfg.activation = "gelu_tanh"
        cfg.norm_offset = 1.0
        cfg.norm_position = "sandwich"
        cfg.qk_norm = True
        cfg.embed_scale = dim**0.5
        cfg.sliding_window = get("attention.sliding_window")
        cfg.layer_types = ["full" if (i + 1) % 6 == 0 else "sliding" for i in range(cfg.n_layers)]
        cfg.rope_local_theta = 10000.0
    return cfg


_GGUF_NAMES = [
    (r"token_embd\.weight", "embed.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.attn_norm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"layers.\1.attn.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"layers.\1.attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"layers.\1.ffn.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"layers.\1.ffn.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"layers.\1.ffn.down_proj.weight"),
    (r"blk\.(\d+)\.attn_q_norm\.weight", r"layers.\1.attn.q_norm.weight"),
    (r"blk\.(\d+)\.attn_k_norm\.weight", r"layers.\1.attn.k_norm.weight"),
    (r"blk\.(\d+)\.post_attention_norm\.weight", r"layers.\1.post_attn_norm.weight"),
    (r"blk\.(\d+)\.post_ffw_norm\.weight", r"layers.\1.post_ffn_norm.weight"),
]
_GGUF_COMPILED = [(re.compile(p + r"\Z"), r) for p, r in _GGUF_NAMES]


def gguf_name_to_ours(name: str) -> str | None:
    for pat, repl in _GGUF_COMPILED:
        if pat.match(name):
            return pat.sub(repl, name)
    return None
