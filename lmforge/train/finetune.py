"""A fine-tuning run: full fine-tuning, LoRA or QLoRA of a real model on chat data, on the pretraining Trainer.

One function, ``run_sft(FinetuneConfig)``, used by ``lmforge sft | lora | qlora`` and the benchmarks:

    conversations (Alpaca / ShareGPT / OpenAI messages, placeholders filled)
      → tokenize_chat (the model's template, labels on assistant tokens) → train / held-out split
      → SFTLoader (packed rows) → Trainer (AdamW, warm-up + cosine, clipping, held-out loss, checkpoints
        with exact resume, metrics.jsonl, loss.png)
      → out_dir/adapter (PEFT folder, LoRA and QLoRA) and/or out_dir/model (HF safetensors, merged)

- full: every weight trains (the memory bill: weights + gradients + two Adam moments, 16 bytes per fp32
  parameter).
- lora: the base is frozen and each targeted Linear gets B·A (Hu et al. 2021); only A and B have
  gradients and optimizer state.
- qlora: as lora, with the frozen base Linears stored in NF4 with double quantization and computed in
  bf16 (Dettmers et al. 2023).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch

from lmforge.train.config import FinetuneConfig


def _read_split(cfg: FinetuneConfig, tokenizer):
    from lmforge.data.chat import read_conversations
    from lmforge.train.sft import mix, text_example, tokenize_all

    if not cfg.data:
        raise ValueError(
            "no training data: set data (chat files: Alpaca, ShareGPT or OpenAI messages JSON/JSONL)"
        )
    convs = [c for p in cfg.data for c in read_conversations(p, cfg.format, cfg.replace)]
    if cfg.val_data:
        val = [c for p in cfg.val_data for c in read_conversations(p, cfg.format, cfg.replace)]
    else:  # a fixed, seeded split
        order = list(range(len(convs)))
        random.Random(cfg.seed).shuffle(order)
        n_val = round(len(convs) * cfg.val_fraction)
        val = [convs[i] for i in order[:n_val]]
        convs = [convs[i] for i in order[n_val:]]
    train_ex = tokenize_all(tokenizer, convs, cfg.max_length)
    val_ex = tokenize_all(tokenizer, val, cfg.max_length) if val else []
    if cfg.mix_fraction > 0:
        if not cfg.mix_text:
            raise ValueError("mix_fraction > 0 needs mix_text (a file of pretraining text)")
        docs = [d.strip() for d in Path(cfg.mix_text).read_text(encoding="utf-8").split("\n\n") if d.strip()]
        train_ex = mix(
            train_ex, [text_example(tokenizer, d, cfg.max_length) for d in docs], cfg.mix_fraction, cfg.seed
        )
    return train_ex, val_ex


def lora_config(cfg: FinetuneConfig):
    """The run's LoRAConfig: target_modules ["all-linear"], a list of names, or one regex (PEFT's rules)."""
    from lmforge.train.lora import LoRAConfig

    targets: Any = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    elif len(targets) == 1 and any(c in targets[0] for c in "*[(|\\"):
        targets = targets[0]  # a regex over whole module names
    return LoRAConfig(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets, cfg.use_rslora)


def prepare_model(cfg: FinetuneConfig, model) -> list[str]:
    """Freeze / wrap / quantize the model for cfg.method in place; returns the LoRA-wrapped module names."""
    from lmforge.train.lora import apply_lora

    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    wrapped = apply_lora(model, lora_config(cfg))
    if cfg.method == "qlora":
        from lmforge.train.nf4 import quantize_model_nf4

        quantize_model_nf4(model, compute_dtype=torch.bfloat16)
    return wrapped


def run_sft(cfg: FinetuneConfig, progress: bool = True, model=None, tokenizer=None) -> dict[str, Any]:
    """Train, evaluate on the held-out split, save; returns the summary (also out_dir/summary.json).

    ``model`` / ``tokenizer``: already loaded ones (the model is changed in place: adapters, training)."""
    from lmforge import load_model, load_tokenizer
    from lmforge.train.config import TrainConfig
    from lmforge.train.lora import count_parameters, save_peft
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.pretrain import packed_batch, resolve_device
    from lmforge.train.schedules import make_schedule
    from lmforge.train.sft import SFTLoader
    from lmforge.train.trainer import Trainer

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) if model is not None else load_tokenizer(cfg.model)
    train_ex, val_ex = _read_split(cfg, tokenizer)  # bad data fails before the model loads
    model = model if model is not None else load_model(cfg.model)
    pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    seq_len = min(cfg.max_length, max(len(e) for e in train_ex))
    steps_per_epoch = max(
        1, math.ceil(sum(len(e) for e in train_ex) / (seq_len * cfg.batch_size * cfg.grad_accum))
    )
    max_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    wrapped = prepare_model(cfg, model)
    model = model.to(device)
    counts = count_parameters(model)
    train_loader = SFTLoader(train_ex, cfg.batch_size, seq_len, cfg.seed, cfg.pack, pad)
    val_loader = SFTLoader(val_ex, cfg.batch_size, seq_len, cfg.seed + 1, cfg.pack, pad) if val_ex else None
    eval_batches = math.ceil(sum(len(e) for e in val_ex) / (seq_len * cfg.batch_size)) if val_ex else 0
    tcfg = TrainConfig(
        seq_len=seq_len, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
        min_lr=cfg.lr * cfg.min_lr_ratio, weight_decay=cfg.weight_decay, warmup_steps=min(cfg.warmup_steps, max_steps),
        grad_clip=cfg.grad_clip, max_steps=max_steps, precision=cfg.precision, device=device.type,
        eval_every=cfg.eval_every, eval_batches=max(1, eval_batches), log_every=cfg.log_every,
        ckpt_every=cfg.ckpt_every, keep_last=cfg.keep_last, out_dir=cfg.out_dir, seed=cfg.seed,
    )  # fmt: skip
    opt = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    schedule = make_schedule(
        "cosine", max_lr=cfg.lr, min_lr=tcfg.min_lr, warmup=tcfg.warmup_steps, total=max_steps
    )
    trainer = Trainer(tcfg, model, [opt], schedule, train_loader, val_loader, tokenizer, packed_batch)
    before = trainer.evaluate() if val_loader else {}
    if cfg.resume and trainer.resume() and progress:
        print(f"resumed from step {trainer.step} ({cfg.out_dir})", flush=True)
    if progress:
        print(f"{cfg.method}: {counts.trainable / 1e6:.2f}M of {counts.total / 1e6:.1f}M parameters train; "
              f"{len(train_ex)} train / {len(val_ex)} held-out examples, {max_steps} steps of "
              f"{cfg.batch_size}×{seq_len} tokens", flush=True)  # fmt: skip
    summary = trainer.fit(progress=progress)
    out = Path(cfg.out_dir)
    result = {
        "method": cfg.method, "trainable_params": counts.trainable, "total_params": counts.total,
        "train_examples": len(train_ex), "val_examples": len(val_ex), "truncated": train_loader.truncated,
        "val_loss_before": before.get("val_loss"), **summary,
    }  # fmt: skip
    if cfg.method != "full":
        result["adapter"] = str(save_peft(model, lora_config(cfg), out / "adapter", cfg.model))
    if cfg.method == "full" or cfg.save_merged:
        from lmforge.model.export import save_hf
        from lmforge.train.lora import merged_copy

        result["model"] = str(save_hf(model if cfg.method == "full" else merged_copy(model), out / "model"))
    result["wrapped_modules"] = len(wrapped)
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return result
