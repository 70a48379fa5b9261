"""The encoder–decoder transformer, in T5's form: read a whole input, then write an output about it.

The original Transformer (Vaswani et al. 2017, "Attention Is All You Need") was an encoder–decoder
for translation; T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer") kept that shape and cast every task as text in, text out.

Encoder–decoder vs decoder-only. A decoder-only model (GPT, Llama; `transformer.py`) reads prompt and
answer as one sequence under one causal mask, so even the prompt's tokens see only their past. An
encoder–decoder splits the work in two stacks:
  - the encoder reads the input with *bidirectional* self-attention (every token sees every other) and
    is run once per input;
  - the decoder writes the output with *causal* self-attention over what it has written so far, plus
    a *cross-attention* sublayer in each block whose queries come from the decoder and whose keys and
    values come from the encoder's final output. That is the only path from input to output.

        enc = norm(Encoder(embed(input_ids)))                      # (B, S, D), once
        for each decoder block:
            h = h + self_attn(norm(h))                              # causal, over the output so far
            h = h + cross_attn(norm(h), kv=enc)                     # every output token reads the input
            h = h + ffn(norm(h))
        logits = norm(h) [· D^-0.5] @ Wᵀ                            # (B, T, V)

Relative position bias. T5 has no position embeddings at all. Instead each attention logit gets a
learned scalar per head that depends only on the *offset* key − query, put in one of a few buckets:
small offsets get a bucket each, larger ones share logarithmically wider buckets, and everything beyond
`max_distance` shares the last one — precision where it matters and graceful extrapolation to longer
inputs. The encoder's buckets are bidirectional (half for keys before the query, half for keys after);
the decoder's are unidirectional, since a causal query never sees the future. The bias is an (H, T, S)
table added to the logits; T5 computes it once in the first block of each stack and shares it with
every block of that stack (only block 0 has the weights), and cross-attention gets none. Because the
bias carries the scale the model needs, T5 does not divide q·k by √d: `attn_scale` is 1.0.

Everything else is parts we already have: our `Attention` (with `kv=` for cross-attention, and the bias
folded into its additive mask), `MLP` (T5 v1.0: ReLU; v1.1 / Flan-T5: gated GELU, tanh form) and
`RMSNorm` (T5's "LayerNorm" has neither mean subtraction nor bias). Pre-norm, no biases anywhere, one
embedding matrix shared by the encoder, the decoder and (usually) the output projection.

`load_t5_folder` reads a Hugging Face T5 folder (config.json + *.safetensors; never pickles).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.model.attention import Attention
from lmforge.model.config import ModelConfig
from lmforge.model.layers import MLP, make_norm
from lmforge.model.transformer import Block, gpt2_init_

T5_FAMILIES = ("t5", "mt5")  # mT5 is T5 v1.1 with a larger vocabulary; umT5 has a bias per layer: not this

# T5's dense_act_fn (the part of feed_forward_proj after "gated-") → our activation names.
_T5_ACTS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Offsets key − query (any shape, integer) → bucket ids in [0, num_buckets), as T5 / Mesh TensorFlow.

    Bidirectional: half the buckets are for keys after the query (positive offsets), half for keys
    before. Unidirectional (a causal decoder): only offsets ≤ 0 exist, so all buckets go to the past and
    future offsets fall in bucket 0 (they are masked anyway). Within a half, offsets below
    max_exact = n/2 get a bucket each; larger ones are binned logarithmically up to max_distance, and
    everything farther shares the last bucket.
    """
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Clamped so log() never sees 0; those offsets take the exact branch anyway. The expression and its
    # float32 order are T5's, so bucket boundaries truncate exactly as in the reference.
    far = distance.clamp(min=max_exact).float()
    large = (
        max_exact
        + (torch.log(far / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), looked up by the offset key − query: (1, H, T, S)."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, n_heads))

    def forward(self, t: int, s: int, offset: int = 0) -> torch.Tensor:
        """Bias for t queries at positions offset.. against s keys at 0..s-1 (offset: tokens already
        decoded, for a decoder that is fed one new token at a time)."""
        device = self.weight.device
        query = torch.arange(t, device=device)[:, None] + offset
        key = torch.arange(s, device=device)[None, :]
        bucket = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.weight[bucket].permute(2, 0, 1)[None]  # (T, S, H) → (1, H, T, S)


def _additive_mask(
    allowed: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """Fold a boolean visibility mask (B or 1, 1, T, S) and a position bias (1, H, T, S) into the one
    additive mask Attention takes: the bias where a query may look, the dtype's minimum where it may not.

    torch.where rather than bias + mask: adding a bias to the minimum could overflow to -inf in half
    precision, and the minimum (not -inf) keeps a query with nothing to see finite, as in attention.py.
    """
    if allowed is None:
        return bias
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero if bias is None else bias, neg)  # (B, H or 1, T, S)


def _padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) with 1 for real tokens → (B, 1, 1, S) bool: which keys exist."""
    return None if attention_mask is None else attention_mask[:, None, None, :].bool()


class Encoder(nn.Module):
    """N × (bidirectional self-attention, FFN) in pre-norm — exactly our decoder-only Block, unmasked —
    then a final norm. The relative position bias is computed once here and handed to every block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        x = cfg.extra
        self.position_bias = RelativePositionBias(
            cfg.n_heads, x["relative_attention_num_buckets"], x["relative_attention_max_distance"], True
        )
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, S, D) embeddings → (B, S, D) normalized encoder output."""
        s = h.shape[1]
        mask = _additive_mask(_padding(attention_mask), self.position_bias(s, s).to(h.dtype), h.dtype)
        for layer in self.layers:
            h = layer(h, None, mask)  # no RoPE: positions enter only through the bias in the mask
        return self.norm(h)


class DecoderBlock(nn.Module):
    """Causal self-attention, then cross-attention to the encoder output, then the FFN; each pre-norm
    with a residual, as T5's layer.0 / layer.1 / layer.2."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.cross_norm = make_norm(cfg)
        self.cross_attn = Attention(cfg, layer)
        self.ffn_norm = make_norm(cfg)
        self.ffn = MLP(cfg)

    def forward(
        self,
        h: torch.Tensor,
        enc: torch.Tensor,
        self_mask: torch.Tensor | None,
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """h (B, T, D), enc (B, S, D) → (B, T, D)."""
        h = h + self.attn(self.attn_norm(h), None, self_mask)
        # The queries are the decoder's normalized states; keys and values the encoder's output, which
        # the encoder already normalized, so it is not normalized again here.
        h = h + self.cross_attn(self.cross_norm(h), None, cross_mask, kv=enc)
        return h + self.ffn(self.ffn_norm(h))


class Decoder(nn.Module):
    """N × DecoderBlock, then a final norm; its own (unidirectional) relative position bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        x = cfg.extra
        self.position_bias = RelativePositionBias(
            cfg.n_heads, x["relative_attention_num_buckets"], x["relative_attention_max_distance"], False
        )
        self.layers = nn.ModuleList(DecoderBlock(cfg, i) for i in range(x["n_decoder_layers"]))
        self.norm = make_norm(cfg)

    def forward(
        self,
        h: torch.Tensor,
        enc: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h (B, T, D) target embeddings, enc (B, S, D) → (B, T, D) normalized decoder output."""
        t = h.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()[None, None]  # (1, 1, T, T)
        pad = _padding(decoder_attention_mask)
        allowed = causal if pad is None else causal & pad  # (B or 1, 1, T, T)
        self_mask = _additive_mask(allowed, self.position_bias(t, t).to(h.dtype), h.dtype)
        # Cross-attention has no position bias in T5 (input and output positions are not comparable);
        # it only has to skip the input's padding.
        cross_mask = _additive_mask(_padding(attention_mask), None, h.dtype)
        for layer in self.layers:
            h = layer(h, enc, self_mask, cross_mask)
        return self.norm(h)


class EncoderDecoder(nn.Module):
    """T5: encode(input_ids) → (B, S, D); forward(input_ids, decoder_input_ids) → logits (B, T, V).

    One embedding matrix feeds both stacks. The output projection is that matrix again when
    `config.tie_embeddings` (T5 v1.0), else its own `lm_head` (T5 v1.1, Flan-T5). When
    `config.extra["scale_decoder_outputs"]` the decoder output is multiplied by D^-0.5 first: T5 v1.0
    was trained so, because the tied matrix's entries are ~N(0, 1), not ~N(0, 1/D).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        for key in ("relative_attention_num_buckets", "relative_attention_max_distance", "n_decoder_layers"):
            if key not in cfg.extra:
                raise ValueError(
                    f"an encoder-decoder config needs extra[{key!r}] (config_from_hf_t5 sets it)"
                )
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.tokenizer = None  # set by whoever loads a tokenizer with the weights

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S), attention_mask (B, S) with 0 for padding → encoder output (B, S, D)."""
        return self.encoder(self.embed(input_ids), attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for decoder_input_ids (B, T) given encode()'s output (B, S, D).

        attention_mask is the *encoder's* padding mask (B, S), which cross-attention must respect. Kept
        separate from forward() so generation can encode once and decode many times.
        """
        h = self.decoder(
            self.embed(decoder_input_ids), encoder_output, attention_mask, decoder_attention_mask
        )
        if self.config.extra.get("scale_decoder_outputs", False):
            h = h * (self.config.dim**-0.5)
        return self.lm_head(h) if self.lm_head is not None else h @ self.embed.weight.T  # (B, T, V)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, S), decoder_input_ids (B, T) → logits (B, T, V). Teacher forcing: the decoder
        input is the target shifted right, starting with extra["decoder_start_token_id"] (T5: pad, 0)."""
        enc = self.encode(input_ids, attention_mask)  # (B, S, D)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask)

    def init_weights(self, std: float = 0.02) -> EncoderDecoder:
        """Weights for pretraining from scratch (span corruption): GPT-2's scheme, as the decoder-only
        model has it (`gpt2_init_`), over both stacks; the relative position biases start at 0."""
        gpt2_init_(self, self.config.n_layers + self.config.extra["n_decoder_layers"], std)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def config_from_hf_t5(cfg: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face T5 config.json dict (T5 v1.0, v1.1, Flan-T5, mT5).

    T5-only fields go to `extra`: relative_attention_num_buckets / _max_distance, n_decoder_layers,
    scale_decoder_outputs, decoder_start_token_id, pad_token_id, eos_token_id, feed_forward_proj.

    The output rescaling follows transformers 5's T5Config: `scale_decoder_outputs` when the file has
    it, else `tie_word_embeddings is not False` (a missing field means True). transformers 5 always ties
    lm_head to the embedding unless the checkpoint holds a *different* lm_head.weight, so whether the
    head is tied is decided by the weights, in load_t5_folder; here tie_embeddings is only a first guess.
    """
    family = cfg.get("model_type")
    if family not in T5_FAMILIES:
        raise ValueError(
            f"{where}: model_type {family!r} is not a T5 model; supported: {', '.join(T5_FAMILIES)}"
        )
    proj = cfg.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(
            f"{where}: feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu')"
        )
    gated = len(parts) == 2
    # transformers maps "gated-gelu" to gelu_new (the tanh approximation) for backward compatibility.
    act_name = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act_name not in _T5_ACTS:
        raise ValueError(f"{where}: feed_forward_proj {proj!r}: activation {act_name!r} is not supported")
    tie = cfg.get("tie_word_embeddings", True) is not False
    scale = bool(cfg["scale_decoder_outputs"]) if "scale_decoder_outputs" in cfg else tie
    try:
        n_layers = cfg["num_layers"]
        n_dec = cfg.get("num_decoder_layers")
        return ModelConfig(
            family=family,
            vocab_size=cfg["vocab_size"],
            dim=cfg["d_model"],
            n_layers=n_layers,
            n_heads=cfg["num_heads"],
            head_dim=cfg["d_kv"],  # n_heads · d_kv need not equal d_model (t5-11b: 128 · 128 vs 1024)
            ffn_dim=cfg["d_ff"],
            max_seq_len=cfg.get("n_positions", 512),  # nominal only: relative positions have no limit
            norm="rmsnorm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
            activation=_T5_ACTS[act_name],
            gated_ffn=gated,
            mlp_bias=False,
            attn_bias=False,
            o_bias=False,
            attn_scale=1.0,  # T5 does not divide by √d; the learned weights and bias absorb the scale
            causal=False,  # the encoder's; the decoder builds its own causal mask
            position="none",
            tie_embeddings=tie,
            extra={
                "relative_attention_num_buckets": cfg.get("relative_attention_num_buckets", 32),
                "relative_attention_max_distance": cfg.get("relative_attention_max_distance", 128),
                "n_decoder_layers": n_dec if n_dec is not None else n_layers,
                "scale_decoder_outputs": scale,
                "decoder_start_token_id": cfg.get("decoder_start_token_id", cfg.get("pad_token_id", 0)),
                "pad_token_id": cfg.get("pad_token_id", 0),
                "eos_token_id": cfg.get("eos_token_id", 1),
                "feed_forward_proj": proj,
            },
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


# Hugging Face T5 names → ours. {stack} is encoder or decoder; block i's sublayers are numbered
# layer.0 (self-attention), layer.1 (cross-attention, decoder only), then the FFN.
_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_FFN = {"wi": "up_proj", "wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
_BLOCK = re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(.+)")


def t5_name_to_ours(name: str) -> str | None:
    """An HF T5 tensor name → our parameter name; None for names we do not know (the caller decides)."""
    if name in ("shared.weight", "lm_head.weight"):
        return "embed.weight" if name == "shared.weight" else name
    if name in ("encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"):
        return name.split(".")[0] + ".norm.weight"
    m = _BLOCK.fullmatch(name)
    if m is None:
        return None
    stack, i, sub, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
    ffn_sub = 2 if stack == "decoder" else 1
    if sub == 0 and rest == "SelfAttention.relative_attention_bias.weight":
        return f"{stack}.position_bias.weight" if i == "0" else None
    prefix = f"{stack}.layers.{i}"
    if sub == 0:
        kind, norm = "SelfAttention", "attn"
    elif sub == 1 and stack == "decoder":
        kind, norm = "EncDecAttention", "cross"
    elif sub == ffn_sub:
        kind, norm = "DenseReluDense", "ffn"
    else:
        return None
    if rest == "layer_norm.weight":
        return f"{prefix}.{norm}_norm.weight"
    proj = rest.removeprefix(kind + ".").removesuffix(".weight")
    if not rest.startswith(kind + ".") or not rest.endswith(".weight"):
        return None
    table = _FFN if kind == "DenseReluDense" else _ATTN
    if proj not in table:
        return None
    module = "ffn" if kind == "DenseReluDense" else ("attn" if kind == "SelfAttention" else "cross_attn")
    return f"{prefix}.{module}.{table[proj]}.weight"


def t5_hf_names(cfg: ModelConfig) -> list[str]:
    """Every tensor name a Hugging Face T5 checkpoint for cfg must have (lm_head.weight only if untied)."""
    ffn = ("wi_0", "wi_1", "wo") if cfg.gated_ffn else ("wi", "wo")
    names = ["shared.weight", "encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"]
    for stack, n in (("encoder", cfg.n_layers), ("decoder", cfg.extra["n_decoder_layers"])):
        names.append(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        subs = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
        for i in range(n):
            for j, kind in enumerate(subs):
                names += [f"{stack}.block.{i}.layer.{j}.{kind}.{w}.weight" for w in "qkvo"]
                names.append(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
            j = len(subs)
            names += [f"{stack}.block.{i}.layer.{j}.DenseReluDense.{w}.weight" for w in ffn]
            names.append(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    return names


# Copies some checkpoints carry: the stacks' own references to the shared embedding, and a cross-
# attention bias that T5 never uses (transformers ignores it too).
_DUPLICATES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def load_t5_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> EncoderDecoder:
    """A Hugging Face T5 folder (config.json + model.safetensors or shards) → EncoderDecoder in eval mode."""
    from lmforge.model.weights import _fill, empty_model, hf_config, hf_tensor_files

    path = Path(path)
    cfg = config_from_hf_t5(hf_config(path), str(path / "config.json"))
    tensors: dict[str, torch.Tensor] = {}
    x = cfg.extra
    expected = set(t5_hf_names(cfg)) | {"lm_head.weight"}  # names this config can use (wi vs wi_0/wi_1 ...)
    origin: dict[str, Path] = {}  # our name → the file it came from, for error messages
    copies: dict[str, tuple[Path, torch.Tensor]] = {}
    try:
        for f, hf in hf_tensor_files(path):
            for name, t in hf.items():
                if name in _IGNORED:
                    continue
                if name in _DUPLICATES:
                    copies[name] = (f, t)
                    continue
                ours = t5_name_to_ours(name) if name in expected else None
                if ours is None:
                    raise ValueError(
                        f"{f}: unknown tensor {name!r} for a {cfg.family} model with "
                        f"feed_forward_proj {x['feed_forward_proj']!r}, {cfg.n_layers} encoder and "
                        f"{x['n_decoder_layers']} decoder layers"
                    )
                tensors[ours] = t
                origin[ours] = f
    except FileNotFoundError as e:
        if "no *.safetensors" in str(e):
            raise
        raise FileNotFoundError(f"{path}: a shard named in the index is missing ({e})") from None
    # The embedding is stored once as shared.weight; if a file kept only a stack's copy, use that. A copy
    # that differs from it would mean untied encoder/decoder embeddings, which T5 never has.
    for name, (f, t) in copies.items():
        if "embed.weight" not in tensors:
            tensors["embed.weight"], origin["embed.weight"] = t, f
        elif t.shape != tensors["embed.weight"].shape or not torch.equal(t, tensors["embed.weight"]):
            raise ValueError(
                f"{f}: tensor {name!r} differs from shared.weight; separate embeddings are not supported"
            )
    # As transformers 5: the head is tied unless the checkpoint has an lm_head.weight of its own.
    head = tensors.get("lm_head.weight")
    emb = tensors.get("embed.weight")
    cfg.tie_embeddings = head is None or (
        emb is not None and head.shape == emb.shape and torch.equal(head, emb)
    )
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    with empty_model():  # no memory or random init for weights _fill replaces at once
        model = EncoderDecoder(cfg)
    # Check in the checkpoint's own names (which tensor, which file) before _fill checks in ours.
    own = model.state_dict()
    for hf in t5_hf_names(cfg):
        ours = t5_name_to_ours(hf)
        if ours not in tensors:
            raise ValueError(f"{path}: missing tensor {hf!r} (needed for {ours!r})")
        want, got = tuple(own[ours].shape), tuple(tensors[ours].shape)
        if got != want:
            raise ValueError(f"{origin.get(ours, path)}: tensor {hf!r} has shape {got}, expected {want}")
    model = _fill(model, tensors, str(path), dtype)
    return model.eval()


__all__ = [
    "EncoderDecoder",
    "RelativePositionBias",
    "config_from_hf_t5",
    "load_t5_folder",
    "t5_hf_names",
    "relative_position_bucket",
    "t5_name_to_ours",
]
