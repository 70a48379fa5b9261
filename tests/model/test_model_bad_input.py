"""Broken model files fail with an error that names the file and the tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmforge
from lmforge.model.weights import load_gguf, load_hf_folder

transformers = pytest.importorskip("transformers")


@pytest.fixture
def folder(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    return tmp_path


def test_unknown_architecture(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "rwkv"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_type 'rwkv' is not supported; supported: llama"):
        load_hf_folder(folder)


def test_missing_and_misshapen_tensors(folder):
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors .*layers.0.ffn.up_proj.weight"):
        load_hf_folder(folder)
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(47, 32)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"'layers.0.ffn.up_proj.weight' has shape \(47, 32\), expected \(48, 32\)"
    ):
        load_hf_folder(folder)


def test_corrupt_safetensors_and_no_pickles(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_hf_folder(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickles are never loaded")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        load_hf_folder(folder)


def test_truncated_gguf(smollm2_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[:3_000_000])
    with pytest.raises(ValueError, match="cut.gguf"):
        load_gguf(cut)


def test_unknown_name_and_dtype():
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a known model"):
        lmforge.load_model("no-such-model")
    with pytest.raises(ValueError, match="unknown dtype"):
        lmforge.load_model("smollm2-135m-instruct", dtype="float8")
