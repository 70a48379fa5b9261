"""LoRA and rsLoRA: the layer's math, target selection, training touches only adapters, and Hugging Face
PEFT interop both ways (our adapter in PeftModel, PEFT's adapter in our model, merged exports)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.export import save_hf
from lmforge.model.families import config_from_hf
from lmforge.model.transformer import Transformer
from lmforge.model.weights import load_hf_folder
from lmforge.train.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_parameters,
    load_peft,
    lora_layers,
    lora_state_dict,
    merge_lora,
    merged_copy,
    remove_lora,
    save_peft,
    trainable_parameters,
    unmerge_lora,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny(tie: bool = True, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=128, ffn_dim=96, family="llama",
                      max_seq_len=64, tie_embeddings=tie)  # fmt: skip
    return Transformer(cfg).init_weights(0.2).eval()  # std 0.2: every weight matters in the logits


def ids(b: int = 2, t: int = 11, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def randomize_lora(model: nn.Module, seed: int = 2, std: float = 0.1) -> None:
    """Non-zero B (and a new A) so a wrong name, row order or scale shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * std)
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


# ------------------------------------------------------------------------------------ the layer


def test_lora_linear_zero_b_merge_unmerge():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), base(x))  # B = 0: exactly the base layer
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (12, 4)
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=√5) on (r, in): U(-1/√in, 1/√in), as nn.Linear and PEFT
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > bound / 2
    with torch.no_grad():
        layer.lora_B.normal_()
    unmerged = layer(x)
    expected = base(x) + (x @ layer.lora_A.T @ layer.lora_B.T) * 2.0
    assert torch.allclose(unmerged, expected, atol=1e-5)
    layer.merge()
    assert layer.merged and not torch.equal(layer.base.weight, w0)
    assert torch.allclose(layer(x), unmerged, atol=1e-5)  # merged: not added twice
    layer.merge()  # idempotent
    assert torch.allclose(layer(x), unmerged, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(layer.base.weight, w0, atol=1e-6)
    assert torch.allclose(layer(x), unmerged, atol=1e-5)


def test_lora_linear_dtypes_and_dropout():
    torch.manual_seed(0)
    base = nn.Linear(8, 8).to(torch.bfloat16)
    layer = LoRALinear(base, r=2, alpha=4, dropout=0.5)
    assert layer.base.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    layer.unmerge()
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()  # no dropout in eval: deterministic
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(2)
    assert not torch.equal(a, layer(x))  # dropout on the LoRA path in training


def test_scaling_lora_and_rslora():
    base = nn.Linear(4, 4)
    assert LoRALinear(base, r=8, alpha=16).scaling == 2.0  # alpha / r
    assert LoRALinear(nn.Linear(4, 4), r=16, alpha=16, use_rslora=True).scaling == 4.0  # alpha / √r
    assert LoRALinear(nn.Linear(4, 4), r=4, alpha=6, use_rslora=True).scaling == 3.0
    assert LoRAConfig(r=64, alpha=16).scaling == 0.25
    assert LoRAConfig(r=64, alpha=16, use_rslora=True).scaling == 2.0
    with pytest.raises(ValueError, match="bias"):
        LoRAConfig(bias="all")


# ------------------------------------------------------------------------------------ targets


def test_target_selection():
    m = tiny()
    names = apply_lora(m, LoRAConfig())  # default: q_proj, v_proj
    assert names == [
        "layers.0.attn.q_proj",
        "layers.0.attn.v_proj",
        "layers.1.attn.q_proj",
        "layers.1.attn.v_proj",
    ]
    assert all(isinstance(m.get_submodule(n), LoRALinear) for n in names)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    assert set(lora_state_dict(m)) == trainable
    count = count_parameters(m)
    assert (
        count.trainable == 2 * 8 * ((64 + 64) + (64 + 32)) == sum(p.numel() for p in trainable_parameters(m))
    )
    assert count.total == sum(p.numel() for p in m.parameters()) and "trainable%" in str(count)
    with pytest.raises(ValueError, match="already"):
        apply_lora(m, LoRAConfig())

    m = tiny()
    assert apply_lora(m, LoRAConfig(target_modules=["ffn.down_proj", "o_proj"])) == [
        "layers.0.attn.o_proj", "layers.0.ffn.down_proj", "layers.1.attn.o_proj", "layers.1.ffn.down_proj"
    ]  # fmt: skip
    m = tiny()
    assert apply_lora(m, LoRAConfig(target_modules=r"layers\.1\.attn\.[qk]_proj")) == [
        "layers.1.attn.q_proj", "layers.1.attn.k_proj"
    ]  # fmt: skip
    m = tiny(tie=False)
    names = apply_lora(m, LoRAConfig(target_modules="all-linear"))
    assert len(names) == 2 * 7 and "lm_head" not in names and isinstance(m.lm_head, nn.Linear)

    m = tiny()
    with pytest.raises(ValueError) as e:
        apply_lora(m, LoRAConfig(target_modules=["query"]))
    msg = str(e.value)
    assert "['query']" in msg and "layers.*.attn.q_proj" in msg and "layers.*.ffn.down_proj" in msg
    assert "layers.0" not in msg  # a pattern, not every name
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(m, LoRAConfig(target_modules=r"q_proj"))  # a regex must match the whole name
    assert not lora_layers(m) and all(p.requires_grad for p in m.parameters())  # a failure changes nothing


def test_training_changes_only_lora():
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    apply_lora(m, LoRAConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], dropout=0.1))
    m.train()
    opt = torch.optim.AdamW(trainable_parameters(m), lr=1e-2, weight_decay=0.0)
    x = ids(4, 16)
    losses = []
    for _ in range(4):
        logits = m(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 128), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = m.state_dict()
    for k, v in before.items():
        key = (
            k.replace("_proj.weight", "_proj.base.weight")
            if k.replace(".weight", "") in lora_layers(m)
            else k
        )
        assert torch.equal(after[key], v), k  # every base weight bit for bit
    for layer in lora_layers(m).values():
        assert layer.lora_B.abs().sum() > 0  # B moved off zero (and A after it)
    assert all(p.grad is None for n, p in m.named_parameters() if "lora_" not in n)


