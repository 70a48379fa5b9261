"""Rotary position embedding (RoPE, Su et al. 2021) and the ways to stretch it to longer contexts.

RoPE rotates each pair of query/key features by an angle proportional to the token's position, with a
different frequency per pair: θ_i = base^(-2i/d). The dot product of a rotated query at position m and
a rotated key at position n then depends only on m - n, so attention sees *relative* positions, and
no position vector is added to the embeddings.

We pair feature i with feature i + d/2 ("rotate_half"), the layout of Hugging Face checkpoints.
(llama.cpp pairs neighbours 2i, 2i+1 and permutes the Q/K weights to match; the GGUF loader undoes it.)

Context extension changes only the frequencies:
  - linear (Chen et al. 2023, position interpolation): divide every frequency by the factor;
  - dynamic NTK ("NTK-aware", bloc97 2023): raise the base so low frequencies stretch and high ones
    barely move; "dynamic" recomputes it from the actual sequence length past the trained one;
  - YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, ramp between, and scale the
    attention logits by 0.1·ln(factor) + 1;
  - llama3 (Meta 2024): like YaRN's ramp but defined by wavelengths against the original context.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_frequencies(
    head_dim: int, base: float, scaling: dict[str, Any] | None, max_seq_len: int
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the attention scaling factor for a RoPE variant."""
    dim = head_dim
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq, 1.0
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "dynamic":
        return inv_freq, 1.0  # depends on the sequence length: see dynamic_frequencies
    if kind == "ntk":  # static NTK-aware: a larger base
        base = base * factor ** (dim / (dim - 2))
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim)), 1.0
    if kind == "yarn":
        return _yarn(dim, base, scaling, max_seq_len)
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    raise ValueError(f"unknown RoPE scaling {kind!r}; supported: default, linear, dynamic, ntk, yarn, llama3")


def dynamic_frequencies(
    head_dim: int, base: float, factor: float, max_seq_len: int, seq_len: int
) -> torch.Tensor:
    """Dynamic NTK: past the trained length, grow the base with the sequence length."""
    if seq_len > max_seq_len:
        base = base * ((factor * seq_len / max_seq_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))


def _yarn(dim: int, base: float, s: dict[str, Any], max_seq_len: int) -> tuple[torch.Tensor, float]:
    factor = float(s["factor"])
    original = s.get("original_max_position_embeddings") or max_seq_len
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        # the feature index whose wavelength makes `rotations` turns over the original context
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: high frequency, keep as trained; 0: low frequency, interpolate
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)  # long waves: interpolate
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions (B, T) → each (B, T, head_dim), computed in float32."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): feature i and i + D/2 share an angle
    return emb.cos() * scale, emb.sin() * scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles in cos/sin (B, T, D'); only the first D' features if D' < D."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, D')
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
