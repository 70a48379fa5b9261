"""Dequantize the tensor types of llama.cpp's GGUF files into float32 numpy arrays.

Block quantization. A weight matrix is cut, row by row, into blocks of consecutive weights (32 in the
"legacy" types Q4_0 … Q8_0). Each block stores one float16 scale `d` (and, in the `_1` types, a
float16 minimum `m`) plus a small integer per weight; a weight comes back as `d * q` (symmetric types,
`q` centred on zero) or `d * q + m` (types with a minimum). Four bits per weight plus 16 or 32 bits per
32 weights is 4.5 or 5 bits per weight (Q8_0: 8.5) instead of 16 (bf16) or 32 (f32): the model takes
3-7x less memory and, as important, 3-7x less memory bandwidth per generated token, which is what
bounds generation speed on a CPU.

"K-quants" (Q2_K … Q6_K, llama.cpp PR #1684) push the overhead down further. A super-block of 256
weights stores one float16 `d` (and `dmin`) and 8 or 16 sub-blocks of 32 or 16 weights, each with its
own small integer scale (and minimum): 6-bit values bit-packed into 12 bytes in Q3_K/Q4_K/Q5_K, 4 bits
in Q2_K, 8 bits in Q6_K. The weight is `d * sc * q - dmin * m`: the sub-scales follow the local magnitude
while costing a fraction of a bit per weight. Q4_K is 4.5 bits per weight, Q6_K 6.5625.

Every block type is a fixed number of bytes (`gguf.GGML_QUANT_SIZES`: weights per block, bytes per
block); a tensor row is a whole number of blocks, so a tensor's bytes are simply (n_blocks, type_size)
and we unpack all blocks at once with numpy: slice a field out of every block, shift and mask its bits,
multiply by the scales broadcast over the block. There is no Python loop over blocks.

Layouts follow `block_*` in ggml/src/ggml-common.h and `dequantize_row_*` in ggml/src/ggml-quants.c
(https://github.com/ggml-org/llama.cpp); the file format is https://github.com/ggml-org/ggml/blob/master/docs/gguf.md.
All multi-byte fields are little-endian. The float operations are done in the order (and in float32)
that llama.cpp's C code and the `gguf` Python package use, so our results are bit-identical to
`gguf.quants.dequantize` (tests/model/test_quant.py checks every type).

Shapes: GGUF lists dimensions fastest-varying first (`ne[0]` is the length of a row), the reverse of
numpy/PyTorch. `gguf.GGUFReader` keeps that order in `tensor.shape` ([576, 49152] for SmolLM2's
embedding) while `tensor.data` is a row-major array of shape (49152, 576) for float types and
(49152, bytes per row) for quantized ones; `gguf.quants.dequantize(tensor.data, type)` returns
(49152, 576). `dequantize_tensor` returns the same: `tuple(reversed(tensor.shape))`, the shape a
PyTorch module uses (nn.Embedding(49152, 576).weight, nn.Linear(in, out).weight is (out, in)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QT = GGMLQuantizationType
QK_K = 256  # weights per K-quant super-block

# Shift amounts that pull 2-bit and 1-bit fields out of bytes, shaped to broadcast over a new field axis.
_CRUMB_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
_BIT_SHIFTS = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


# ---------------------------------------------------------------------------------------------------
# Field helpers. `blocks` is always (n_blocks, type_size) uint8; each helper reads one field of every
# block at once and returns one row per block.


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The little-endian float16 at byte `at` of each block, as a (n_blocks, 1) float32 column."""
    return blocks[:, at : at + 2].view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) 4-bit values: all k low nibbles first, then all k high nibbles.

    That is how every 4-bit llama.cpp type orders a group of 2k weights: byte j holds weight j in its
    low nibble and weight j + k in its high nibble (not weights 2j and 2j + 1).
    """
    n, k = qs.shape
    out = np.empty((n, 2, k), dtype=np.uint8)
    np.bitwise_and(qs, 0x0F, out=out[:, 0])
    np.right_shift(qs, 4, out=out[:, 1])
    return out.reshape(n, 2 * k)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 4k) 2-bit values: bits 0-1 of every byte, then bits 2-3, 4-5, 6-7."""
    n, k = qs.shape
    return ((qs.reshape(n, 1, k) >> _CRUMB_SHIFTS) & 3).reshape(n, 4 * k)


def _bit_planes(qh: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 8k) bits: bit 0 of every byte, then bit 1 of every byte, ... bit 7."""
    n, k = qh.shape
    return ((qh.reshape(n, 1, k) >> _BIT_SHIFTS) & 1).reshape(n, 8 * k)


def _per_group(scales: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Multiply weights q (n, QK_K) by one scale per sub-block: scales (n, g) -> (n, g, QK_K // g)."""
    n, g = scales.shape
    return scales.reshape(n, g, 1) * q.reshape(n, g, -1)


