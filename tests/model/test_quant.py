"""Our GGUF dequantization equals llama.cpp's: `gguf.quants.dequantize` (its Python reference) on real
tensors of SmolLM2 and Gemma 3, on random blocks of every supported type, and a line-by-line port of
`dequantize_row_*` from ggml-quants.c for the K-quants."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.model.quant import SUPPORTED_TYPES, dequantize, dequantize_tensor

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType
SIZES = gguf.GGML_QUANT_SIZES

# The tensor types in the two packaged files (checked below, so a changed file cannot go unnoticed).
FILE_TYPES = {
    "smollm2": {"F32", "Q4_1", "Q8_0"},
    "gemma": {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"},
}


@pytest.fixture(scope="module")
def readers(smollm2_gguf, gemma_gguf) -> dict:
    """Each GGUFReader opened once for the module (Gemma's takes ~8 s: it indexes a 262k vocabulary)."""
    return {"smollm2": gguf.GGUFReader(smollm2_gguf), "gemma": gguf.GGUFReader(gemma_gguf)}


def assert_same(ours: np.ndarray, ref: np.ndarray) -> None:
    """Bit-identical (the brief allows 1e-6 of the max magnitude; we do not need it)."""
    assert ours.dtype == np.float32 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    if not np.array_equal(ours, ref):
        diff = np.abs(ours.astype(np.float64) - ref).max()
        pytest.fail(f"max abs diff {diff:.3g}, max abs value {np.abs(ref).max():.3g}")


def assert_same_as_gguf(tensor, ours: np.ndarray, rows_per_chunk: int = 4096) -> None:
    """Compare with gguf.quants.dequantize a slice of rows at a time: Gemma's embedding is 670 MB as
    float32, and slices of a few MB reuse memory instead of asking the kernel for fresh pages each time."""
    rows = tensor.data.reshape(-1, tensor.data.shape[-1]) if tensor.data.ndim > 1 else tensor.data[None]
    flat = ours.reshape(len(rows), -1)
    for i in range(0, len(rows), rows_per_chunk):
        ref = gguf.quants.dequantize(rows[i : i + rows_per_chunk], tensor.tensor_type)
        assert_same(flat[i : i + rows_per_chunk], ref.reshape(-1, flat.shape[1]))


def test_file_tensor_types(readers):
    for key, reader in readers.items():
        assert {t.tensor_type.name for t in reader.tensors} == FILE_TYPES[key]


@pytest.mark.parametrize(
    "key,type_name", [(key, name) for key, names in FILE_TYPES.items() for name in sorted(names)]
)
def test_real_tensors_match_gguf(readers, key, type_name):
    tensors = [t for t in readers[key].tensors if t.tensor_type.name == type_name]
    largest = max(tensors, key=lambda t: int(t.n_elements))
    picks = {t.name: t for t in (tensors[0], tensors[len(tensors) // 2], tensors[-1], largest)}
    for t in picks.values():
        ours = dequantize_tensor(t)
        # GGUF lists ne[0] (the row length) first; we return numpy/PyTorch order, like gguf.quants.
        assert ours.shape == tuple(int(s) for s in reversed(t.shape))
        assert ours.flags.c_contiguous and ours.flags.writeable and not np.shares_memory(ours, t.data)
        assert_same_as_gguf(t, ours)
    # The plain entry point, with an int type code, on the same bytes (of the smallest tensor: cheap).
    small = min(tensors, key=lambda t: int(t.n_elements))
    again = dequantize(small.data, int(small.tensor_type), tuple(int(s) for s in reversed(small.shape)))
    assert np.array_equal(again, dequantize_tensor(small))


def test_real_shapes_are_pytorch_order(readers):
    by_name = {t.name: t for t in readers["smollm2"].tensors}
    assert dequantize_tensor(by_name["token_embd.weight"]).shape == (49152, 576)  # nn.Embedding(vocab, dim)
    assert dequantize_tensor(by_name["blk.0.ffn_down.weight"]).shape == (576, 1536)  # nn.Linear(1536, 576)
    assert dequantize_tensor(by_name["blk.0.attn_norm.weight"]).shape == (576,)


# ---------------------------------------------------------------------------------------------------
# Synthetic data for every supported type, most of which occur in neither file.

# Byte offsets of the float16 scale/min fields in each block type (ggml-common.h).
F16_FIELDS = {
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q8_0: (0,),
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}


def finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n float16 values over many magnitudes (subnormals, zeros and both signs included)."""
    x = rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-8, 4, n)
    x[rng.random(n) < 0.05] = 0.0
    return x.astype("<f2")


def random_bytes(qtype: QT, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random bytes of a tensor of `shape`, as (rows, bytes per row) like GGUFReader's tensor.data.

    Random bits are valid input for every field except float scales, where they could be NaN or inf:
    those are drawn as finite values. For the float types, exponent-all-ones patterns are cleared.
    """
    block_size, type_size = SIZES[qtype]
    rows, cols = shape
    n_blocks = rows * cols // block_size
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if qtype in F16_FIELDS:
        for at in F16_FIELDS[qtype]:
            raw[:, at : at + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    elif qtype == QT.Q8_K:
        d = (finite_f16(rng, n_blocks).astype("<f4") * 1e-3).astype("<f4")
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    elif qtype in (QT.F16, QT.BF16):
        bits = raw.view("<u2")
        exponent = 0x7C00 if qtype == QT.F16 else 0x7F80
        bits[(bits & exponent) == exponent] &= ~np.uint16(0x4000)  # no inf/NaN: turn the top exponent bit off
    elif qtype == QT.F32:
        raw = rng.normal(0, 1, n_blocks).astype("<f4").view(np.uint8).reshape(n_blocks, 4)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [t for t in SUPPORTED_TYPES if t != QT.Q8_K], ids=lambda t: t.name)
def test_random_blocks_match_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    block_size = SIZES[qtype][0]
    shape = (8, 4 * max(block_size, 32))
    raw = random_bytes(qtype, shape, rng)
    ref = gguf.quants.dequantize(raw, qtype)
    assert_same(dequantize(raw, qtype, shape), ref)
    # Three dimensions, and a flat byte buffer, give the same numbers.
    assert_same(dequantize(raw.reshape(-1), qtype, (2, 4, shape[1])), ref.reshape(2, 4, -1))


QUANTIZABLE = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
BITS = {QT.Q4_0: 4, QT.Q4_1: 4, QT.Q5_0: 5, QT.Q5_1: 5, QT.Q8_0: 8}


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_by_gguf_round_trip(qtype):
    """Weights quantized by gguf.quants.quantize come back as gguf decodes them, and near the originals:
    within one quantization step, 2 * max|w| / (2^bits - 1), of each block."""
    rng = np.random.default_rng(7)
    w = (rng.standard_t(4, (64, 512)) * 0.05).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    ours = dequantize(raw, qtype, w.shape)
    assert_same(ours, gguf.quants.dequantize(raw, qtype))
    blocks_err = np.abs(ours - w).reshape(-1, 32).max(axis=1)
    step = 2 * np.abs(w).reshape(-1, 32).max(axis=1) / (2 ** BITS[qtype] - 1)
    assert (blocks_err <= step * 1.01).all()


@pytest.mark.parametrize("qtype,rel", [(QT.F16, 2**-11), (QT.BF16, 2**-8)], ids=["F16", "BF16"])
def test_float_types_round_trip(qtype, rel):
    w = np.random.default_rng(3).normal(0, 1, (16, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)  # F16: numpy's cast; BF16: llama.cpp's round-to-nearest-even
    ours = dequantize(raw, qtype, w.shape)
    assert_same(ours, gguf.quants.dequantize(raw, qtype).reshape(w.shape))
    assert np.allclose(ours, w, rtol=rel, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# A second, independent oracle for the K-quants: dequantize_row_* of ggml-quants.c ported line by line
# (one block, scalar float32 arithmetic). Q8_K has no gguf.quants decoder, so this is its only oracle.

f32 = np.float32


def _f16_at(b: bytes, at: int) -> np.float32:
    return f32(np.frombuffer(b, "<f2", 1, at)[0])


def _i8(x: int) -> int:
    return x - 256 if x >= 128 else x


def c_q2_k(b: bytes) -> list:
    scales, q, d, dmin = b[0:16], b[16:80], _f16_at(b, 80), _f16_at(b, 82)
    y, is_ = [], 0
    for n in range(0, 256, 128):
        qq = q[n // 4 :]
        for shift in (0, 2, 4, 6):
            for half in (0, 16):
                sc = scales[is_]
                is_ += 1
                dl, ml = d * f32(sc & 0xF), dmin * f32(sc >> 4)
                y += [dl * f32((qq[l + half] >> shift) & 3) - ml for l in range(16)]
    return y


def c_q3_k(b: bytes) -> list:
    hm, q, d = b[0:32], b[32:96], _f16_at(b, 108)
    aux = list(np.frombuffer(b, "<u4", 3, 96))
    kmask1, kmask2 = 0x03030303, 0x0F0F0F0F
    tmp = aux[2]
    aux += [0]
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
    scales = [_i8(x) for x in np.array(aux, "<u4").tobytes()]
    y, is_, m = [], 0, 1
    for n in range(0, 256, 128):
        qq = q[n // 4 :]
        for shift in (0, 2, 4, 6):
            for half in (0, 16):
                dl = d * f32(scales[is_] - 32)
                is_ += 1
                for l in range(half, half + 16):
                    y.append(dl * f32(((qq[l] >> shift) & 3) - (0 if hm[l] & m else 4)))
            m <<= 1
    return y


def _scale_min_k4(j: int, q: bytes) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def c_q4_k_q5_k(b: bytes, five_bits: bool) -> list:
    d, dmin, scales = _f16_at(b, 0), _f16_at(b, 2), b[4:16]
    qh, ql = (b[16:48], b[48:176]) if five_bits else (bytes(32), b[16:144])
    y, is_, u1, u2 = [], 0, 1, 2
    for j in range(0, 256, 64):
        q = ql[j // 2 :]
        sc, m = _scale_min_k4(is_, scales)
        d1, m1 = d * f32(sc), dmin * f32(m)
        sc, m = _scale_min_k4(is_ + 1, scales)
        d2, m2 = d * f32(sc), dmin * f32(m)
        y += [d1 * f32((q[l] & 0xF) + (16 if qh[l] & u1 else 0)) - m1 for l in range(32)]
        y += [d2 * f32((q[l] >> 4) + (16 if qh[l] & u2 else 0)) - m2 for l in range(32)]
        is_, u1, u2 = is_ + 2, u1 << 2, u2 << 2
    return y


def c_q6_k(b: bytes) -> list:
    d = _f16_at(b, 208)
    y = [f32(0)] * 256
    for n in range(0, 256, 128):
        ql, qh, sc = b[n // 2 :], b[128 + n // 4 :], [_i8(x) for x in b[192 + n // 16 : 208]]
        for l in range(32):
            is_ = l // 16
            q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
            y[n + l] = d * f32(sc[is_]) * f32(q1)
            y[n + l + 32] = d * f32(sc[is_ + 2]) * f32(q2)
            y[n + l + 64] = d * f32(sc[is_ + 4]) * f32(q3)
            y[n + l + 96] = d * f32(sc[is_ + 6]) * f32(q4)
    return y


def c_q8_k(b: bytes) -> list:
    d = f32(np.frombuffer(b, "<f4", 1, 0)[0])
    return [d * f32(_i8(x)) for x in b[4:260]]


C_PORTS = {
    QT.Q2_K: c_q2_k,
    QT.Q3_K: c_q3_k,
    QT.Q4_K: lambda b: c_q4_k_q5_k(b, five_bits=False),
    QT.Q5_K: lambda b: c_q4_k_q5_k(b, five_bits=True),
    QT.Q6_K: c_q6_k,
    QT.Q8_K: c_q8_k,
}


@pytest.mark.parametrize("qtype", list(C_PORTS), ids=lambda t: t.name)
def test_k_quants_match_c_port(qtype):
    raw = random_bytes(qtype, (3, 512), np.random.default_rng(100 + int(qtype)))
    blocks = raw.reshape(-1, SIZES[qtype][1])
    ref = np.array([C_PORTS[qtype](blk.tobytes()) for blk in blocks], dtype=np.float32)
    assert_same(dequantize(raw, qtype, (3, 512)), ref.reshape(3, 512))


# ---------------------------------------------------------------------------------------------------
# Bad input.


def test_unsupported_type_is_named():
    with pytest.raises(ValueError, match=r"IQ2_XXS is not supported; supported: F32, F16, BF16, Q4_0"):
        dequantize(np.zeros(66, np.uint8), QT.IQ2_XXS, (256,))
    with pytest.raises(ValueError, match="TQ1_0 is not supported"):
        dequantize(np.zeros(54, np.uint8), int(QT.TQ1_0), (256,))
    with pytest.raises(ValueError, match="unknown GGML tensor type code 999"):
        dequantize(np.zeros(4, np.uint8), 999, (1,))


def test_wrong_sizes_are_named():
    with pytest.raises(ValueError, match=r"Q4_0 tensor of shape \(2, 64\) needs 72 bytes .* got 70"):
        dequantize(np.zeros(70, np.uint8), QT.Q4_0, (2, 64))
    with pytest.raises(ValueError, match=r"Q6_K tensor of shape \(512,\) needs 420 bytes .* got 840"):
        dequantize(np.zeros(840, np.uint8), QT.Q6_K, (512,))
    with pytest.raises(ValueError, match=r"F32 tensor of shape \(3, 4\) needs 48 bytes .* got 44"):
        dequantize(np.zeros(11, np.float32), QT.F32, (3, 4))
    with pytest.raises(ValueError, match="row of 48 weights is not a whole number of 32-weight blocks"):
        dequantize(np.zeros(54, np.uint8), QT.Q8_0, (1, 48))
