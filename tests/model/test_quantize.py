"""Weight-only int8/int4 quantization: the kernels equal the reference, the error stays in its bound,
and the quantized SmolLM2 still answers like the float32 one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lmforge
from lmforge.infer.generate import generate_ids
from lmforge.model.quant import QT, dequantize
from lmforge.model.quantize import (
    QuantLinear,
    int4_from_gguf,
    quantize_int4,
    quantize_int8,
    quantize_model,
)
from lmforge.tokenizer.gguf_metadata import read_gguf_tensor_infos
from tests.model.test_families import roundtrip, tiny

NAME = "smollm2-135m-instruct"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("mode,group", [("int8", 32), ("int4", 32), ("int4", 64)])
@pytest.mark.parametrize("m", [1, 5])
def test_kernel_equals_reference(mode, group, m):
    torch.manual_seed(0)
    lin = nn.Linear(192, 128, bias=True)
    layer = QuantLinear.from_linear(lin, mode, group)
    assert layer.mode == mode
    x = torch.randn(2, m, 192).bfloat16()
    fast = layer(x)
    assert fast.shape == (2, m, 128) and fast.dtype == torch.bfloat16
    ref = layer.forward_reference(x)  # float32 matmul of the same bf16 inputs and dequantized weights
    # the only differences: summation order and the kernel's bfloat16 output (2^-8 relative)
    assert (fast.float() - ref).abs().max() <= 8e-3 * ref.abs().max()
    # a float32 input comes back float32, computed the same way
    assert torch.equal(layer(x.float()), fast.float())


def test_quantization_error_bounds():
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    q8, s8 = quantize_int8(w)
    assert q8.dtype == torch.int8 and q8.abs().max() == 127  # the largest weight of a row uses the full range
    assert rel(q8.float() * s8[:, None], w) < 0.01
    assert ((q8.float() * s8[:, None] - w).abs() <= s8[:, None] / 2 + 1e-6).all()  # round to nearest
    q4, s4, z4 = quantize_int4(w, 32)
    assert q4.min() == 0 and q4.max() == 15
    w4 = (q4.float().view(256, 16, 32) - 8) * s4.float()[..., None] + z4.float()[..., None]
    err = rel(w4.view(256, 512), w)
    assert 0.03 < err < 0.10  # 16 levels over a group's range: a few percent, never near-exact
    assert rel(QuantLinear.from_linear(w, "int4").dequantize(), w) == pytest.approx(err, rel=1e-6)
    # bigger groups share a scale among more weights: a larger error
    assert rel(QuantLinear.from_linear(w, "int4", 128).dequantize(), w) > err


def test_int4_codes_round_trip_through_the_kernel_layout():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (96, 64), generator=g, dtype=torch.uint8)
    s, z = torch.rand(96, 2, generator=g), torch.randn(96, 2, generator=g)
    layer = QuantLinear.from_int4(q, s, z)
    assert layer.weight.shape == (96, 32) and layer.weight.dtype == torch.uint8  # two codes per byte
    assert torch.equal(layer.codes(), q)
    expect = (q.float() - 8) * s.bfloat16().float().repeat_interleave(
        32, 1
    ) + z.bfloat16().float().repeat_interleave(32, 1)
    assert torch.equal(layer.dequantize(), expect)


def test_int4_falls_back_to_int8_for_shapes_the_kernel_cannot_take():
    layer = QuantLinear.from_linear(nn.Linear(64, 211), "int4")  # 211 rows: not a multiple of 16
    assert layer.mode == "int8"
    with pytest.raises(ValueError, match="out_features % 16"):
        QuantLinear.from_int4(
            torch.zeros(211, 64, dtype=torch.uint8), torch.ones(211, 2), torch.zeros(211, 2)
        )


@pytest.mark.parametrize("kind", ["llama", "mixtral", "llama-bias-untied"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tiny_models(kind, mode, tmp_path):
    model = roundtrip(tiny(kind), tmp_path)
    ids = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        quantize_model(model, mode)
        out = model(ids)
    assert isinstance(model.layers[0].attn.qkv_proj, QuantLinear)  # q, k, v quantized and fused
    assert isinstance(model.lm_head, QuantLinear)  # tied or not, the head is quantized too
    if kind == "mixtral":
        assert isinstance(model.layers[0].ffn.router, nn.Linear)  # routers stay in floating point
    assert out.dtype == torch.bfloat16
    # random weights in every layer compound the error (measured ~0.01 int8, ~0.19 int4); a wrong
    # kernel or layout gives ~1.4 (uncorrelated logits)
    assert rel(out, ref) < (0.03 if mode == "int8" else 0.3)


def test_load_model_quantizes_a_hugging_face_folder(tmp_path):
    ref = roundtrip(tiny("qwen2"), tmp_path)  # saves the folder too
    model = lmforge.load_model(tmp_path, quantize="int4")
    assert (
        isinstance(model.layers[0].attn.qkv_proj, QuantLinear)
        and model.layers[0].attn.qkv_proj.bias is not None
    )
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        assert rel(model(ids), ref(ids)) < 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="int8, int4"):
        lmforge.load_model(NAME, quantize="int3")
    with pytest.raises(ValueError, match="int8, int4"):
        quantize_model(nn.Sequential(nn.Linear(64, 64)), "fp8")
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(nn.Sequential(nn.Linear(64, 64)), "int4", group_size=16)
    with pytest.raises(ValueError, match="CPU"):
        lmforge.load_model(NAME, quantize="int8", device="cuda")


def gguf_tensor(path, name: str):
    """(bytes, type, shape) of one tensor of a GGUF file."""
    info = next(i for i in read_gguf_tensor_infos(path)[1] if i.name == name)
    return (
        np.memmap(path, dtype=np.uint8, mode="r")[info.offset : info.offset + info.nbytes],
        info.qtype,
        info.shape,
    )


def test_gguf_q4_1_codes_are_used_exactly(smollm2_gguf):
    raw, qtype, shape = gguf_tensor(smollm2_gguf, "blk.0.ffn_up.weight")
    assert qtype == QT.Q4_1
    q, s, z = int4_from_gguf(raw, qtype, shape)
    assert q.max() == 15 and q.min() == 0
    w = torch.from_numpy(dequantize(raw, qtype, shape))
    # (q - 8) · d + (m + 8 d) is llama.cpp's d · q + m, bit for bit
    assert torch.equal((q.float().view(1536, 18, 32) - 8) * s[..., None] + z[..., None], w.view(1536, 18, 32))


@pytest.fixture(scope="module")
def smollm2():
    return {"fp32": lmforge.load_model(NAME), "int8": lmforge.load_model(NAME, quantize="int8"),
            "int4": lmforge.load_model(NAME, quantize="int4")}  # fmt: skip


def test_loaded_int4_runs_the_files_codes(smollm2, smollm2_gguf):
    fp32, int4 = smollm2["fp32"], smollm2["int4"]
    layer = int4.layers[0].ffn.gate_up_proj  # gate and up fused: up is the second half
    assert isinstance(layer, QuantLinear) and layer.mode == "int4"
    w = fp32.layers[0].ffn.up_proj.weight.detach()
    q, _, _ = int4_from_gguf(*gguf_tensor(smollm2_gguf, "blk.0.ffn_up.weight"))
    assert torch.equal(layer.codes()[w.shape[0] :], q)  # the file's own codes, not re-quantized ones
    # only the scale and zero are rounded (to bfloat16): ~2^-9 of a group's values
    deq = layer.dequantize()[w.shape[0] :]
    assert 0 < rel(deq, w) < 0.01
    assert rel(deq, w) < rel(QuantLinear.from_linear(w, "int4", 64).dequantize(), w)
    # the permuted q/k rows (llama.cpp's RoPE layout) are undone for the codes too
    wq = fp32.layers[3].attn.q_proj.weight.detach()
    assert rel(int4.layers[3].attn.qkv_proj.dequantize()[: wq.shape[0]], wq) < 0.01


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_smollm2_quantized_agrees_with_float32(smollm2, mode):
    fp32, model = smollm2["fp32"], smollm2[mode]
    assert model.embed.weight.dtype == torch.bfloat16 and isinstance(model.lm_head, QuantLinear)
    tok = fp32.tokenizer
    text = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was built for the 1889 World's Fair"
    ids = torch.tensor([tok.encode(text)])
    with torch.inference_mode():
        ref, out = fp32(ids)[0], model(ids)[0].float()
    agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree  # measured: 1.0 (int8), 1.0 (int4)
    # float32's greedy answer, read by the quantized model: at each position its top token is float32's.
    # (Not the quantized model's own greedy text: at the answer's first token "The" and "L" are 0.1 logit
    # apart, and bfloat16 kernels break that near-tie differently on different CPUs.)
    chat = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    )
    answer = generate_ids(fp32, torch.tensor([chat]), 8)
    assert "Paris" in tok.decode(answer.tolist())
    with torch.inference_mode():
        logits = model(torch.tensor([chat + answer.tolist()]))[0, len(chat) - 1 : -1]
    agree = (logits.argmax(-1) == answer).float().mean().item()
    assert agree >= 0.85, agree
    paris = next(i for i, t in enumerate(answer.tolist()) if "Paris" in tok.decode([t]))
    assert logits[paris].argmax().item() == answer[paris].item()


def test_head_can_stay_in_bfloat16(tmp_path):
    model = quantize_model(roundtrip(tiny("llama"), tmp_path), "int4", head=None)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert (
        isinstance(model.layers[2].ffn.down_proj, QuantLinear)
        and model.layers[2].ffn.down_proj.mode == "int4"
    )
    assert model.inv_freq.dtype == torch.float32  # RoPE frequencies keep their precision
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fused_projections_give_the_same_logits(mode, tmp_path):
    """q/k/v and gate/up fused into one matmul each: the same codes and scales, so the same outputs."""
    from lmforge.model.quantize import _cast_floats, _replace_linears, fuse_projections, quantize_model
    from tests.model.test_families import roundtrip, tiny

    torch.manual_seed(0)
    hf = tiny("llama")
    fused, unfused = roundtrip(hf, tmp_path / "a"), roundtrip(hf, tmp_path / "b")
    quantize_model(fused, mode, group_size=32, head=None)
    _replace_linears(unfused, mode, 32, torch.bfloat16)  # the same quantization, left unfused
    _cast_floats(unfused, torch.bfloat16)
    blk = fused.layers[0]
    assert blk.attn.q_proj is None and blk.attn.qkv_proj.out_features == 64 + 2 * 16
    assert blk.ffn.gate_proj is None and blk.ffn.gate_up_proj.out_features == 2 * 96
    assert unfused.layers[0].attn.qkv_proj is None
    ids = torch.randint(0, 211, (2, 9))
    with torch.no_grad():
        want, got = unfused(ids).float(), fused(ids).float()
    assert (got - want).abs().max() <= 1e-2 * want.abs().max(), mode
    assert fuse_projections(fused) is fused and fused.layers[0].attn.qkv_proj is blk.attn.qkv_proj
