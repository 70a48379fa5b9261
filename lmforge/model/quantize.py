"""Weight-only quantization: int8 and int4 weights, bfloat16 activations, for fast CPU decoding.

Why it speeds decoding up. Generating one token multiplies a single activation vector by every weight
matrix once: 2 flops per weight read, far too few to keep a CPU's arithmetic busy, so decode time is the
time to stream the weights from memory (and, for a model as small as SmolLM2-135M, Python's per-op
overhead). Fewer bytes per weight is directly fewer milliseconds per token: float32 is 4 bytes, bfloat16
2, int8 1 (+ a scale per row), int4 0.5 (+ a scale and zero per group). Activations stay in floating
point ("weight-only"): the kernels dequantize weights on the fly inside the matrix product.

The formats.
- int8, symmetric, per output channel: each row gets one scale s = max|w| / 127 and q = round(w / s)
  in -127..127, w ≈ s · q. Rounding adds an error of at most s / 2 per weight, about 0.4% of the row's
  largest weight: nearly lossless (Dettmers et al. 2022, "LLM.int8()", showed 8-bit weights keep
  quality once rare outlier features are handled; at SmolLM2's scale plain per-row int8 suffices).
- int4, asymmetric, group-wise: every group of `group_size` consecutive weights of a row (32 by default)
  gets its own scale and zero, so one large weight costs precision only in its group, and the zero lets
  a group's 16 levels span [min, max] rather than a range centred on 0. We store the codes q in 0..15
  and w ≈ (q - 8) · s + z with s = (max - min) / 15 and z = min + 8 s (PyTorch's int4 kernel convention).
  The error is at most s / 2 per weight: ~3% of a group's range, which costs a few percent of
  perplexity. Smarter rounding (GPTQ, Frantar et al. 2022: correct each rounding with second-order
  information; AWQ, Lin et al. 2023: scale salient channels by activation statistics before rounding)
  shrinks that further; plain round-to-nearest is the baseline they improve.
- GGUF (llama.cpp) stores the same ideas in blocks of 32 weights: Q8_0 is symmetric int8 with an fp16
  scale per block (w = d · q), Q4_0 symmetric int4 (w = d · (q - 8)), Q4_1 asymmetric int4 with a scale
  and a minimum (w = d · q + m, q in 0..15). Q4_1 is exactly our int4 with group 32: s = d, z = m + 8 d.
  `load_gguf_quantized` moves such blocks' codes straight into the int4 kernel's layout, no
  re-quantization, so the model runs on llama.cpp's own 4-bit codes (only d and z are rounded to
  bfloat16, the kernel's scale type).

The kernels are PyTorch's CPU weight-only ops: `aten._weight_int8pack_mm(x, q (N, K) int8, scales (N,))`
and `aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros (K/G, N, 2))`, whose
weight layout `aten._convert_weight_to_int4pack_for_cpu` produces (blocks of 64 rows on AVX-512 CPUs,
32 on AVX2: an implementation detail we never read directly). Both are fast only with bfloat16
activations (their float32 paths are scalar loops, measured ~40x slower), so a quantized model computes
in bfloat16; norms and softmax still accumulate in float32. `QuantLinear.dequantize()` + F.linear is the
slow, obvious reference the tests hold the kernels to. The int8 kernel has one scale per row, so GGUF's
Q8_0 blocks (and every other type) are dequantized and re-quantized per row.

Measured on SmolLM2-135M-Instruct (1 thread of a shared 2-core machine, greedy, bfloat16 unless float32):
decode 256 tokens float32 16 tok/s, bfloat16 32, int8 32, int4 40; wikitext-2 perplexity (first 16k
tokens, 512-token windows) float32 28.14, bfloat16 28.16, int8 28.23, int4 on the file's own codes 28.18,
int4 re-quantized 28.17, int4 with an int4 head 29.64 (+5.3%) — hence the int8 head by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernel accepts
# Linear layers left in floating point: routers pick experts, a discrete choice that small errors flip,
# and they are a negligible share of the weights.
SKIP = ("router", "shared_gate")


def check_mode(mode: str, group_size: int = 32) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size!r}")


# ---------------------------------------------------------------------------------------------------
# Quantizers: float weights (N, K) → integer codes and their scales. Plain round-to-nearest.


CHUNK = 4096  # rows quantized at a time: float temporaries stay small (a 49152-row head is 113 MB of fp32)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q (N, K) int8 in -127..127, scales (N,) float32) with w ≈ q · scale."""
    q = torch.empty(w.shape, dtype=torch.int8)
    scales = torch.empty(w.shape[0])
    for i in range(0, w.shape[0], CHUNK):
        c = w[i : i + CHUNK].float()
        s = c.abs().amax(dim=1).clamp(min=1e-12) / 127  # clamp: an all-zero row gets codes 0
        q[i : i + CHUNK] = torch.round(c / s[:, None]).clamp(-127, 127)
        scales[i : i + CHUNK] = s
    return q, scales


