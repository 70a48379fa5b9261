"""The transformer, once: embeddings → N × (attention, feed-forward) blocks → norm → logits.

Every family (GPT-2, Llama/SmolLM2, Mistral, Qwen2, Mixtral, Gemma 3) is this module with a different
ModelConfig; nothing here knows a family's name. Read it top to bottom:

    h = embed(ids) · embed_scale (+ learned/sinusoidal positions)
    for each block:                       pre-norm (GPT-2, Llama)     post-norm (BERT)      sandwich (Gemma)
        h = h + attn(norm(h))             h = norm(h + attn(h))       h = h + norm(attn(norm(h)))
        h = h + ffn(norm(h))              (same with ffn)             (same with ffn)
    logits = norm(h) @ Wᵀ                 (W = the embedding matrix when tied)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lmforge.model.attention import Attention, build_mask
from lmforge.model.config import ModelConfig
from lmforge.model.layers import MLP, MoE, load_balancing_loss, make_norm
from lmforge.model.rope import dynamic_frequencies, rope_cos_sin, rope_frequencies


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm_position = cfg.norm_position
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = make_norm(cfg)
        self.ffn = MoE(cfg) if cfg.n_experts else MLP(cfg)
        if cfg.norm_position == "sandwich":
            self.post_attn_norm, self.post_ffn_norm = make_norm(cfg), make_norm(cfg)

    def forward(self, h: torch.Tensor, rope, mask, cache=None) -> torch.Tensor:
        if self.norm_position == "pre":
            h = h + self.attn(self.attn_norm(h), rope, mask, cache=cache)
            return h + self.ffn(self.ffn_norm(h))
        if self.norm_position == "post":
            h = self.attn_norm(h + self.attn(h, rope, mask, cache=cache))
            return self.ffn_norm(h + self.ffn(h))
        h = h + self.post_attn_norm(self.attn(self.attn_norm(h), rope, mask, cache=cache))
        return h + self.post_ffn_norm(self.ffn(self.ffn_norm(h)))


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions: sin/cos at geometrically spaced frequencies. (n, dim)."""
    pos = torch.arange(n, dtype=torch.float32, device="cpu")[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device="cpu")
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


