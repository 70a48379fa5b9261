"""Families: how each checkpoint format describes a model, translated into one ModelConfig and our names.

A Hugging Face folder says what it is in config.json (`model_type`), a GGUF file in its metadata
(`general.architecture`). Each family below maps those fields to ModelConfig and its tensor names to
ours (`layers.3.attn.q_proj.weight`, ...). Adding a family is adding an entry here, not a model class.
"""

from __future__ import annotations

import re
from typing import Any

from lmforge.model.config import ModelConfig

HF_FAMILIES = ("llama", "mistral", "qwen2", "qwen2_moe", "mixtral", "gemma2", "gemma3_text", "gpt2")
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
    if family == "gpt2":
        return _gpt2_config(cfg, where)
    if family in ("gemma2", "gemma3_text"):
        return _gemma_config(cfg, where)
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
    if family == "qwen2_moe":
        if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            raise ValueError(
                f"{where}: Qwen-MoE with dense layers mixed in (decoder_sparse_step/mlp_only_layers) is not supported"
            )
        c.n_experts = cfg["num_experts"]
        c.n_experts_per_tok = cfg["num_experts_per_tok"]
        c.moe_renormalize = bool(cfg.get("norm_topk_prob", False))
        c.moe_ffn_dim = cfg["moe_intermediate_size"]
        c.shared_expert_dim = cfg.get("shared_expert_intermediate_size", 0)
        c.router_aux_loss_coef = cfg.get("router_aux_loss_coef", 0.0)
    if family in ("qwen2", "qwen2_moe"):
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


def _gpt2_config(cfg: dict[str, Any], where: str) -> ModelConfig:
    """GPT-2 (Radford et al. 2019): learned positions, pre-norm LayerNorm, GELU (tanh) MLP, biases."""
    try:
        dim = cfg["n_embd"]
        return ModelConfig(
            family="gpt2",
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=cfg["n_layer"],
            n_heads=cfg["n_head"],
            ffn_dim=cfg.get("n_inner") or 4 * dim,
            max_seq_len=cfg["n_positions"],
            norm="layernorm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            activation="gelu_tanh",
            gated_ffn=False,
            mlp_bias=True,
            attn_bias=True,
            o_bias=True,
            position="learned",
            tie_embeddings=True,
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


def _gemma_config(cfg: dict[str, Any], where: str) -> ModelConfig:
    """Gemma 2 and 3: sandwich (1 + w) norms, GeGLU, √d embeddings, local/global layers. Gemma 2 soft-caps
    its attention and output logits; Gemma 3 drops the attention cap for QK-norm and gives local layers
    their own RoPE base."""
    gemma3 = cfg.get("model_type") == "gemma3_text"
    params = cfg.get("rope_parameters") or {}
    if not gemma3:  # one RoPE for every layer
        params = {"full_attention": params, "sliding_attention": params} if params else {}
    full = params.get("full_attention") or {"rope_theta": cfg.get("rope_theta", 1_000_000.0)}
    local = params.get("sliding_attention") or {"rope_theta": cfg.get("rope_local_base_freq", 10_000.0)}
    scaling = full if full.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
    try:
        n_layers = cfg["num_hidden_layers"]
        pattern = cfg.get("sliding_window_pattern", 6)
        types = cfg.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
        ]
        return ModelConfig(
            family=cfg["model_type"],
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=n_layers,
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads"),
            head_dim=cfg.get("head_dim", 256),
            ffn_dim=cfg["intermediate_size"],
            max_seq_len=cfg.get("max_position_embeddings", 131072),
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            norm_offset=1.0,
            norm_position="sandwich",
            qk_norm=gemma3,
            activation="gelu_tanh",
            attn_scale=cfg.get("query_pre_attn_scalar", 256) ** -0.5,
            attn_softcap=None if gemma3 else cfg.get("attn_logit_softcapping"),  # Gemma 3 ignores it
            final_softcap=cfg.get("final_logit_softcapping"),
            sliding_window=cfg.get("sliding_window"),
            layer_types=["sliding" if t == "sliding_attention" else "full" for t in types],
            rope_theta=float(full["rope_theta"]),
            rope_local_theta=float(local["rope_theta"]) if gemma3 else None,
            rope_scaling=scaling,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            embed_scale=cfg["hidden_size"] ** 0.5,
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


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
# Gemma 2 and 3 have four norms per layer: "post_attention_layernorm" is the norm *after* attention, not the
# pre-FFN norm that Llama's tensor of the same name is.
_GEMMA3_NAMES = [
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"layers.\1.attn.\2_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.post_attn_norm.weight"),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.weight", r"layers.\1.post_ffn_norm.weight"),
]
_QWEN2_MOE_NAMES = [
    (r"model\.layers\.(\d+)\.mlp\.gate\.weight", r"layers.\1.ffn.router.weight"),
    (
        r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight",
        r"layers.\1.ffn.experts.\2.\3_proj.weight",
    ),
    (
        r"model\.layers\.(\d+)\.mlp\.shared_expert\.(gate|up|down)_proj\.weight",
        r"layers.\1.ffn.shared_expert.\2_proj.weight",
    ),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight", r"layers.\1.ffn.shared_gate.weight"),
]
_GPT2_NAMES = [
    (r"(?:transformer\.)?wte\.weight", "embed.weight"),
    (r"(?:transformer\.)?wpe\.weight", "pos_embed.weight"),
    (r"(?:transformer\.)?ln_f\.(weight|bias)", r"norm.\1"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_1\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_2\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"layers.\1.attn.qkv.\2"),  # split below
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"layers.\1.attn.o_proj.\2"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"layers.\1.ffn.up_proj.\2"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"layers.\1.ffn.down_proj.\2"),
    (r"lm_head\.weight", "lm_head.weight"),
]


