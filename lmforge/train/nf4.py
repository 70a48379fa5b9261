"""NF4: the 4-bit NormalFloat weights of QLoRA, with block-wise absmax and double quantization.

QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs") fine-tunes a 4-bit
frozen base model through LoRA adapters (lmforge.train.lora): the base weights are stored in 4 bits and
dequantized to bfloat16 on the fly for every matrix product; only the adapters, in 16/32 bits, train.
Gradients still flow *through* the dequantized weights to the adapters of earlier layers.

The data type. Pretrained weights are close to normally distributed, so a 4-bit code should put its
16 levels where a normal variable's probability mass is: at quantiles of N(0, 1). NormalFloat4 takes
8 positive levels from the quantiles of N(0, 1) at linspace(offset, 0.5, 9) (dropping the 0.5 one, which
is 0) and 7 negative ones at linspace(offset, 0.5, 8), plus an exact 0 (padding and zero weights stay
zero), and scales them to [-1, 1]. The offset 0.9677 is the mean of 1 - 1/(2·15) and 1 - 1/(2·16): the
±1 ends then sit at the quantile 1/(2n) from the tail instead of at ±infinity. `nf4_code_from_normal`
derives the 16 values; `NF4_CODE` is bitsandbytes' published table, and the tests check the two agree.

Block-wise absmax. The weights are cut, row-major, into blocks of 64; each block is divided by its own
absmax (so it lies in [-1, 1]) and each value is rounded to the nearest code value: one outlier costs
precision only in its block. Two codes pack into one byte (the first in the high nibble, as bitsandbytes
does), so a weight costs 4 bits + 32 / 64 for its block's fp32 absmax = 4.5 bits.

Double quantization. The absmax constants themselves are then quantized: 0.5 bits per weight is 11% of
the storage. Subtract their mean (they are all positive; centred, a symmetric code uses its range), cut
them into blocks of 256 and store each as an 8-bit code with one fp32 scale per block: 8 / 64 + 32 /
(64 · 256) = 0.127 bits per weight instead of 0.5, so 4.127 in all. We use a *linear* symmetric int8
code (c ≈ scale · q, q in -127..127, scale = max|c| / 127), whose error is at most scale / 2: a few
tenths of a percent of an absmax. bitsandbytes uses its "dynamic" 8-bit map instead (a sign, an
exponent and a fraction, for relative precision at every magnitude); the bits per weight are the same.

    layer = NF4Linear.from_linear(linear)              # frozen 4-bit weight, bf16 compute
    names = quantize_model_nf4(model)                  # every Linear but the head, in place
    model_bytes(model)                                 # parameters + buffers, in bytes
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# bitsandbytes' NF4 table (bitsandbytes.functional, `get_4bit_type("nf4")`), as published.
NF4_CODE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
NF4_OFFSET = (1 - 1 / (2 * 15) + 1 - 1 / (2 * 16)) / 2  # 0.9677083...
DQ_BLOCK = 256  # absmax constants per second-level block (double quantization)


def nf4_code_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values derived from the quantiles of N(0, 1), as QLoRA's appendix describes. (16,)

    Asymmetric: 8 positive values and 7 negative ones, so that 0 is exactly representable."""
    ndtri = torch.special.ndtri  # the inverse of the normal CDF (scipy's norm.ppf)
    pos = ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values, largest first
    neg = -ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).float()


def bits_per_parameter(block_size: int = 64, double_quant: bool = True, dq_block: int = DQ_BLOCK) -> float:
    """Storage per weight: 4-bit code + its share of the block constants (4.5 for 64 without double
    quantization, 4 + 8/64 + 32/(64·256) ≈ 4.127 with it). The one fp32 mean is negligible."""
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * dq_block)
    return 4 + 32 / block_size


# ---------------------------------------------------------------------------------------------------
# The quantized tensor: packed codes + block constants.


@dataclass
class NF4Tensor:
    """A weight in NF4: 4-bit codes two per byte, and one absmax per block (or its 8-bit double quant).

    codes (n_blocks · block_size / 2,) uint8; absmax (n_blocks,) float32 without double quantization, else None and
    absmax_q (n_blocks,) int8, absmax_scale (ceil(n_blocks / 256),) float32, absmax_mean () float32.
    The flattened weight is zero-padded to a whole number of blocks; shape is the original one."""

    codes: torch.Tensor
    absmax: torch.Tensor | None
    absmax_q: torch.Tensor | None
    absmax_scale: torch.Tensor | None
    absmax_mean: torch.Tensor | None
    shape: torch.Size
    block_size: int

    @property
    def double_quant(self) -> bool:
        return self.absmax is None

    def block_absmax(self) -> torch.Tensor:
        """The absmax of every block (n_blocks,) float32: exact, or as double quantization stores it."""
        if self.absmax is not None:
            return self.absmax
        return _dequantize_absmax(self.absmax_q, self.absmax_scale, self.absmax_mean)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (what NF4Linear registers as buffers)."""
        names = ("codes", "absmax", "absmax_q", "absmax_scale", "absmax_mean")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _pack(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (2m,) uint8 → bytes (m,): the even element in the high nibble (bitsandbytes' order)."""
    return (q[0::2] << 4) | q[1::2]


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).flatten().long()  # (2m,)