# ---------------------------------------------------------------------------------------------------
# Blocks of 32 weights. Each function maps (n_blocks, type_size) uint8 -> (n_blocks, 32) float32.


def _q4_0(b: np.ndarray) -> np.ndarray:
    # block_q4_0 (18 bytes): f16 d | 16 bytes of nibbles.  w = d * (q - 8), q in 0..15
    q = _nibbles(b[:, 2:18]).view(np.int8) - np.int8(8)
    return _f16(b, 0) * q


def _q4_1(b: np.ndarray) -> np.ndarray:
    # block_q4_1 (20 bytes): f16 d | f16 m | 16 bytes of nibbles.  w = d * q + m
    y = _f16(b, 0) * _nibbles(b[:, 4:20])
    y += _f16(b, 2)
    return y


def _q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """The 5-bit values of Q5_0/Q5_1: 4 low bits as in Q4, the 5th bit of weight j is bit j of the
    little-endian uint32 `qh` (so byte j // 8, bit j % 8: exactly numpy's little-endian unpackbits)."""
    high = np.unpackbits(qh, axis=1, bitorder="little")  # (n, 32) of 0/1
    return _nibbles(qs) | (high << 4)


def _q5_0(b: np.ndarray) -> np.ndarray:
    # block_q5_0 (22 bytes): f16 d | 4 bytes qh (5th bits) | 16 bytes of nibbles.  w = d * (q - 16)
    q = _q5(b[:, 2:6], b[:, 6:22]).view(np.int8) - np.int8(16)
    return _f16(b, 0) * q


def _q5_1(b: np.ndarray) -> np.ndarray:
    # block_q5_1 (24 bytes): f16 d | f16 m | 4 bytes qh | 16 bytes of nibbles.  w = d * q + m
    y = _f16(b, 0) * _q5(b[:, 4:8], b[:, 8:24])
    y += _f16(b, 2)
    return y


def _q8_0(b: np.ndarray) -> np.ndarray:
    # block_q8_0 (34 bytes): f16 d | 32 int8.  w = d * q
    return _f16(b, 0) * b[:, 2:34].view(np.int8)


# ---------------------------------------------------------------------------------------------------
# K-quants: super-blocks of 256 weights. Each maps (n_blocks, type_size) uint8 -> (n_blocks, 256) float32.


def _q2_k(b: np.ndarray) -> np.ndarray:
    # block_q2_K (84 bytes): 16 bytes scales | 64 bytes of 2-bit q | f16 d | f16 dmin.
    # 16 sub-blocks of 16 weights; scales byte i = sub-scale (low nibble) and sub-min (high nibble).
    # The 2-bit values run in two halves of 128 weights, each from 32 bytes: bits 0-1 of the 32 bytes
    # are weights 0..31, bits 2-3 weights 32..63, ... -- exactly `_crumbs` applied to each half.
    n = len(b)
    sc = b[:, 0:16]
    q = _crumbs(b[:, 16:80].reshape(2 * n, 32)).reshape(n, QK_K)
    dl = _f16(b, 80) * (sc & 0x0F)  # (n, 16) float32: d * sub-scale
    ml = _f16(b, 82) * (sc >> 4)  #                       dmin * sub-min
    y = _per_group(dl, q)
    y -= ml.reshape(n, 16, 1)
    return y.reshape(n, QK_K)


