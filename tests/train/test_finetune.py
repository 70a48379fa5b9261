"""run_sft end to end on a tiny model with SmolLM2's real tokenizer and template: LoRA, full, QLoRA, resume."""

import json

import pytest
import torch

from lmforge.cli import main
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import FinetuneConfig, load_config
from lmforge.train.finetune import run_sft
from lmforge.train.lora import lora_layers


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


def tiny(vocab: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=vocab, ffn_dim=64,
                      family="llama", max_seq_len=256, tie_embeddings=True)  # fmt: skip
    return Transformer(cfg)


@pytest.fixture
def data(tmp_path):
    rows = [
        {"instruction": f"What is your name? ({i})", "input": "", "output": "I am {{name}}."}
        for i in range(24)
    ]
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def cfg_for(tmp_path, data, **kw) -> FinetuneConfig:
    base = dict(data=[str(data)], replace={"{{name}}": "Forge"}, val_fraction=0.25, max_steps=12, batch_size=4,
                lr=1e-2, warmup_steps=2, eval_every=6, log_every=3, out_dir=str(tmp_path / "run"), device="cpu")  # fmt: skip
    return FinetuneConfig(**{**base, **kw})


def test_lora_sft_lowers_the_held_out_loss_and_saves_a_peft_adapter(tmp_path, data, tok):
    model = tiny(tok.vocab_size)
    r = run_sft(cfg_for(tmp_path, data, lora_r=8, lora_alpha=16), progress=False, model=model, tokenizer=tok)
    assert r["train_examples"] == 18 and r["val_examples"] == 6
    assert r["val_loss"] < r["val_loss_before"] - 0.5
    assert 0 < r["trainable_params"] < r["total_params"] / 3
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert len(lora_layers(model)) == r["wrapped_modules"] == 2 * 7  # all-linear: q k v o gate up down
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == list(range(1, 13)) and "val_loss" in records[-1]


def test_resume_continues_from_the_checkpoint(tmp_path, data, tok):
    first = run_sft(cfg_for(tmp_path, data, max_steps=6, ckpt_every=3), False, tiny(tok.vocab_size), tok)
    assert first["step"] == 6
    more = run_sft(cfg_for(tmp_path, data, max_steps=8), False, tiny(tok.vocab_size), tok)
    assert more["step"] == 8  # two more steps, not eight
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))


def test_full_fine_tuning_trains_every_weight_and_exports_hf(tmp_path, data, tok):
    model = tiny(tok.vocab_size)
    r = run_sft(cfg_for(tmp_path, data, method="full"), False, model, tok)
    assert r["trainable_params"] == r["total_params"] and r["val_loss"] < r["val_loss_before"]
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_qlora_trains_adapters_on_an_nf4_base(tmp_path, data, tok):
    from lmforge.train.nf4 import NF4Linear

    model = tiny(tok.vocab_size)
    r = run_sft(cfg_for(tmp_path, data, method="qlora", max_steps=6), False, model, tok)
    assert any(isinstance(m, NF4Linear) for m in model.modules())
    assert r["val_loss"] < r["val_loss_before"]


def test_bad_inputs_are_named(tmp_path, data, tok):
    rows = [{"conversations": [{"from": "human", "value": "hi"}]}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(ValueError, match="no assistant turn"):
        run_sft(cfg_for(tmp_path, bad), False, tiny(tok.vocab_size), tok)
    with pytest.raises(ValueError, match="matches no Linear|match|q_projection"):
        run_sft(cfg_for(tmp_path, data, target_modules=["q_projection"]), False, tiny(tok.vocab_size), tok)
    with pytest.raises(ValueError, match="method must be one of"):
        FinetuneConfig(method="adapters")
    with pytest.raises(ValueError, match="unknown field"):
        load_config(None, {"lora_rank": 4}, FinetuneConfig)
    with pytest.raises(SystemExit, match="data file not found"):
        main(["lora", "--data", str(tmp_path / "missing.json"), "--model", "smollm2-135m-instruct",
              "--out-dir", str(tmp_path / "x")])  # fmt: skip


def test_merge_folds_an_adapter_into_an_hf_folder(tmp_path, data, tok, smollm2_gguf):
    """lmforge merge on the real SmolLM2: the merged folder's logits equal base + adapter's."""
    from lmforge import load_model
    from lmforge.train.lora import LoRAConfig, apply_lora, save_peft

    model = load_model(smollm2_gguf)
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data.normal_(std=0.02)
    save_peft(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "down_proj"]), tmp_path / "ad")
    main(["merge", str(tmp_path / "ad"), "--model", str(smollm2_gguf), "--out", str(tmp_path / "merged"),
          "--gguf", str(tmp_path / "merged.gguf")])  # fmt: skip
    merged = load_model(tmp_path / "merged")
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        assert torch.allclose(merged(ids), model(ids), atol=1e-3)
        assert (load_model(tmp_path / "merged.gguf")(ids) - model(ids)).abs().max() < 0.05  # f16 weights