def _quantize_absmax(absmax: torch.Tensor, dq_block: int = DQ_BLOCK):
    """Double quantization: absmax (n_blocks,) → (int8 codes, per-256 fp32 scales, the fp32 mean)."""
    mean = absmax.mean()
    c = absmax - mean  # centred: a symmetric code now uses both halves of its range
    n = c.numel()
    c = F.pad(c, (0, -n % dq_block)).view(-1, dq_block)  # (n_dq_blocks, 256)
    scale = c.abs().amax(dim=1) / 127  # (n_dq_blocks,)
    q = torch.round(c / scale.clamp_min(1e-12)[:, None]).to(torch.int8)  # a block of equal absmax: all 0
    return q.flatten()[:n], scale, mean


def _dequantize_absmax(q: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    n = q.numel()
    q = F.pad(q.float(), (0, -n % DQ_BLOCK)).view(-1, DQ_BLOCK)
    return (q * scale[:, None]).flatten()[:n] + mean  # (n_blocks,)


@torch.no_grad()
def quantize_nf4(w: torch.Tensor, block_size: int = 64, double_quant: bool = False) -> NF4Tensor:
    """Round every weight to the nearest NF4 value × its block's absmax (round-to-nearest, no search)."""
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be an even number ≥ 2, got {block_size}")
    flat = w.detach().float().flatten()
    n = flat.numel()
    blocks = F.pad(flat, (0, -n % block_size)).view(-1, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    x = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]; zero blocks 0
    code = NF4_CODE.to(x.device)
    # nearest code value: count the midpoints between neighbouring values that x lies above
    q = torch.bucketize(x, (code[1:] + code[:-1]) / 2).to(torch.uint8)  # (n_blocks, block_size) 0..15
    codes = _pack(q.flatten())  # the padding's codes too (7, i.e. 0.0): at most block_size / 2 bytes
    if not double_quant:
        return NF4Tensor(codes, absmax, None, None, None, w.shape, block_size)
    absmax_q, absmax_scale, absmax_mean = _quantize_absmax(absmax)
    return NF4Tensor(codes, None, absmax_q, absmax_scale, absmax_mean, w.shape, block_size)


def dequantize_nf4(t: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NF4Tensor → the float weight of its shape: code value × block absmax."""
    n = t.shape.numel()
    q = _unpack(t.codes).view(-1, t.block_size)  # (n_blocks, block_size)
    w = NF4_CODE.to(t.codes.device)[q] * t.block_absmax()[:, None]
    return w.flatten()[:n].view(t.shape).to(dtype)


# ---------------------------------------------------------------------------------------------------
# The layer.


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4: y = x · dequant(W)ᵀ + b, computed in compute_dtype.

    The codes and constants are buffers, not parameters: nothing here trains, and `model.to(device)`
    moves them. Acts as the `base` of a LoRA wrapper (in_features, out_features, weight, bias, forward).
    The output is cast back to the input's dtype, so a float32 model keeps float32 activations.
    """

    def __init__(
        self,
        qweight: NF4Tensor,
        bias: torch.Tensor | None = None,
        compute_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.block_size = qweight.block_size
        self.double_quant = qweight.double_quant
        self.compute_dtype = compute_dtype
        for name, tensor in qweight.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().to(compute_dtype).clone())

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        block_size: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> NF4Linear:
        return cls(quantize_nf4(linear.weight, block_size, double_quant), linear.bias, compute_dtype)

    def qweight(self) -> NF4Tensor:
        consts = (getattr(self, n, None) for n in ("absmax", "absmax_q", "absmax_scale", "absmax_mean"))
        shape = torch.Size((self.out_features, self.in_features))
        return NF4Tensor(self.codes, *consts, shape, self.block_size)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight (out, in), in compute_dtype unless dtype is given."""
        return dequantize_nf4(self.qweight(), dtype or self.compute_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for code that reads a projection's `.weight` (its shape, dtype, device).

        A fresh copy, made under inference_mode so that writing into it raises: an in-place update (LoRA's
        merge) would otherwise change nothing, silently. To merge, turn the layer back into an nn.Linear
        with `to_linear()` first."""
        with torch.inference_mode():
            return self.dequantize()

    def to_linear(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        """A plain nn.Linear with the dequantized weight (for merging adapters, or export)."""
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.codes.device
        )
        with torch.no_grad():
            lin.weight.copy_(self.dequantize(torch.float32))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize()  # (out, in) in compute_dtype: the 4-bit weight lives only in buffers
        return F.linear(x.to(self.compute_dtype), w, self.bias).to(x.dtype)  # (..., out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"block_size={self.block_size}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )


def quantize_model_nf4(
    model: nn.Module,
    block_size: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    skip: Sequence[str] = ("lm_head", "embed"),
) -> list[str]:
    """Replace every nn.Linear of model by an NF4Linear, in place; returns the replaced module names.

    A module is skipped when one of the dotted parts of its name is in `skip` (QLoRA keeps the output
    head in 16 bits). The base Linear inside a LoRA wrapper ("...q_proj.base") is quantized like any
    other, so `apply_lora` then `quantize_model_nf4` gives QLoRA; the LoRA matrices are parameters, not
    Linear modules, and stay as they are."""
    chosen = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not set(name.split(".")) & set(skip)
    ]
    for name in chosen:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        linear = getattr(owner, leaf)
        setattr(owner, leaf, NF4Linear.from_linear(linear, block_size, double_quant, compute_dtype))
    return chosen


def model_bytes(model: nn.Module) -> int:
    """Bytes held by model's parameters and buffers (a tied weight counts once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