class Transformer(nn.Module):
    """A decoder-only language model: forward(input_ids (B, T)) → logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.position == "learned" else None
        if cfg.position == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_positions(cfg.max_seq_len, cfg.dim), persistent=False)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.position == "rope":
            rot = int(cfg.head_dim * cfg.rope_fraction)
            inv, scale = rope_frequencies(rot, cfg.rope_theta, cfg.rope_scaling, cfg.max_seq_len)
            self.register_buffer("inv_freq", inv, persistent=False)
            self.rope_scale = scale
            if cfg.rope_local_theta is not None:  # Gemma 3's sliding layers use their own base, unscaled
                local, _ = rope_frequencies(rot, cfg.rope_local_theta, None, cfg.max_seq_len)
                self.register_buffer("inv_freq_local", local, persistent=False)
        self.tokenizer = None  # set by load_model when a tokenizer comes with the weights

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _rope(self, positions: torch.Tensor, t: int, dtype: torch.dtype):
        cfg = self.config
        if cfg.position != "rope":
            return None, None
        inv = self.inv_freq
        if (cfg.rope_scaling or {}).get("rope_type") == "dynamic":
            inv = dynamic_frequencies(
                inv.shape[0] * 2,
                cfg.rope_theta,
                cfg.rope_scaling["factor"],
                cfg.max_seq_len,
                int(positions.max()) + 1,
            )
        # cast once here rather than in every layer's apply_rope
        rope = tuple(x.to(dtype) for x in rope_cos_sin(inv, positions, self.rope_scale))
        if cfg.rope_local_theta is None:
            return rope, rope
        return rope, tuple(x.to(dtype) for x in rope_cos_sin(self.inv_freq_local, positions))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        layers: Sequence[int] | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states (B, T, D), before the output norm.

        With a KV cache holding `offset` earlier tokens, input_ids are the next T tokens: they take
        positions offset .. offset + T - 1 and attend to the cached keys too; attention_mask, if given,
        covers all offset + T tokens. A paged cache gives each row its own offset, a (B,) tensor.
        layers: run only these blocks (a self-speculative draft that skips layers); default all.
        segment_ids (B, T): packed training, several documents per row — each token attends only to its
        own document (pass position_ids that restart at each document too, as PackedLoader gives them).
        """
        cfg = self.config
        b, t = input_ids.shape
        offset = cache.length if cache is not None else 0
        per_row = isinstance(offset, torch.Tensor)
        # A static cache (lmforge.infer.kv_cache.StaticKVCache) returns its whole buffer to attention:
        # keys span max_len slots, and no shape depends on the lengths (a compiled step stays one graph).
        static_len = cache.max_len if getattr(cache, "static", False) else None
        longest = static_len or (int(offset.max()) if per_row else offset) + t
        if longest > cfg.max_seq_len and cfg.position in ("learned", "sinusoidal"):
            raise ValueError(
                f"sequence of {longest} tokens is longer than the model's {cfg.max_seq_len} positions"
            )
        if position_ids is not None:
            positions = position_ids
        elif per_row:
            positions = offset.to(input_ids.device)[:, None] + torch.arange(t, device=input_ids.device)
        else:
            positions = torch.arange(offset, offset + t, device=input_ids.device)[None].expand(b, t)
        h = self.embed(input_ids)  # (B, T, D)
        if cfg.embed_scale != 1.0:
            # Gemma rounds the scale to the model dtype before multiplying, as its reference code does.
            h = h * torch.tensor(cfg.embed_scale, dtype=h.dtype)
        if self.pos_embed is not None:
            h = h + self.pos_embed(positions)
        elif cfg.position == "sinusoidal":
            h = h + self.sinusoid[positions].to(h.dtype)
        rope, rope_local = self._rope(positions, t, h.dtype)
        # No mask tensor when attention can say it alone: plain causal over a fresh sequence (is_causal),
        # or one new token that sees everything cached.
        plain = (
            attention_mask is None
            and segment_ids is None
            and cfg.causal
            and not per_row
            and (offset == 0 or t == 1)
        )
        args = (h.dtype, h.device, b, offset, static_len, segment_ids)
        full = None if plain else build_mask(attention_mask, t, cfg.causal, None, *args)
        window = cfg.sliding_window
        if window is None or (attention_mask is None and cfg.causal and longest <= window):
            sliding = full  # the window reaches back to the start: plain causal (or the documents')
        else:
            sliding = build_mask(attention_mask, t, cfg.causal, window, *args)
        for i in range(len(self.layers)) if layers is None else layers:
            layer = self.layers[i]
            local = layer.attn.sliding
            h = layer(h, rope_local if local else rope, sliding if local else full, cache)
        if cache is not None:
            cache.advance(t)
        return h

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        cache=None,
        layers: Sequence[int] | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V); with logits_to_keep = k > 0 only the last k positions (B, k, V), which is
        all generation needs and saves a (T × V) matrix product. layers, segment_ids: see hidden_states."""
        h = self.hidden_states(input_ids, attention_mask, position_ids, cache, layers, segment_ids)
        return self.logits(h[:, -logits_to_keep:] if logits_to_keep else h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., D) from hidden_states → logits (..., V): the output norm, the unembedding and
        Gemma's soft cap. Apart so a caller can keep only the positions it scores (lmforge.eval)."""
        h = self.norm(h)
        logits = self.lm_head(h) if self.lm_head is not None else h @ self.embed.weight.T  # (..., V)
        if self.config.final_softcap is not None:
            c = self.config.final_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    def init_weights(self, std: float = 0.02) -> Transformer:
        """Weights for training from scratch: `gpt2_init_` (below)."""
        gpt2_init_(self, self.config.n_layers, std)
        return self

    def aux_loss(self) -> torch.Tensor | None:
        """Load-balancing loss over every MoE layer's routing in the last forward (None if dense).

        As in transformers, the routings of all layers are pooled before the loss; a trainer adds it
        times config.router_aux_loss_coef.
        """
        routings = [blk.ffn.routing for blk in self.layers if isinstance(blk.ffn, MoE) and blk.ffn.routing]
        if not routings:
            return None
        probs = torch.cat([p for p, _ in routings])
        experts = torch.cat([e for _, e in routings])
        return load_balancing_loss(probs, experts, self.config.n_experts)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n


@torch.no_grad()
def gpt2_init_(model: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """Weights for training from scratch (GPT-2, Radford et al. 2019): every matrix and embedding
    N(0, std), biases 0, norm gains 1, and the two projections that write into the residual stream
    (attention's output, the MLP's down) N(0, std / √(2 · layers)), so the sum of 2 · layers residual
    additions keeps its scale at initialisation. PyTorch's own defaults (N(0, 1) embeddings) would start a
    tied-head model at a loss far above ln V. Other parameters (T5's relative position bias) keep theirs."""
    residual = std / math.sqrt(2 * n_layers)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            leaf = name.rsplit(".", 1)[-1]
            nn.init.normal_(module.weight, 0.0, residual if leaf in ("o_proj", "down_proj") else std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif (
            hasattr(module, "weight") and isinstance(module.weight, nn.Parameter) and module.weight.ndim == 1
        ):
            # norms: gain 1 (Gemma-style offset norms store gain - 1, so 0)
            nn.init.constant_(module.weight, 0.0 if getattr(module, "offset", 0.0) else 1.0)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
