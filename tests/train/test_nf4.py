"""NF4 (QLoRA): the code book, block-wise quantization, double quantization, NF4Linear, a quantized model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.nf4 import (
    NF4_CODE,
    NF4Linear,
    bits_per_parameter,
    dequantize_nf4,
    model_bytes,
    nf4_code_from_normal,
    quantize_model_nf4,
    quantize_nf4,
)
from lmforge.train.nf4 import _unpack as unpack

PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]  # fmt: skip
TINY = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=128, ffn_dim=128, family="llama")


def test_code_book_is_the_published_table():
    assert NF4_CODE.dtype == torch.float32
    assert torch.equal(NF4_CODE, torch.tensor(PUBLISHED))
    assert (NF4_CODE.diff() > 0).all() and NF4_CODE[7] == 0  # sorted, with an exact zero at code 7


def test_code_book_derives_from_normal_quantiles():
    assert torch.allclose(nf4_code_from_normal(), NF4_CODE, atol=1e-6, rtol=0)
    # the same derivation with scipy's norm.ppf, as bitsandbytes' create_normal_map does it
    norm = pytest.importorskip("scipy.stats").norm
    import numpy as np

    offset = (1 - 1 / 30 + 1 - 1 / 32) / 2
    v = [*norm.ppf(np.linspace(offset, 0.5, 9)[:-1]), 0.0, *-norm.ppf(np.linspace(offset, 0.5, 8)[:-1])]
    v = np.sort(v) / np.max(v)
    assert np.abs(v - np.array(PUBLISHED)).max() < 1e-6


def test_round_trip_error_is_at_most_half_a_gap():
    torch.manual_seed(0)
    w = torch.randn(300, 70) * 0.05  # 21000 weights: the last block is padded
    t = quantize_nf4(w, block_size=64)
    assert t.codes.dtype == torch.uint8 and t.codes.numel() == 329 * 32  # ceil(21000 / 64) blocks, 2 a byte
    assert t.absmax.shape == (329,)
    dq = dequantize_nf4(t)
    assert dq.shape == w.shape
    # each weight's error ≤ half the gap between its code and the neighbour on its side, × its block's absmax
    q = unpack(t.codes)[: w.numel()]
    gaps = NF4_CODE.diff()
    half = torch.maximum(torch.cat([gaps[:1], gaps]), torch.cat([gaps, gaps[-1:]]))[q] / 2
    absmax = t.absmax.repeat_interleave(64)[: w.numel()]
    err = (dq - w).abs().flatten()
    assert (err <= half * absmax * (1 + 1e-6)).all()
    # and the code is the nearest one
    x = w.flatten() / absmax
    assert ((x[:, None] - NF4_CODE).abs().min(dim=1).values >= (x - NF4_CODE[q]).abs() - 1e-7).all()


def test_code_points_round_trip_exactly():
    torch.manual_seed(1)
    idx = torch.randint(0, 16, (40, 64))
    idx[:, 5] = 15  # every block holds 1.0 × its absmax, so the absmax is the scale we chose
    scale = torch.rand(40, 1) + 0.1
    w = (NF4_CODE[idx] * scale).view(20, 128)  # 40 blocks of 64
    t = quantize_nf4(w, block_size=64)
    assert torch.equal(unpack(t.codes), idx.flatten())
    assert t.codes[0] == (idx[0, 0] << 4) | idx[0, 1]  # first code in the high nibble, as bitsandbytes
    assert torch.equal(dequantize_nf4(t), w)


def test_double_quantization():
    torch.manual_seed(2)
    w = torch.randn(1024, 1024) * 0.02
    plain, dq = quantize_nf4(w, 64), quantize_nf4(w, 64, double_quant=True)
    assert dq.absmax is None and dq.absmax_q.dtype == torch.int8 and dq.absmax_q.shape == (16384,)
    assert dq.absmax_scale.shape == (64,) and dq.absmax_mean.shape == ()
    rel = (dq.block_absmax() - plain.absmax).abs() / plain.absmax
    assert rel.max() < 1e-2  # measured 0.43% at most (0.12% mean): the absmax values vary little
    # linear int8: each error at most half a step of its 256-block
    err = (dq.block_absmax() - plain.absmax).abs().view(64, 256)
    assert (err <= dq.absmax_scale[:, None] / 2 * (1 + 1e-5) + 1e-9).all()
    # same codes, so the weights differ only by the absmax error
    assert torch.equal(dq.codes, plain.codes)
    assert torch.allclose(dq.dequantize(), plain.dequantize(), rtol=1e-2, atol=0)
    # storage: 4 bits + 32 / 64 = 4.5; with DQ 4 + 8/64 + 32/(64·256) (+ the one fp32 mean)
    n = w.numel()
    assert plain.nbytes() * 8 / n == 4.5 == bits_per_parameter(64, double_quant=False)
    assert dq.nbytes() * 8 / n == pytest.approx(bits_per_parameter(64, True) + 32 / n, abs=1e-12)


def test_bits_per_parameter():
    assert bits_per_parameter(64, double_quant=False) == 4.5
    assert bits_per_parameter(64, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(bits_per_parameter(64, True), 3) == 4.127
    assert bits_per_parameter(32, double_quant=False) == 5.0


def test_nf4_linear_is_close_to_the_float_linear():
    torch.manual_seed(3)
    lin = nn.Linear(512, 256)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
    x = torch.randn(4, 7, 512)
    q = NF4Linear.from_linear(lin)
    assert list(q.parameters()) == [] and q.codes.dtype == torch.uint8
    assert (q.in_features, q.out_features) == (512, 256) and q.bias.dtype == torch.bfloat16
    y, ref = q(x), lin(x)
    assert y.shape == ref.shape and y.dtype == torch.float32  # back in the input's dtype
    rel = ((y - ref).norm() / ref.norm()).item()
    # NF4's RMS error on normal weights is ~9% of their norm; the output's is the same (measured 0.092)
    assert rel < 0.12
    # forward is exactly F.linear with the dequantized bf16 weight
    w = q.dequantize()
    assert w.dtype == torch.bfloat16 and w.shape == (256, 512)
    exact = torch.nn.functional.linear(x.bfloat16(), w, q.bias).float()
    assert torch.equal(y, exact)
    # .weight is the dequantized weight, and writing into it raises instead of doing nothing
    assert torch.equal(q.weight, w)
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            q.weight.add_(1.0)
    back = q.to_linear()
    assert isinstance(back, nn.Linear) and torch.equal(back.weight, q.dequantize(torch.float32))
    # 4.127 bits instead of 32: the weight alone shrinks ~7.7x
    assert q.qweight().nbytes() < lin.weight.numel() * 4 / 7.5


def tiny_model() -> Transformer:
    torch.manual_seed(4)
    return Transformer(TINY).init_weights().eval()


def test_quantized_tiny_model():
    model = tiny_model()
    ids = torch.randint(0, 128, (2, 12))
    ref = model(ids)
    before = model_bytes(model)
    names = quantize_model_nf4(model)
    assert len(names) == 2 * 7 and "layers.0.attn.q_proj" in names and "layers.1.ffn.down_proj" in names
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in names)
    assert model_bytes(model) < before  # the embedding (tied head) stays float: 128 × 64
    out = model(ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.1  # measured 0.057
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
    # nothing in the NF4 layers can train: no parameters at all
    for n in names:
        assert list(model.get_submodule(n).parameters()) == []


class TinyLoRA(nn.Module):
    """A minimal LoRA-style wrapper: holds .base and calls self.base(x), as lmforge.train.lora's does."""

    def __init__(self, base: nn.Module, r: int = 4):
        super().__init__()
        self.base = base
        w = base.weight  # reads shape, dtype and device only
        self.A = nn.Parameter(torch.randn(r, base.in_features, device=w.device) * 0.01)
        self.B = nn.Parameter(torch.full((base.out_features, r), 0.01, device=w.device))

    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