def test_merge_and_remove():
    m = tiny()
    apply_lora(m, LoRAConfig(r=4, target_modules="all-linear", use_rslora=True))
    randomize_lora(m)
    x = ids()
    # whole-model logits (|logits| ~ 5, a large delta): float32 rounding reaches ~6e-5
    with torch.no_grad():
        ref = m(x)
        merge_lora(m)
        assert torch.allclose(m(x), ref, atol=1e-4)
        unmerge_lora(m)
        assert torch.allclose(m(x), ref, atol=1e-4)
        plain = merged_copy(m)
        assert not lora_layers(plain) and lora_layers(m)  # the original keeps its adapters
        assert all(type(mod) is nn.Linear for n, mod in plain.named_modules() if n.endswith("_proj"))
        assert torch.allclose(plain(x), ref, atol=1e-4)
        base = remove_lora(m, merge=False)
        assert not lora_layers(base) and torch.allclose(
            base(x), tiny()(x), atol=1e-4
        )  # merged once, unmerged
        fresh = tiny()
        fresh_w = {k: v for k, v in fresh.state_dict().items()}
        assert all(torch.allclose(v, fresh_w[k], atol=1e-6) for k, v in base.state_dict().items())
        m2 = tiny()
        apply_lora(m2, LoRAConfig(target_modules="all-linear"))
        randomize_lora(m2)
        assert all(torch.equal(v, fresh_w[k]) for k, v in remove_lora(m2, merge=False).state_dict().items())