def quantize_int4(
    w: torch.Tensor, group_size: int = 32, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4: (q (N, K) uint8 in 0..15, scales (N, K/G), zeros (N, K/G)) in `dtype`,
    with w ≈ (q - 8) · scale + zero over each group of G weights of a row.

    The scale and zero are rounded to `dtype` (the kernel's type) first and the codes chosen for the
    rounded values, so rounding the scales costs nothing more than it must.
    """
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"int4: in_features {k} is not a multiple of group_size {group_size}")
    q = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // group_size, dtype=dtype)
    zeros = torch.empty(n, k // group_size, dtype=dtype)
    for i in range(0, n, CHUNK):
        g = w[i : i + CHUNK].float().reshape(-1, k // group_size, group_size)  # (rows, K/G, G)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        s = ((hi - lo) / 15).clamp(min=1e-8).to(dtype)  # clamp: a constant group still divides
        z = (lo + 8 * s.float()).to(dtype)
        c = torch.round((g - z.float()[..., None]) / s.float()[..., None]) + 8
        q[i : i + CHUNK], scales[i : i + CHUNK], zeros[i : i + CHUNK] = c.clamp(0, 15).reshape(-1, k), s, z
    return q, scales, zeros


def int4_fits(out_features: int, in_features: int, group_size: int) -> bool:
    """Shapes the int4 kernel takes: rows in multiples of 16, whole groups."""
    return out_features % 16 == 0 and in_features % group_size == 0


# ---------------------------------------------------------------------------------------------------
# The layer.


class QuantLinear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 (per-row scales) or int4 (group-wise scales and zeros).

    Buffers: int8 — `weight` (N, K) int8, `scales` (N,); int4 — `weight` (N, K/2) uint8 in the kernel's
    packed layout, `scales_and_zeros` (K/G, N, 2). Scales are in `dtype`, the activations' type.
    Build one with `from_linear` (quantize a float layer), `from_int8` or `from_int4` (codes you have).
    """

    def __init__(self, in_features: int, out_features: int, mode: str, group_size: int = 32,
                 dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
        super().__init__()
        check_mode(mode, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.mode, self.group_size, self.dtype = mode, group_size, dtype
        self.register_buffer("bias", None)

    @classmethod
    def from_int8(cls, q: torch.Tensor, scales: torch.Tensor, bias=None, dtype=torch.bfloat16) -> QuantLinear:
        n, k = q.shape
        layer = cls(k, n, "int8", dtype=dtype)
        layer.register_buffer("weight", q.to(torch.int8).contiguous())
        layer.register_buffer("scales", scales.to(dtype).contiguous())
        layer._set_bias(bias)
        return layer

    @classmethod
    def from_int4(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 32,
                  bias=None, dtype=torch.bfloat16) -> QuantLinear:  # fmt: skip
        """q (N, K) codes in 0..15; scales, zeros (N, K/G): w = (q - 8) · scale + zero."""
        n, k = q.shape
        if not int4_fits(n, k, group_size):
            raise ValueError(
                f"int4 needs out_features % 16 == 0 and in_features % {group_size} == 0, got {n}x{k}"
            )
        layer = cls(k, n, "int4", group_size, dtype)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        layer.register_buffer("weight", packed)  # (N, K/2) uint8
        sz = torch.stack([scales.to(dtype).t(), zeros.to(dtype).t()], dim=-1)  # (K/G, N, 2)
        layer.register_buffer("scales_and_zeros", sz.contiguous())
        layer._set_bias(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear | torch.Tensor, mode: str, group_size: int = 32,
                    dtype: torch.dtype = torch.bfloat16) -> QuantLinear:  # fmt: skip
        """Quantize an nn.Linear (or a bare (N, K) weight). int4 layers whose shape the kernel cannot
        take (see int4_fits) fall back to int8."""
        check_mode(mode, group_size)
        w = linear if isinstance(linear, torch.Tensor) else linear.weight
        bias = None if isinstance(linear, torch.Tensor) else linear.bias
        w = w.detach()
        if mode == "int4" and int4_fits(w.shape[0], w.shape[1], group_size):
            return cls.from_int4(*quantize_int4(w, group_size, dtype), group_size, bias, dtype)
        return cls.from_int8(*quantize_int8(w), bias, dtype)

    @classmethod
    def concat(cls, layers: list[QuantLinear]) -> QuantLinear:
        """One layer computing several that read the same input, their outputs side by side: a decode step
        then makes one kernel call instead of three for q, k, v (or two for gate, up). The codes and scales
        are the same numbers, so each output is unchanged."""
        first = layers[0]
        if any((x.mode, x.group_size, x.in_features) != (first.mode, first.group_size, first.in_features)
               for x in layers):  # fmt: skip
            raise ValueError("concat needs layers of one mode, group size and input width")
        biases = [x.bias for x in layers]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else torch.zeros(x.out_features, dtype=first.dtype) for b, x in zip(biases, layers)]
        )  # fmt: skip
        codes = torch.cat([x.codes() for x in layers])
        if first.mode == "int8":
            return cls.from_int8(codes, torch.cat([x.scales for x in layers]), bias, first.dtype)
        sz = torch.cat([x.scales_and_zeros for x in layers], dim=1)  # (K/G, N, 2)
        return cls.from_int4(codes, sz[..., 0].t(), sz[..., 1].t(), first.group_size, bias, first.dtype)

    def _set_bias(self, bias: torch.Tensor | None) -> None:
        if bias is not None:
            self.register_buffer("bias", bias.detach().to(self.dtype).contiguous())

    def codes(self) -> torch.Tensor:
        """The integer codes (N, K): int8 as stored; int4 unpacked from the kernel's layout (int 0..15).

        The packed layout depends on the CPU, so rather than decode its bytes we let the kernel do it:
        multiplying the identity by W with scale 1 and zero 8 returns the codes themselves (exact in
        bfloat16: small integers), as torch's inductor does for the same purpose.
        """
        if self.mode == "int8":
            return self.weight
        n, k = self.out_features, self.in_features
        one = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(k // self.group_size, n, 2).contiguous()
        eye = torch.eye(k, dtype=torch.bfloat16)
        return (
            torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group_size, one)
            .t()
            .to(torch.uint8)
        )

    def dequantize(self) -> torch.Tensor:
        """The weight the layer multiplies by, (N, K) float32: the reference the fast path must equal."""
        q = self.codes().float()
        if self.mode == "int8":
            return q * self.scales.float()[:, None]
        s = self.scales_and_zeros.float().repeat_interleave(self.group_size, dim=0)  # (K, N, 2)
        return (q - 8) * s[..., 0].t() + s[..., 1].t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.dtype)  # (M, K): the kernels take 2-D activations
        if self.mode == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.weight, self.group_size, self.scales_and_zeros
            )
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize, then an ordinary float32 matmul (slow; for tests)."""
        b = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.dequantize(), b)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}{g}"


# ---------------------------------------------------------------------------------------------------
# Whole models.


def _replace_linears(module: nn.Module, mode: str, group_size: int, dtype: torch.dtype) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and name not in SKIP and name != "lm_head":
            setattr(module, name, QuantLinear.from_linear(child, mode, group_size, dtype))
        else:
            _replace_linears(child, mode, group_size, dtype)


def _cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Every remaining float parameter (norms, embeddings, routers) to the activation dtype. Buffers stay
    as they are: RoPE's inverse frequencies must keep float32 precision."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)


def quantize_model(
    model: nn.Module,
    mode: str = "int8",
    group_size: int = 32,
    head: str | None = "int8",
    dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Replace every nn.Linear of `model` by a QuantLinear (in place; returns the model).

    mode: "int8" (per-row) or "int4" (group-wise, `group_size` weights per scale). head: how to quantize
    a Transformer's tied output matmul (logits = h · Eᵀ, E the embedding — for SmolLM2 a fifth of all
    weights, read every step): "int8", "int4" or None (leave it in `dtype`). It becomes a separate
    `model.lm_head`; the embedding lookup keeps E in `dtype`, since it reads one row per token. An untied
    lm_head follows `head` too. Everything else (norms, embeddings) is cast to `dtype`. The head defaults
    to int8 even in int4 mode: on SmolLM2 an int4 head costs +5.3% perplexity, int8 +0.3%.
    """
    check_mode(mode, group_size)
    if head is not None:
        check_mode(head, group_size)
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize_model: the int8/int4 kernels are CPU kernels; quantize a model on the CPU")
    _replace_linears(model, mode, group_size, dtype)
    lm_head = getattr(model, "lm_head", "absent")
    if head is not None and isinstance(lm_head, nn.Linear):
        model.lm_head = QuantLinear.from_linear(lm_head, head, group_size, dtype)
    elif head is not None and lm_head is None and hasattr(model, "embed"):  # tied: logits = h · Eᵀ
        model.lm_head = QuantLinear.from_linear(model.embed.weight, head, group_size, dtype)
    _cast_floats(model, dtype)
    fuse_projections(model)
    return model


