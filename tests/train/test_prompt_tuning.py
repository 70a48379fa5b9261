"""Prompt tuning, P-tuning, prefix tuning, P-tuning v2: equal to a real prefix, trainable, saved."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.infer.kv_cache import KVCache
from lmforge.model.config import ModelConfig
from lmforge.model.presets import preset
from lmforge.model.transformer import Transformer
from lmforge.train.losses import cross_entropy
from lmforge.train.prompt_tuning import (
    PrefixCache,
    PrefixKV,
    PrefixTuned,
    PromptTuned,
    SoftPrompt,
    load_prompt,
    p_tuning,
    p_tuning_v2,
    prefix_from_tokens,
    prefix_tuning,
    prompt_tuning,
    save_prompt,
    token_embeddings,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the PEFT comparison builds its models from configs
V = 128
CONFIGS = {
    "llama": ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=V, ffn_dim=128, family="llama"),
    # Gemma 3's choices: √D embedding scale, sandwich norms, QK-norm, a sliding window (6) shorter than
    # prefix + input, local layers with their own RoPE base
    "gemma3": ModelConfig(
        family="gemma3_text", vocab_size=V, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
        ffn_dim=128, norm_eps=1e-6, norm_offset=1.0, norm_position="sandwich", qk_norm=True,
        activation="gelu_tanh", sliding_window=6, rope_theta=1e6, rope_local_theta=1e4,
        layer_types=["sliding", "sliding", "full"], embed_scale=64**0.5,
    ),
    # learned absolute positions
    "gpt2": preset("gpt2", vocab_size=V, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64),
}  # fmt: skip


def make(kind: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIGS[kind]).init_weights(std=0.1).eval()


def batch(b: int = 2, t: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


N = 5  # virtual tokens / prefix length


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_soft_prompt_of_real_embeddings_equals_the_real_prefix(kind):
    model = make(kind)
    p, x = torch.randint(0, V, (N,)), batch()
    tuned = PromptTuned(model, SoftPrompt(token_embeddings(model, p)))
    full = torch.cat([p.expand(2, N), x], dim=1)
    torch.testing.assert_close(tuned(x), model(full)[:, N:], atol=1e-5, rtol=0)
    # padding: the mask covers the real tokens; the virtual ones are always visible
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    ref = model(full, attention_mask=torch.cat([torch.ones(2, N, dtype=torch.long), mask], dim=1))[:, N:]
    torch.testing.assert_close(tuned(x, attention_mask=mask), ref, atol=1e-5, rtol=0)
    assert tuned(x, logits_to_keep=1).shape == (2, 1, V)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_prefix_of_real_keys_and_values_equals_the_real_prefix(kind):
    model = make(kind)
    p, x = torch.randint(0, V, (N,)), batch()
    prefix = prefix_from_tokens(model, p)
    cfg = model.config
    assert prefix.shape == (cfg.n_layers, 2, cfg.n_kv_heads, N, cfg.head_dim)
    tuned = PrefixTuned(model, PrefixKV(prefix))
    full = torch.cat([p.expand(2, N), x], dim=1)
    torch.testing.assert_close(tuned(x), model(full)[:, N:], atol=1e-5, rtol=0)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, -2:] = 0
    ref = model(full, attention_mask=torch.cat([torch.ones(2, N, dtype=torch.long), mask], dim=1))[:, N:]
    torch.testing.assert_close(tuned(x, attention_mask=mask), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_decoding_with_a_kv_cache(kind):
    """Prefill 4 tokens, then one at a time: the same logits as one pass over everything."""
    model, x = make(kind), batch(t=8)
    for tuned, slots in [
        (prompt_tuning(model, N), N + 8),  # the cache holds the virtual tokens too
        (p_tuning_v2(model, N), 8),  # the PrefixCache adds the prefix; the cache holds the real tokens
    ]:
        whole = tuned(x)
        cache = KVCache(model.config, 2, slots, torch.float32)
        steps = [tuned(x[:, :4], cache=cache)] + [tuned(x[:, i : i + 1], cache=cache) for i in range(4, 8)]
        torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=0)


def test_prefix_cache_serves_one_pass_alone():
    model = make("llama")
    pc = PrefixCache(prefix_from_tokens(model, torch.arange(N)))
    model(batch(), cache=pc)
    assert pc.length == N + 9
    with pytest.raises(ValueError, match="one forward pass"):
        model(batch(), cache=pc)


def trainable(tuned) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in tuned.named_parameters() if p.requires_grad}


D, KV, L, H = 64, 2 * 16, 2, 32  # the llama config: dim, H_kv · head_dim, layers; encoder width


@pytest.mark.parametrize(
    "method, count",
    [
        ("prompt_tuning", N * D),  # 320: the embeddings
        ("p_tuning_mlp", N * D + (D * H + H) + (H * H + H) + (H * D + D)),  # 320 + 2080 + 1056 + 2112
        ("p_tuning_lstm", None),  # counted below from the LSTM's own parameters
        ("prefix_tuning", N * KV + (KV * H + H) + (H * L * 2 * KV + L * 2 * KV)),  # 160 + 1056 + 4224
        ("p_tuning_v2", L * 2 * N * KV),  # 640: keys and values of 5 slots in 2 layers
    ],
)
def test_only_the_prompt_trains_and_the_loss_goes_down(method, count):
    model = make("llama")
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    tuned = {
        "prompt_tuning": lambda: prompt_tuning(model, N, init_ids=[3, 4, 5]),
        "p_tuning_mlp": lambda: p_tuning(model, N, hidden=H),
        "p_tuning_lstm": lambda: p_tuning(model, N, hidden=H, encoder="lstm"),
        "prefix_tuning": lambda: prefix_tuning(model, N, hidden=H),
        "p_tuning_v2": lambda: p_tuning_v2(model, N),
    }[method]()
    params = trainable(tuned)
    assert all(n.startswith(("prompt.", "prefix.")) for n in params)
    if count is None:  # LSTM(D→H, 2 layers, both directions) + MLP(2H → 2H → D)
        lstm = 2 * 4 * H * (D + H + 2) + 2 * 4 * H * (2 * H + H + 2)
        count = N * D + lstm + (2 * H * 2 * H + 2 * H) + (2 * H * D + D)
    assert sum(p.numel() for p in params.values()) == count
    x = batch(4, 12, seed=2)
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = cross_entropy(tuned(x[:, :-1]), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    for n, p in model.named_parameters():  # the model is untouched and got no gradients
        assert p.grad is None and torch.equal(p, frozen[n])


def test_prompt_init_from_text_repeats_it():
    model = make("llama")
    tuned = prompt_tuning(model, 5, init_ids=[7, 8])
    assert torch.equal(tuned.prompt.embedding, model.embed.weight[[7, 8, 7, 8, 7]])
    gemma = make("gemma3")  # Gemma's embeddings carry the √D scale, as Hugging Face's inputs_embeds do
    assert torch.equal(
        prompt_tuning(gemma, 2, init_ids=[7, 8]).prompt.embedding, gemma.embed.weight[[7, 8]] * 8.0
    )


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"])
def test_save_and_load(method, tmp_path):
    model = make("gemma3")
    make_tuned = {"prompt_tuning": prompt_tuning, "p_tuning": p_tuning, "prefix_tuning": prefix_tuning,
                  "p_tuning_v2": p_tuning_v2}[method]  # fmt: skip
    tuned = make_tuned(model, N)
    x = batch()
    path = save_prompt(tuned, tmp_path / "prompt.safetensors")
    assert [f.name for f in tmp_path.iterdir()] == ["prompt.safetensors"]  # no temporary left behind
    loaded = load_prompt(model, path)
    assert loaded.method == method
    # P-tuning and prefix tuning are saved as their encoder's output: raw embeddings / prefixes
    assert isinstance(
        loaded.prompt if isinstance(loaded, PromptTuned) else loaded.prefix, (SoftPrompt, PrefixKV)
    )
    torch.testing.assert_close(loaded(x), tuned(x), atol=1e-6, rtol=0)


def test_load_errors(tmp_path):
    model = make("llama")
    path = save_prompt(p_tuning_v2(model, N), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_prompt(make("gemma3"), path)  # 3 layers, not 2
    with pytest.raises(FileNotFoundError):
        load_prompt(model, tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a saved prompt"):
        load_prompt(model, tmp_path / "other.safetensors")


def hf_pair(kind: str, folder):
    """A tiny random transformers model and the same weights loaded by lmforge."""
    transformers = pytest.importorskip("transformers")
    from lmforge.model.weights import load_hf_folder

    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    if kind == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:  # a sliding window of 6, shorter than prefix + input
        layers = ["sliding_attention", "sliding_attention", "full_attention"]
        cfg = transformers.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=6, query_pre_attn_scalar=12, layer_types=layers
        )
        hf = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.eval().save_pretrained(folder)
    return hf, load_hf_folder(folder).eval()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_equals_hugging_face_peft(kind, method, tmp_path):
    """The same learned numbers in PEFT and here give the same logits: the embedding space (Gemma's
    scaled embeddings), the positions of virtual tokens and prefixes, the prefix layout."""
    peft = pytest.importorskip("peft")
    hf, ours = hf_pair(kind, tmp_path)
    config = {
        "prompt_tuning": peft.PromptTuningConfig,
        "p_tuning": lambda **kw: peft.PromptEncoderConfig(**kw, encoder_hidden_size=32),
        "prefix_tuning": peft.PrefixTuningConfig,  # prefix_projection=False: P-tuning v2's raw prefixes
    }[method](task_type="CAUSAL_LM", num_virtual_tokens=N)
    model = peft.get_peft_model(hf, config).eval()
    enc = model.prompt_encoder.default
    x = batch()
    if method == "prompt_tuning":
        tuned = PromptTuned(ours, SoftPrompt(enc.embedding.weight))
    elif method == "p_tuning":
        tuned = p_tuning(ours, N, hidden=32)
        state = {
            k.replace("embedding.weight", "inputs").replace("mlp_head", "mlp"): v
            for k, v in enc.state_dict().items()
        }
        tuned.prompt.load_state_dict(state)
    else:
        cfg = ours.config  # PEFT's (n, L · 2 · H_kv · hd) rows: per virtual token, (layer, k/v, head, dim)
        kv = enc.embedding.weight.view(N, cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim).permute(
            1, 2, 3, 0, 4
        )
        tuned = PrefixTuned(ours, PrefixKV(kv))
    with torch.no_grad():
        ref = model(input_ids=x).logits
        ref = ref[:, N:] if ref.shape[1] == N + x.shape[1] else ref  # soft prompts: PEFT keeps their logits
        torch.testing.assert_close(tuned(x), ref, atol=1e-5, rtol=0)