def _q3_k(b: np.ndarray) -> np.ndarray:
    # block_q3_K (110 bytes): 32 bytes hmask | 64 bytes of 2-bit q | 12 bytes scales | f16 d.
    # A weight is 3 bits: 2 low bits laid out as in Q2_K, and a high bit from hmask: bit s of hmask
    # byte l belongs to weight 32 s + l (`_bit_planes`). llama.cpp stores the high bit inverted:
    # q = low - 4 when the bit is 0, q = low when it is 1, so q is in -4..3.
    # 16 sub-blocks of 16 weights, each with a 6-bit scale stored with offset 32:
    #   low 4 bits of scale k:  bytes 0..7, low nibbles for k = 0..7, high nibbles for k = 8..15;
    #   high 2 bits of scale k: bytes 8..11, bits 2(k // 4)..2(k // 4)+1 of byte 8 + k % 4.
    n = len(b)
    s = b[:, 96:108]
    low = _nibbles(s[:, 0:8])  # (n, 16): scale k's low bits at position k
    high = _crumbs(s[:, 8:12])  # (n, 16): scale k's high bits at position k
    scales = (low | (high << 4)).view(np.int8) - np.int8(32)
    q = _crumbs(b[:, 32:96].reshape(2 * n, 32)).reshape(n, QK_K).view(np.int8)
    q -= (_bit_planes(b[:, 0:32]) ^ 1).view(np.int8) << 2  # subtract 4 where the high bit is 0
    dl = _f16(b, 108) * scales  # (n, 16) float32
    return _per_group(dl, q).reshape(n, QK_K)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12 bytes of 8 six-bit scales and 8 six-bit mins of Q4_K/Q5_K (get_scale_min_k4).

    bytes 0..3:  scale j (low 6 bits) for j = 0..3; their top 2 bits are the top bits of scale j + 4
    bytes 4..7:  min j   (low 6 bits) for j = 0..3; their top 2 bits are the top bits of min j + 4
    bytes 8..11: scale j + 4 (low nibble) and min j + 4 (high nibble), low 4 bits, for j = 0..3
    """
    n = len(s)
    sc = np.empty((n, 8), dtype=np.uint8)
    mn = np.empty((n, 8), dtype=np.uint8)
    sc[:, :4] = s[:, 0:4] & 0x3F
    mn[:, :4] = s[:, 4:8] & 0x3F
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _k4_apply(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """w = d * sc[j] * q - dmin * m[j] over 8 sub-blocks j of 32 weights, for Q4_K and Q5_K."""
    n = len(b)
    sc, mn = _k4_scales(b[:, 4:16])
    d1 = _f16(b, 0) * sc  # (n, 8) float32
    m1 = _f16(b, 2) * mn
    y = _per_group(d1, q)
    y -= m1.reshape(n, 8, 1)
    return y.reshape(n, QK_K)


def _q4_k(b: np.ndarray) -> np.ndarray:
    # block_q4_K (144 bytes): f16 d | f16 dmin | 12 bytes scales/mins | 128 bytes of nibbles.
    # The nibbles come in 4 chunks of 32 bytes, each holding 64 weights: low nibbles then high nibbles.
    n = len(b)
    q = _nibbles(b[:, 16:144].reshape(4 * n, 32)).reshape(n, QK_K)
    return _k4_apply(b, q)


def _q5_k(b: np.ndarray) -> np.ndarray:
    # block_q5_K (176 bytes): f16 d | f16 dmin | 12 bytes scales/mins | 32 bytes qh | 128 bytes nibbles.
    # Low 4 bits as in Q4_K; the 5th bit of weight 32 s + l is bit s of qh byte l (`_bit_planes`).
    n = len(b)
    q = _nibbles(b[:, 48:176].reshape(4 * n, 32)).reshape(n, QK_K)
    q |= _bit_planes(b[:, 16:48]) << 4
    return _k4_apply(b, q)


def _q6_k(b: np.ndarray) -> np.ndarray:
    # block_q6_K (210 bytes): 128 bytes ql (low 4 bits) | 64 bytes qh (high 2 bits) | 16 int8 scales | f16 d.
    # Two halves of 128 weights, each from 64 bytes of ql and 32 bytes of qh:
    #   ql byte k: weight k (low nibble) and weight 64 + k (high nibble)         -> `_nibbles`
    #   qh byte l: bits 2j..2j+1 are the top 2 bits of weight 32 j + l (j = 0..3) -> `_crumbs`
    # q = 6-bit value - 32, and 16 sub-blocks of 16 weights each have an int8 scale.  w = d * sc * q
    n = len(b)
    low = _nibbles(b[:, 0:128].reshape(2 * n, 64))
    high = _crumbs(b[:, 128:192].reshape(2 * n, 32))
    q = (low | (high << 4)).reshape(n, QK_K).view(np.int8) - np.int8(32)
    dl = _f16(b, 208) * b[:, 192:208].view(np.int8)  # (n, 16) float32
    return _per_group(dl, q).reshape(n, QK_K)


def _q8_k(b: np.ndarray) -> np.ndarray:
    # block_q8_K (292 bytes): f32 d | 256 int8 | 16 int16 sums of 16 weights each (for dot products).
    # llama.cpp quantizes activations to Q8_K for its K-quant dot products; it rarely appears in files.
    return b[:, 0:4].view("<f4").astype(np.float32) * b[:, 4:260].view(np.int8)


_BLOCK_DECODERS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    QT.Q4_0: _q4_0,
    QT.Q4_1: _q4_1,
    QT.Q5_0: _q5_0,
    QT.Q5_1: _q5_1,
    QT.Q8_0: _q8_0,
    QT.Q2_K: _q2_k,
    QT.Q3_K: _q3_k,
    QT.Q4_K: _q4_k,
    QT.Q5_K: _q5_k,
    QT.Q6_K: _q6_k,
    QT.Q8_K: _q8_k,
}

# Plain float types: one element per "block".
_FLOAT_DECODERS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    QT.F32: lambda raw: raw.view("<f4").astype(np.float32),  # astype copies: never a view of the file
    QT.F16: lambda raw: raw.view("<f2").astype(np.float32),
    # bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret.
    QT.BF16: lambda raw: (raw.view("<u2").astype(np.uint32) << 16).view(np.float32),
}

SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = (*_FLOAT_DECODERS, *_BLOCK_DECODERS)


def _qtype(qtype: int | GGMLQuantizationType) -> GGMLQuantizationType:
    names = ", ".join(t.name for t in SUPPORTED_TYPES)
    try:
        qt = GGMLQuantizationType(qtype)
    except ValueError:
        raise ValueError(f"unknown GGML tensor type code {qtype!r}; supported: {names}") from None
    if qt not in _BLOCK_DECODERS and qt not in _FLOAT_DECODERS:
        raise ValueError(f"{qt.name} is not supported; supported: {names}")
    return qt


def dequantize(data: np.ndarray, qtype: int | GGMLQuantizationType, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a tensor's stored bytes into a new float32 array of `shape` (row-major, numpy order).

    `data` is the tensor's bytes as stored in the file (any dtype and shape: it is read as flat
    little-endian bytes, so `GGUFReader` tensor data, float32 or uint8, can be passed as is). The last
    dimension of `shape` must be a multiple of the type's block size, as GGUF requires of a row.
    """
    qt = _qtype(qtype)
    shape = tuple(int(s) for s in shape)
    block_size, type_size = GGML_QUANT_SIZES[qt]
    n = math.prod(shape)
    row = shape[-1] if shape else 1
    if row % block_size:
        raise ValueError(
            f"{qt.name}: a row of {row} weights is not a whole number of {block_size}-weight blocks"
        )
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    expected = n // block_size * type_size
    if raw.size != expected:
        raise ValueError(
            f"{qt.name} tensor of shape {shape} needs {expected} bytes "
            f"({n} weights, {type_size} bytes per {block_size}), got {raw.size}"
        )
    if qt in _FLOAT_DECODERS:
        out = _FLOAT_DECODERS[qt](raw)
    else:
        out = _BLOCK_DECODERS[qt](raw.reshape(-1, type_size))
    return out.reshape(shape)