def _compile(table: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(p + r"\Z"), r) for p, r in table]


_IGNORED = re.compile(
    r".*(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)\Z"
)  # cached buffers, not weights


def hf_name_table(family: str) -> list[tuple[str, str]]:
    """The (Hugging Face regex, our name) table of a family; export inverts it."""
    tables = {
        "gemma2": _GEMMA3_NAMES + _HF_NAMES,  # Gemma 2 has the same four norms, no QK-norm
        "gemma3_text": _GEMMA3_NAMES + _HF_NAMES,
        "qwen2_moe": _QWEN2_MOE_NAMES + _HF_NAMES,
        "gpt2": _GPT2_NAMES,
    }
    return tables.get(family, _HF_NAMES)


def hf_tensors_to_ours(cfg: ModelConfig, tensors: dict[str, Any], where: str) -> dict[str, Any]:
    """Rename a family's Hugging Face tensors to ours (and reshape the few that differ)."""
    table = _compile(hf_name_table(cfg.family))
    out = {}
    for name, t in tensors.items():
        for pat, repl in table:
            if pat.match(name):
                out[pat.sub(repl, name)] = t
                break
        else:
            if not _IGNORED.match(name):
                raise ValueError(f"{where}: unknown tensor {name!r} for a {cfg.family} model")
    if cfg.family == "gpt2":
        # GPT-2 stores its linear layers as Conv1D, (in, out): transpose to nn.Linear's (out, in), and
        # split the fused query/key/value projection into three.
        for name in list(out):
            t = out[name]
            if ".attn.qkv." in name:
                parts = (t.T if name.endswith("weight") else t).chunk(3, dim=0)
                for letter, part in zip("qkv", parts, strict=True):
                    out[name.replace("qkv", f"{letter}_proj")] = part.contiguous()
                del out[name]
            elif name.startswith("layers.") and name.endswith(".weight") and t.ndim == 2:
                out[name] = t.T.contiguous()
    return out


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
        cfg.family = "gemma3_text"  # the same model as Hugging Face's gemma3_text
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
