"""Export: lmforge → Hugging Face folder → transformers gives the same logits; our checkpoints round-trip."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.model.export import load_checkpoint, save_checkpoint, save_hf
from lmforge.model.weights import load_gguf, load_hf_folder
from tests.model.test_families import inputs, roundtrip, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "kind",
    ["llama", "llama-bias-untied", "mistral", "qwen2", "mixtral", "qwen2_moe", "gemma2", "gemma3", "gpt2"],
)
def test_export_loads_in_transformers(kind, tmp_path):
    ours = roundtrip(tiny(kind), tmp_path / "in")
    save_hf(ours, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids, mask = inputs()
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)).abs().max().item() < 1e-4
    again = load_hf_folder(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_real_model_export_round_trip(smollm2_gguf, tmp_path):
    """SmolLM2 from GGUF → Hugging Face folder → transformers: same logits, and the tokenizer travels."""
    ours = load_gguf(smollm2_gguf)
    from lmforge.tokenizer import load_tokenizer

    ours.tokenizer = load_tokenizer(smollm2_gguf)
    save_hf(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([ours.tokenizer.encode("Exported models keep their weights.")])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf_tok("Hello 123 world", add_special_tokens=False).input_ids == ours.tokenizer.encode(
        "Hello 123 world"
    )
    # the chat template and EOS travel too (tokenizer_config.json): the same prompt in both libraries
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "Hi"}]
    assert auto.eos_token == ours.tokenizer.eos_token
    assert auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        ours.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    )
    assert load_tokenizer(tmp_path).chat_template == ours.tokenizer.chat_template


def test_checkpoint_round_trip(tmp_path):
    ours = roundtrip(tiny("mixtral"), tmp_path / "in")
    save_checkpoint(ours, tmp_path / "ckpt.safetensors", extra={"step": 7})
    again = load_checkpoint(tmp_path / "ckpt.safetensors")
    ids, _ = inputs(pad=False)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))
    assert again.config == ours.config
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_gguf_export_of_a_merged_lora_model(smollm2_gguf, tmp_path):
    """SmolLM2 + a LoRA update, merged → GGUF (f16): transformers' own GGUF reader gives the same logits as our
    loader, both match the adapter path up to f16 rounding, and the tokenizer and chat template travel."""
    from lmforge.model.export import save_gguf
    from lmforge.model.weights import load_gguf
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.lora import LoRAConfig, apply_lora, merged_copy

    model = load_gguf(smollm2_gguf)
    tok = load_tokenizer(smollm2_gguf)
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)  # a real update, so the merge matters
    path = save_gguf(merged_copy(model), tmp_path / "merged.gguf", tok)
    ids = torch.tensor([tok.encode("Exported adapters keep what they learned.")])
    ours = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="merged.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        adapter = model(ids)
        assert (hf.eval()(ids).logits - ours(ids)).abs().max().item() < 1e-4
        assert (ours(ids) - adapter).abs().max().item() < 0.05  # f16 weights
        assert (ours(ids).argmax(-1) == adapter.argmax(-1)).float().mean() > 0.9
    again = load_tokenizer(path)
    assert again.encode("Hello 123 world <|im_end|>") == tok.encode("Hello 123 world <|im_end|>")
    assert again.chat_template == tok.chat_template and again.eos_token == tok.eos_token
    with pytest.raises(ValueError, match="dtype"):
        save_gguf(ours, tmp_path / "x.gguf", tok, dtype="q4")
    assert not (tmp_path / "x.gguf").exists()