def dequantize_tensor(tensor: Any) -> np.ndarray:
    """Dequantize a `gguf.GGUFReader` tensor (`ReaderTensor`) into float32, in numpy/PyTorch order.

    The reader's `tensor.shape` is GGUF's ne order (row length first); the result has shape
    `tuple(reversed(tensor.shape))`, the same as `gguf.quants.dequantize(tensor.data, tensor.tensor_type)`.
    """
    shape = tuple(int(s) for s in reversed(tensor.shape))
    return dequantize(tensor.data, tensor.tensor_type, shape)


if __name__ == "__main__":  # timing: python -m lmforge.model.quant
    import time
    from collections import Counter

    import gguf

    from lmforge.registry import resolve

    def _pass(reader: gguf.GGUFReader, fn: Callable[[Any], np.ndarray]) -> float:
        t0 = time.perf_counter()
        for t in reader.tensors:
            fn(t)
        return time.perf_counter() - t0

    def _ref(t: Any) -> np.ndarray:
        return gguf.quants.dequantize(t.data, t.tensor_type)

    # The first pass also pays for reading the memory-mapped file and for the kernel handing out fresh
    # pages (a Gemma embedding is 670 MB of float32); later passes show the decoding itself.
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        t0 = time.perf_counter()
        reader = gguf.GGUFReader(resolve(name))
        opened = time.perf_counter() - t0
        types = dict(Counter(t.tensor_type.name for t in reader.tensors))
        n = sum(int(t.n_elements) for t in reader.tensors)
        print(
            f"{name}: {len(reader.tensors)} tensors, {n / 1e6:.1f}M weights {types}, opened in {opened:.2f} s"
        )
        first = _pass(reader, dequantize_tensor)
        ours, ref = [], []
        for _ in range(3):
            ours.append(_pass(reader, dequantize_tensor))
            ref.append(_pass(reader, _ref))
        print(
            f"  ours: first pass {first:.3f} s, best of 3 {min(ours):.3f} s; "
            f"gguf.quants.dequantize: best of 3 {min(ref):.3f} s ({min(ref) / min(ours):.1f}x slower)"
        )