def fuse_projections(model: nn.Module) -> nn.Module:
    """Merge each self-attention's q, k, v projections into one `qkv_proj`, and each gated MLP's gate and
    up into one `gate_up_proj`, where they are QuantLinears of one kind (in place). Decoding a small model
    on a CPU is dominated by per-call overhead as much as by bytes: this removes 3 of 7 matmul calls per
    layer. Attention and MLP use the fused layer when they have one."""
    from lmforge.model.attention import Attention
    from lmforge.model.layers import MLP

    for m in model.modules():
        if isinstance(m, Attention) and m.qkv_proj is None:
            parts = [m.q_proj, m.k_proj, m.v_proj]
            if _fusable(parts):
                m.qkv_proj = QuantLinear.concat(parts)
                m.q_proj = m.k_proj = m.v_proj = None
        elif isinstance(m, MLP) and m.gate_proj is not None and m.gate_up_proj is None:
            parts = [m.gate_proj, m.up_proj]
            if _fusable(parts):
                m.gate_up_proj = QuantLinear.concat(parts)
                m.gate_proj = m.up_proj = None
    return model


def _fusable(layers: list) -> bool:
    return (
        all(isinstance(x, QuantLinear) for x in layers)
        and len({(x.mode, x.group_size, x.in_features) for x in layers}) == 1
    )


