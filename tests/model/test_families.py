"""Every family: a tiny random Hugging Face model, saved and loaded by lmforge, gives the same logits."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.model.weights import load_hf_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
              max_position_embeddings=128)  # fmt: skip


def tiny(kind: str, **overrides):
    """A tiny randomly initialised transformers model of the given family."""
    T = transformers
    if kind == "llama":
        cfg = T.LlamaConfig(**COMMON, num_key_value_heads=2, **overrides)
        return T.LlamaForCausalLM(cfg)
    if kind == "llama-bias-untied":
        cfg = T.LlamaConfig(
            **COMMON, num_key_value_heads=8, attention_bias=True, mlp_bias=True, tie_word_embeddings=False
        )
        return T.LlamaForCausalLM(cfg)
    if kind == "mistral":
        return T.MistralForCausalLM(T.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=5))
    if kind == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, num_key_value_heads=4, tie_word_embeddings=True))
    if kind == "mixtral":
        cfg = T.MixtralConfig(
            **COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        )
        return T.MixtralForCausalLM(cfg)
    if kind == "qwen2_moe":
        cfg = T.Qwen2MoeConfig(**{**COMMON, "intermediate_size": 40}, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                               moe_intermediate_size=24, shared_expert_intermediate_size=56)  # fmt: skip
        return T.Qwen2MoeForCausalLM(cfg)
    if kind == "gemma3":
        cfg = T.Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=6, query_pre_attn_scalar=12,
                                 layer_types=["sliding_attention", "sliding_attention", "full_attention"])  # fmt: skip
        return T.Gemma3ForCausalLM(cfg)
    if kind == "gemma2":  # logit soft-capping in attention and output (eager: SDPA cannot cap)
        cfg = T.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=6, attn_logit_softcapping=3.0,
                             final_logit_softcapping=5.0, query_pre_attn_scalar=16)  # fmt: skip
        cfg._attn_implementation = "eager"
        return T.Gemma2ForCausalLM(cfg)
    if kind == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=211, n_embd=64, n_layer=3, n_head=8, n_positions=128, bos_token_id=0, eos_token_id=0
        )
        return T.GPT2LMHeadModel(cfg)
    raise ValueError(kind)


def roundtrip(hf_model, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():  # random init leaves some tensors tiny; give every weight some size
        for p in hf_model.parameters():
            p.normal_(0, 0.2)
    hf_model.eval().save_pretrained(tmp_path)
    return load_hf_folder(tmp_path)


def inputs(b: int = 3, t: int = 17, vocab: int = 211, pad: bool = True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    if pad:
        mask[1, :5] = 0  # left padding
        mask[2, -4:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize(
    "kind",
    [
        "llama",
        "llama-bias-untied",
        "mistral",
        "qwen2",
        "mixtral",
        "qwen2_moe",
        "gemma3",
        "gemma2",
        "gpt2",
    ],
)
def test_logits_match_transformers(kind, tmp_path):
    hf = tiny(kind)
    ours = roundtrip(hf, tmp_path)
    ids, mask = inputs()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
        real = mask.bool()  # padded query rows are garbage in both; compare the real tokens
        assert (got - want)[real].abs().max().item() < 1e-4
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_scalings_match_transformers(rope, tmp_path):
    hf = tiny("llama", rope_parameters={"rope_theta": 10000.0, **rope})
    ours = roundtrip(hf, tmp_path)
    ids, _ = inputs(b=2, t=150, pad=False)  # longer than max_position_embeddings: dynamic NTK kicks in
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max().item() < 1e-4


def test_moe_aux_loss_matches_transformers(tmp_path):
    hf = tiny("mixtral")
    ours = roundtrip(hf, tmp_path)
    ids, _ = inputs(pad=False)
    with torch.no_grad():
        out = hf(input_ids=ids, output_router_logits=True)
        ours(ids)
    want = transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func(
        out.router_logits, hf.config.num_local_experts, hf.config.num_experts_per_tok
    )
    assert torch.allclose(ours.aux_loss(), want, atol=1e-5)


def test_sharded_checkpoint_with_index(tmp_path):
    hf = tiny("llama")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.eval().save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ours = load_hf_folder(tmp_path)
    ids, _ = inputs(pad=False)
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max().item() < 1e-4