# ------------------------------------------------------------------------------------ PEFT interop

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize(
    "target, rslora",
    [(["q_proj", "k_proj", "v_proj"], False), ("all-linear", True), (r"layers\.0\.attn\.[qk]_proj", False)],
)
def test_our_adapter_loads_in_peft(tmp_path, target, rslora):
    m = tiny()
    save_hf(m, tmp_path / "base")
    cfg = LoRAConfig(r=4, alpha=8, target_modules=target, use_rslora=rslora)
    wrapped = apply_lora(m, cfg)
    randomize_lora(m)
    save_peft(m, cfg, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4 and meta["lora_alpha"] == 8
    assert meta["use_rslora"] is rslora and meta["base_model_name_or_path"] == str(tmp_path / "base")
    if target == "all-linear":
        assert meta["target_modules"] == [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj",
        ]
    elif isinstance(target, list):
        assert meta["target_modules"] == ["k_proj", "q_proj", "v_proj"]
    else:  # one layer only: a regex of the Hugging Face names
        assert isinstance(meta["target_modules"], str)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys and len(keys) == 2 * len(
        wrapped
    )

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert len([n for n, _ in peft_model.named_modules() if n.endswith("lora_A.default")]) == len(wrapped)
    x = ids()
    with torch.no_grad():
        ours = m(x)
    assert (hf_logits(peft_model, x) - ours).abs().max().item() < 1e-4
    with peft_model.disable_adapter():  # the adapter matters
        assert (hf_logits(peft_model, x) - ours).abs().max().item() > 1e-2

    # merged: a plain model in a Hugging Face folder gives the adapter's logits in transformers alone
    save_hf(remove_lora(m), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged", dtype=torch.float32
    ).eval()
    assert (hf_logits(merged, x) - hf_logits(peft_model, x)).abs().max().item() < 1e-4


def test_peft_adapter_loads_in_ours(tmp_path):
    save_hf(tiny(tie=False), tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    torch.manual_seed(3)
    lcfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
                           use_rslora=True, lora_dropout=0.05, task_type="CAUSAL_LM")  # fmt: skip
    peft_model = peft.get_peft_model(hf, lcfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.eval().save_pretrained(tmp_path / "adapter")

    ours = load_hf_folder(tmp_path / "base")
    cfg = load_peft(ours, tmp_path / "adapter")
    assert cfg.r == 4 and cfg.alpha == 12 and cfg.use_rslora and cfg.dropout == 0.05
    assert len(lora_layers(ours)) == 2 * 4 and lora_layers(ours)["layers.1.attn.k_proj"].scaling == 6.0
    ours.eval()
    x = ids()
    with torch.no_grad():
        assert (ours(x) - hf_logits(peft_model, x)).abs().max().item() < 1e-4

    # and back: our save of what we loaded is PEFT's file again
    save_peft(ours, cfg, tmp_path / "again")
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "again" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    save_hf(remove_lora(ours), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged", dtype=torch.float32
    ).eval()
    assert (hf_logits(merged, x) - hf_logits(peft_model, x)).abs().max().item() < 1e-4


def test_gpt2_adapter_conv1d(tmp_path):
    """GPT-2's Conv1D (in, out) layers: A and B keep their shapes, fan_in_fan_out says how PEFT merges."""
    cfg = config_from_hf(
        {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32}
    )
    torch.manual_seed(0)
    m = Transformer(cfg).init_weights(0.2).eval()
    save_hf(m, tmp_path / "base")
    with pytest.raises(ValueError, match="q_proj"):  # Hugging Face fuses q, k, v into c_attn
        c = LoRAConfig(target_modules=["q_proj"])
        apply_lora(m, c)
        save_peft(m, c, tmp_path / "bad")
    remove_lora(m, merge=False)
    c = LoRAConfig(r=4, target_modules=["o_proj", "up_proj", "down_proj"])
    apply_lora(m, c)
    randomize_lora(m)
    save_peft(m, c, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["target_modules"] == ["c_fc", "c_proj"] and meta["fan_in_fan_out"] is True
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = ids()
    with torch.no_grad():
        assert (hf_logits(peft_model, x) - m(x)).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------ bad folders


def test_bad_adapter_folders(tmp_path):
    m = tiny()
    cfg = LoRAConfig(r=4)
    apply_lora(m, cfg)
    good = save_peft(m, cfg, tmp_path / "good")
    meta = json.loads((good / "adapter_config.json").read_text())

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft(tiny(), tmp_path / "nowhere")

    def folder(name: str, **changes) -> str:
        path = tmp_path / name
        path.mkdir()
        (path / "adapter_config.json").write_text(json.dumps({**meta, **changes}))
        (path / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
        return path

    with pytest.raises(ValueError, match=r"adapter_config.json.*peft_type"):
        load_peft(tiny(), folder("ia3", peft_type="IA3"))
    with pytest.raises(ValueError, match=r"adapter_config.json.*'r'"):
        load_peft(tiny(), folder("no_r", r=None))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors.*shape \(4, 64\).*\(16, 64\)"):
        load_peft(tiny(), folder("shape", r=16))
    with pytest.raises(ValueError, match=r"adapter_config.json.*matches no module"):
        load_peft(tiny(), folder("target", target_modules=["query_key_value"]))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors.*v_proj.*matches no LoRA module"):
        load_peft(tiny(), folder("fewer", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="use_dora"):
        load_peft(tiny(), folder("dora", use_dora=True))
    path = folder("noweights")
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_peft(tiny(), path)
    (path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_peft(tiny(), path)
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_peft(tiny(), tmp_path / "json")