def test_gradients_flow_through_nf4_layers_to_adapters():
    model = tiny_model()
    quantize_model_nf4(model)
    model.requires_grad_(False)
    block = model.layers[0].attn
    block.q_proj = TinyLoRA(block.q_proj)  # an adapter in the first layer: its gradient crosses layer 1
    ids = torch.randint(0, 128, (2, 12))
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["layers.0.attn.q_proj.A", "layers.0.attn.q_proj.B"]
    assert block.q_proj.A.grad.abs().sum() > 0 and block.q_proj.B.grad.abs().sum() > 0


def test_qlora_with_lmforge_lora():
    lora = pytest.importorskip("lmforge.train.lora")
    model = tiny_model()
    ids = torch.randint(0, 128, (2, 12))
    ref = model(ids)
    wrapped = lora.apply_lora(model, lora.LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    names = quantize_model_nf4(model)  # LoRA first, then the bases become NF4: QLoRA
    assert "layers.0.attn.q_proj.base" in names and "layers.0.attn.k_proj" in names
    assert all(isinstance(model.get_submodule(n + ".base"), NF4Linear) for n in wrapped)
    out = model(ids)  # B = 0: the quantized model
    assert ((out - ref).norm() / ref.norm()) < 0.1
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), ids.flatten())
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in wrapped for ab in "AB"}
    assert all(model.get_submodule(n).lora_B.grad.abs().sum() > 0 for n in wrapped)
    # and a LoRA wrapper built directly around an NF4Linear
    layer = lora.LoRALinear(NF4Linear.from_linear(nn.Linear(64, 32)), r=4)
    assert layer.lora_A.dtype == torch.float32 and layer(torch.randn(3, 64)).shape == (3, 32)


def test_deepcopy_and_state_dict():
    model = tiny_model()
    quantize_model_nf4(model, double_quant=False)
    twin = Transformer(TINY)
    quantize_model_nf4(twin, double_quant=False)
    twin.load_state_dict(copy.deepcopy(model.state_dict()))  # the codes and absmax are saved buffers
    ids = torch.randint(0, 128, (1, 9))
    assert torch.equal(model(ids), twin.eval()(ids))


def test_matches_bitsandbytes_if_installed():
    bnb = pytest.importorskip("bitsandbytes")  # not a dependency; compared when it happens to be there
    table = bnb.functional.get_4bit_type("nf4", device="cpu")
    assert torch.allclose(table.float().cpu(), NF4_CODE, atol=0, rtol=0)