# ---------------------------------------------------------------------------------------------------
# GGUF files, streamed: one tensor at a time is dequantized and quantized, so the float32 model never
# exists whole (peak memory is the quantized model plus one float tensor), and Q4_0/Q4_1 blocks keep
# their own codes.


def int4_from_gguf(raw: np.ndarray, qtype: int, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """A Q4_0 or Q4_1 tensor's bytes → (q (N, K) codes 0..15, scales (N, K/32), zeros (N, K/32)) float32,
    with (q - 8) · scale + zero equal to llama.cpp's dequantization.

    block_q4_1 (20 bytes): f16 d | f16 m | 16 bytes, byte j = weight j (low nibble), j + 16 (high).
    w = d · q + m = d · (q - 8) + (m + 8 d). block_q4_0 (18 bytes): f16 d | 16 bytes; w = d · (q - 8).
    (m + 8 d in float32 is exact: both are float16 values of similar size.)
    """
    from lmforge.model.quant import QT

    n, k = shape
    size = {QT.Q4_0: 18, QT.Q4_1: 20}[QT(qtype)]
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(n * k // 32, size)
    d = blocks[:, 0:2].view("<f2").astype(np.float32)  # (n_blocks, 1)
    zero = blocks[:, 2:4].view("<f2").astype(np.float32) + 8 * d if size == 20 else np.zeros_like(d)
    qs = blocks[:, size - 16 :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # (n_blocks, 32)
    return (torch.from_numpy(q.reshape(n, k)), torch.from_numpy(d.reshape(n, k // 32)),
            torch.from_numpy(zero.reshape(n, k // 32)))  # fmt: skip


def load_gguf_quantized(
    path: str | os.PathLike,
    mode: str = "int4",
    group_size: int = 32,
    head: str | None = "int8",
    dtype: torch.dtype = torch.bfloat16,
    reuse_blocks: bool = True,
) -> nn.Module:
    """A GGUF decoder loaded straight into QuantLinear layers (see quantize_model for mode and head).

    reuse_blocks: with mode "int4" and group_size 32, Q4_0/Q4_1 tensors keep the file's own codes
    (no re-quantization: llama.cpp's exact 4-bit weights); other tensors are dequantized and quantized.
    """
    from lmforge.model.families import config_from_gguf, gguf_name_to_ours
    from lmforge.model.quant import QT, dequantize
    from lmforge.model.transformer import Transformer
    from lmforge.model.weights import empty_model, gguf_tensor_name, qk_heads, undo_gguf_layout, unpermute_qk
    from lmforge.tokenizer.gguf_metadata import read_gguf_tensor_infos

    check_mode(mode, group_size)
    if head is not None:
        check_mode(head, group_size)
    path = Path(path)
    meta, infos = read_gguf_tensor_infos(path)
    cfg = config_from_gguf(meta, str(path))
    cfg.tie_embeddings = all(gguf_name_to_ours(i.name) != "lm_head.weight" for i in infos)
    with empty_model():
        model = Transformer(cfg)
    linears = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] not in SKIP
    }
    # plain reads, not a memory map: mapped pages of the whole file would count toward peak memory
    file = open(path, "rb")  # noqa: SIM115 (closed below; a with-block would indent the whole loop)
    plain: dict[str, torch.Tensor] = {}
    biases: dict[str, torch.Tensor] = {}
    for info in infos:
        ours = gguf_tensor_name(info.name, cfg, path)
        if ours is None:
            continue
        file.seek(info.offset)
        raw = np.frombuffer(file.read(info.nbytes), dtype=np.uint8)
        module, _, kind = ours.rpartition(".")
        lin_mode = head if module == "lm_head" else mode
        if module in linears and kind == "weight" and lin_mode is not None:
            if reuse_blocks and lin_mode == "int4" and group_size == 32 and info.qtype in (QT.Q4_0, QT.Q4_1):
                # the file's codes, scales and zeros are all per row: undo llama.cpp's q/k row order on each
                heads = qk_heads(ours, cfg)
                q, s, z = int4_from_gguf(raw, info.qtype, info.shape)
                if heads:
                    q, s, z = (torch.from_numpy(unpermute_qk(t.numpy(), heads)) for t in (q, s, z))
                layer = QuantLinear.from_int4(q, s, z, 32, dtype=dtype)
            else:
                w = torch.from_numpy(undo_gguf_layout(dequantize(raw, info.qtype, info.shape), ours, cfg))
                layer = QuantLinear.from_linear(w, lin_mode, group_size, dtype)
            model.set_submodule(module, layer)
            continue
        w = undo_gguf_layout(dequantize(raw, info.qtype, info.shape), ours, cfg)
        t = torch.from_numpy(np.ascontiguousarray(w))
        (biases if module in linears and kind == "bias" else plain)[ours] = t
    file.close()
    for name, b in biases.items():
        layer = model.get_submodule(name.rpartition(".")[0])
        if isinstance(layer, QuantLinear):
            layer._set_bias(b)
        else:
            plain[name] = b
    if cfg.tie_embeddings and head is not None:
        model.lm_head = QuantLinear.from_linear(plain["embed.weight"], head, group_size, dtype)
    plain = {k: v.to(dtype) for k, v in plain.items()}  # frees each float32 copy as it goes
    missing = [n for n, p in model.named_parameters() if p.is_meta and n not in plain]
    if missing:
        raise ValueError(f"{path}: missing tensors for {len(missing)} parameters, e.g. {missing[:3]}")
    unexpected = model.load_state_dict({k: v.to(dtype) for k, v in plain.items()}, strict=False, assign=True)[
        1
    ]
    if unexpected:
        raise ValueError(f"{path}: tensors with no place in a {cfg.family} model: {unexpected[:3]}")
    fuse_projections(model)
    release_freed_memory()
    return model.eval()


def release_freed_memory() -> None:
    """Give the float temporaries of loading back to the OS. glibc keeps freed heap pages for reuse, so
    without this an int4 SmolLM2 stays at ~700 MB resident instead of ~450 MB. Linux/glibc only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another libc or OS: nothing to do
        pass
