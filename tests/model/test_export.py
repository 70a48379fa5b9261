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


def test_gguf_export_of_a_gemma3_model(gemma_gguf, tmp_path):
    """Gemma 3 → GGUF (f16): transformers' GGUF reader and our loader give the same logits, which match the
    model written up to f16 rounding; norms go out as 1 + w and come back as w; the SentencePiece tokenizer
    (pieces, scores, types, no dummy prefix) and the chat template travel. A small Gemma 3 with random
    weights everywhere (norms too, so the offset matters) and the real tokenizer, 6 layers so that both
    local and global attention are in it. head_dim stays 256: transformers' reader leaves Gemma 3's
    query_pre_attn_scalar at its default of 256, where llama.cpp (and we) scale by 1/√head_dim."""
    import dataclasses

    from lmforge.model.export import save_gguf
    from lmforge.model.families import config_from_gguf
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import load_tokenizer
    from lmforge.tokenizer.gguf_metadata import read_gguf_metadata

    tok = load_tokenizer(gemma_gguf)
    real = config_from_gguf(read_gguf_metadata(gemma_gguf), str(gemma_gguf))
    cfg = dataclasses.replace(real, dim=64, n_layers=6, n_heads=2, n_kv_heads=1, head_dim=256, ffn_dim=96,
                              sliding_window=4, max_seq_len=64, embed_scale=64**0.5,
                              layer_types=["full" if (i + 1) % 6 == 0 else "sliding" for i in range(6)])  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg).init_weights().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    path = save_gguf(model, tmp_path / "gemma.gguf", tok)
    ids = torch.tensor([tok.encode("Gemma's local layers see four tokens, its global one sees all.")])
    ours = load_gguf(path)
    assert ours.config == cfg
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="gemma.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        assert (hf.eval()(ids).logits - ours(ids)).abs().max().item() < 1e-4
        assert (ours(ids) - model(ids)).abs().max().item() < 0.05  # f16 weights
    again = load_tokenizer(path)
    text = "Hello  world\n<start_of_turn>user\nÀ bientôt 123<end_of_turn>"
    assert again.encode(text) == tok.encode(text) and again.decode(again.encode(text)) == tok.decode(
        tok.encode(text)
    )
    assert again.chat_template == tok.chat_template and again.eos_token == tok.eos_token
    odd = Transformer(dataclasses.replace(cfg, layer_types=["full"] * 6)).init_weights()
    with pytest.raises(ValueError, match="layer_types"):  # GGUF has no key for it: it would load as 5:1
        save_gguf(odd, tmp_path / "odd.gguf", tok)
    assert not (tmp_path / "odd.gguf").exists()
