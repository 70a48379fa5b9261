"""ModelConfig: every design choice of a transformer as one named field.

The transformer families differ in a handful of choices, not in kind (Vaswani et al. 2017 → GPT-2 →
Llama → Mistral → Gemma): where positions come from, which norm and where it sits, which activation the
feed-forward uses, how many key/value heads attention shares, whether some layers only look at a
window. One dataclass names them all, and `transformer.py` reads it; `families.py` fills it from a
Hugging Face config.json or GGUF metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Norm = Literal["rmsnorm", "layernorm"]
Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]
Position = Literal["rope", "learned", "sinusoidal", "none"]


@dataclass
class ModelConfig:
    family: str = "llama"
    vocab_size: int = 32000
    dim: int = 512  # model width (d_model)
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; in between: GQA
    head_dim: int | None = None  # None: dim // n_heads
    ffn_dim: int = 1376
    max_seq_len: int = 2048

    # normalization
    norm: Norm = "rmsnorm"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0  # Gemma scales by (1 + weight): offset 1.0
    # "pre": x + f(norm(x)) (GPT-2, Llama); "post": norm(x + f(x)) (original Transformer, BERT);
    # "sandwich": x + norm(f(norm(x))) (Gemma 2/3)
    norm_position: Literal["pre", "post", "sandwich"] = "pre"
    qk_norm: bool = False  # normalize queries and keys per head (Gemma 3, Qwen 3, OLMo 2)

    # feed-forward
    activation: Activation = "silu"
    gated_ffn: bool = True  # SwiGLU / GeGLU: act(x W_gate) * (x W_up)
    mlp_bias: bool = False

    # attention
    attn_bias: bool = False  # bias on q, k, v (Qwen2 has it on q/k/v only, see o_bias)
    o_bias: bool = False
    attn_scale: float | None = None  # None: 1/sqrt(head_dim)
    attn_softcap: float | None = None  # Gemma 2: tanh soft-capping of attention logits
    sliding_window: int | None = None  # Mistral: each query sees the last `sliding_window` keys
    layer_types: list[str] | None = None  # per layer "full" or "sliding" (Gemma 3: 5 local, 1 global)
    causal: bool = True

    # positions
    position: Position = "rope"
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None  # Gemma 3 uses a smaller base on sliding layers
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear" | "dynamic" | "yarn" | "llama3", ...}
    rope_fraction: float = 1.0  # share of head_dim that is rotated

    # embeddings and output
    tie_embeddings: bool = True
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(dim)
    final_softcap: float | None = None  # Gemma 2: tanh soft-capping of the output logits

    # mixture of experts (0 experts: a dense FFN)
    n_experts: int = 0
    n_experts_per_tok: int = 2
    moe_renormalize: bool = True  # Mixtral renormalizes the top-k router weights; Qwen-MoE may not
    moe_ffn_dim: int | None = None  # width of each expert (None: ffn_dim)
    shared_expert_dim: int = 0  # Qwen-MoE: one always-on expert of this width, gated by a sigmoid
    router_aux_loss_coef: float = 0.0

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}; set head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.layer_types is not None and len(self.layer_types) != self.n_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")

    def is_sliding(self, layer: int) -> bool:
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding"
        return self.sliding_window is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
