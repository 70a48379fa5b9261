"""The preference, RL and distillation commands: ``lmforge reward | dpo | ppo | grpo | distill``.

Each reads an AlignConfig (YAML/JSON file and/or flags, as pretraining and SFT do), makes a fixed seeded
held-out split, trains with the loop of its own module, and writes to out_dir:

- metrics.jsonl (one line per step: the loop's log) and curves.png (the logged quantities by step);
- summary.json (the held-out numbers before and after);
- the result: reward → reward_model/ (head.safetensors + reward_config.json, + the LoRA adapter);
  dpo, ppo, grpo → adapter/ (PEFT folder) for LoRA or model/ (HF folder) for full fine-tuning;
  distill → model/ (the student, HF folder).

  reward   Bradley–Terry reward model (lmforge.train.reward): --method head fits only the scalar head on
           frozen features (minutes on a CPU); lora / full train the backbone too.
  dpo      DPO on preference pairs (lmforge.train.dpo); the reference is the base with adapters off
           (lora) or a frozen second copy (full).
  ppo      PPO-RLHF (lmforge.train.ppo) on the prompts of --data, scored by --reward-model.
  grpo     GRPO with a verifiable reward (lmforge.train.grpo, lmforge.train.verifiable).
  distill  the student --model learns --teacher's soft targets on chat data (lmforge.train.distill).

These loops are short (minutes to an hour on a CPU) and do not checkpoint mid-run; sft/lora/qlora run
on the pretraining Trainer, which does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.fileio import atomic_write_text, read_json
from lmforge.infer.generate import end_ids, prompt_ids
from lmforge.train.config import AlignConfig


def split(items: Sequence, heldout: int, seed: int, limit: int = 0) -> tuple[list, list]:
    """(train, held-out): shuffle with ``seed``, hold out the first ``heldout``, train on the rest (at most
    ``limit`` of them; 0: all). The held-out set depends only on the seed and its size, so runs with
    different amounts of training data (a reward model, then DPO) are scored on the same rows."""
    items = list(items)
    random.Random(seed).shuffle(items)
    if heldout >= len(items):
        raise ValueError(f"heldout={heldout} leaves no training data out of {len(items)} rows")
    train = items[heldout:]
    return (train[:limit] if limit else train), items[:heldout]


def _every(cfg: AlignConfig, steps: int) -> int:
    return cfg.eval_every or max(1, steps // 5)


def _ckpt(cfg: AlignConfig):
    """out_dir/checkpoints every ckpt_every steps; with resume, a rerun of the command continues there."""
    from lmforge.train.checkpoint import LoopCheckpoints

    return LoopCheckpoints(Path(cfg.out_dir) / "checkpoints", cfg.ckpt_every, cfg.resume)


def _pad(tokenizer) -> int:
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def _load(cfg: AlignConfig, name: str | None = None):
    from lmforge import load_model, load_tokenizer

    name = name or cfg.model
    torch.manual_seed(cfg.seed)
    return load_model(name), load_tokenizer(name)


def _trainable(cfg: AlignConfig, model) -> None:
    """LoRA adapters on the targets (base frozen), or every weight."""
    from lmforge.train.finetune import lora_config
    from lmforge.train.lora import apply_lora

    if cfg.method == "lora":
        apply_lora(model, lora_config(cfg))
    elif cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"method {cfg.method!r} trains nothing here: use lora or full")


def _save_policy(cfg: AlignConfig, model, out: Path) -> dict[str, str]:
    from lmforge.model.export import save_hf
    from lmforge.train.finetune import lora_config
    from lmforge.train.lora import save_peft

    if cfg.method == "lora":
        return {"adapter": str(save_peft(model, lora_config(cfg), out / "adapter", cfg.model))}
    return {"model": str(save_hf(model, out / "model"))}


def write_log(out: Path, log: Sequence[dict[str, float]], keys: Sequence[str], title: str) -> None:
    """metrics.jsonl, and curves.png: one panel per logged key (the steps where it was logged)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    keys = [k for k in keys if any(k in r for r in log)]
    if not keys:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in log if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = out / "curves.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out / "curves.png")


def _finish(cfg: AlignConfig, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    summary = {"command_config": cfg.to_dict(), **summary}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _pairs(cfg: AlignConfig, tokenizer):
    from lmforge.data.chat import read_preferences
    from lmforge.train.pairs import tokenize_pairs

    if not cfg.data:
        raise ValueError("no data: set data (preference files: HH-RLHF, chosen/rejected JSON/JSONL)")
    pairs = [p for path in cfg.data for p in read_preferences(path, on_bad="skip")]
    train, held = split(pairs, cfg.heldout, cfg.seed, cfg.limit)
    return tokenize_pairs(tokenizer, train, cfg.max_length), tokenize_pairs(tokenizer, held, cfg.max_length)


# --- reward -------------------------------------------------------------------------------------------


def run_reward(cfg: AlignConfig, progress: bool = True) -> dict[str, Any]:
    from lmforge.train.reward import RewardModel, fit_reward_head, reward_metrics, train_reward_model

    backbone, tok = _load(cfg)
    train, held = _pairs(cfg, tok)
    rm = RewardModel(backbone)
    out = Path(cfg.out_dir)
    if cfg.method == "head":
        for p in backbone.parameters():
            p.requires_grad_(False)
        log = [{"step": 1, **fit_reward_head(rm, train, cfg.l2, progress=progress)}]
    else:
        _trainable(cfg, backbone)
        log = train_reward_model(rm, train, _pad(tok), held, cfg.epochs, cfg.batch_size, cfg.lr,
                                 seed=cfg.seed, progress=progress, ckpt=_ckpt(cfg))  # fmt: skip
    after = reward_metrics(rm, held, _pad(tok)) if held else {}
    saved = _save_policy(cfg, backbone, out / "reward_model") if cfg.method != "head" else {}
    saved = {k: str(Path(v).resolve()) for k, v in saved.items()}  # the folder may be read from elsewhere
    folder = save_reward_model(rm, out / "reward_model", saved.get("model", cfg.model), saved.get("adapter"))
    write_log(out, log, ["loss", "accuracy", "val_accuracy"], "reward model")
    return _finish(cfg, out, {"train_pairs": len(train), "heldout_pairs": len(held),
                              **{f"heldout_{k}": v for k, v in after.items()}, "reward_model": str(folder)})  # fmt: skip


def save_reward_model(rm, folder: str | Path, model: str, adapter: str | None = None) -> Path:
    """folder/head.safetensors (the scalar head and offset) + reward_config.json (the backbone to load: a
    model name or folder, and a PEFT adapter folder or None), which ``load_reward_model`` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head = {"score_head.weight": rm.score_head.weight.detach().float().contiguous(),
            "score_head.bias": rm.score_head.bias.detach().float().contiguous(),
            "offset": rm.offset.detach().float().reshape(1)}  # fmt: skip
    save_file(head, str(folder / "head.tmp.safetensors"))
    (folder / "head.tmp.safetensors").replace(folder / "head.safetensors")
    atomic_write_text(folder / "reward_config.json", json.dumps({"model": model, "adapter": adapter}))
    return folder


def load_reward_model(folder: str | Path):
    """(RewardModel, tokenizer) from an ``lmforge reward`` output folder (out_dir/reward_model)."""
    from safetensors.torch import load_file

    from lmforge import load_model, load_tokenizer
    from lmforge.train.lora import load_peft
    from lmforge.train.reward import RewardModel

    folder = Path(folder)
    if not (folder / "reward_config.json").exists():
        raise FileNotFoundError(f"{folder}: not a reward model folder (no reward_config.json); "
                                f"make one with `lmforge reward --out-dir DIR` (DIR/reward_model)")  # fmt: skip
    meta = read_json(folder / "reward_config.json")
    backbone = load_model(meta["model"])
    if meta.get("adapter"):
        load_peft(backbone, meta["adapter"])
    rm = RewardModel(backbone)
    head = load_file(str(folder / "head.safetensors"))
    with torch.no_grad():
        rm.score_head.weight.copy_(head["score_head.weight"])
        rm.score_head.bias.copy_(head["score_head.bias"])
        rm.offset.fill_(float(head["offset"][0]))
    return rm.eval(), load_tokenizer(meta["model"])


# --- dpo ----------------------------------------------------------------------------------------------


def run_dpo(cfg: AlignConfig, progress: bool = True) -> dict[str, Any]:
    from lmforge.train.dpo import train_dpo

    model, tok = _load(cfg)
    train, held = _pairs(cfg, tok)
    ref = None
    if cfg.method == "full":  # a frozen copy; with LoRA the base with adapters off is the reference
        ref, _ = _load(cfg)
        ref.eval().requires_grad_(False)
    _trainable(cfg, model)
    every = _every(cfg, round(cfg.epochs * len(train) / cfg.batch_size)) if held else 0
    log = train_dpo(model, train, _pad(tok), held, ref, cfg.beta, cfg.loss, cfg.label_smoothing, cfg.epochs,
                    cfg.batch_size, cfg.lr, eval_every=every, seed=cfg.seed, progress=progress,
                    ckpt=_ckpt(cfg))  # fmt: skip
    out = Path(cfg.out_dir)
    saved = _save_policy(cfg, model, out)
    write_log(out, log, ["loss", "val_accuracy", "val_margin", "val_logp_gap"], "DPO")
    held_stats = [r for r in log if "val_accuracy" in r]
    before = {k[4:]: v for k, v in held_stats[0].items() if k.startswith("val_")} if held_stats else {}
    after = {k[4:]: v for k, v in held_stats[-1].items() if k.startswith("val_")} if held_stats else {}
    return _finish(cfg, out, {"train_pairs": len(train), "heldout_pairs": len(held), "heldout_before": before,
                              "heldout_after": after, **saved})  # fmt: skip


# --- grpo / ppo ---------------------------------------------------------------------------------------


def _chat_prompt(tok, text: str) -> list[int]:
    return prompt_ids(tok, [{"role": "user", "content": text}])


def greedy_accuracy(model, tok, problems, prompts: Sequence[list[int]], max_new_tokens: int) -> float:
    """Share of problems whose greedy completion starts with the right integer."""
    from lmforge.infer.generate import batch_generate_ids
    from lmforge.infer.sampling import SamplingParams
    from lmforge.train.verifiable import exact_answer

    was = model.training
    model.eval()
    outs = batch_generate_ids(model, list(prompts), max_new_tokens, SamplingParams(temperature=0.0),
                              end_ids(tok), _pad(tok))  # fmt: skip
    model.train(was)
    return sum(exact_answer(tok.decode(o), p.answer) for p, o in zip(problems, outs)) / len(problems)


def run_grpo(cfg: AlignConfig, progress: bool = True) -> dict[str, Any]:
    from lmforge.train.grpo import train_grpo
    from lmforge.train.verifiable import TASKS, exact_answer

    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    model, tok = _load(cfg)
    train, held = split(TASKS[cfg.task]((cfg.limit or 1000) + cfg.heldout, cfg.seed), cfg.heldout, cfg.seed)
    train_p = [_chat_prompt(tok, p.question) for p in train]
    held_p = [_chat_prompt(tok, p.question) for p in held]
    _trainable(cfg, model)

    def reward(i: int, completion: list[int]) -> float:
        return exact_answer(tok.decode(completion), train[i].answer)

    def evaluate() -> float:
        return greedy_accuracy(model, tok, held, held_p, cfg.max_new_tokens)

    log = train_grpo(model, train_p, reward, cfg.steps, cfg.group_size, cfg.prompts_per_step, cfg.max_new_tokens,
                     end_ids(tok), _pad(tok), cfg.temperature, cfg.lr, cfg.beta if cfg.method == "lora" else 0.0,
                     evaluate=evaluate if held else None, eval_every=_every(cfg, cfg.steps), seed=cfg.seed,
                     progress=progress, ckpt=_ckpt(cfg))  # fmt: skip
    out = Path(cfg.out_dir)
    saved = _save_policy(cfg, model, out)
    write_log(out, log, ["reward", "eval", "groups_with_signal", "kl"], f"GRPO on {cfg.task}")
    evals = [r["eval"] for r in log if "eval" in r]
    return _finish(cfg, out, {"task": cfg.task, "heldout": len(held),
                              "heldout_accuracy_before": evals[0] if evals else None,
                              "heldout_accuracy_after": evals[-1] if evals else None, **saved})  # fmt: skip


def _user_prompts(cfg: AlignConfig, tok) -> list[list[int]]:
    """Prompts (the conversation up to the last user turn) from preference or chat data files."""
    from lmforge.data.chat import read_conversations, read_preferences

    if not cfg.data:
        raise ValueError("no data: set data (preference pairs or chat conversations, for their prompts)")
    prompts: list[list[dict]] = []
    for path in cfg.data:
        try:
            prompts += [p.prompt for p in read_preferences(path, on_bad="skip")]
        except ValueError:
            for conv in read_conversations(path):
                cut = max(i for i, m in enumerate(conv) if m["role"] == "user")
                prompts.append(conv[: cut + 1])
    if not prompts:
        raise ValueError(f"{', '.join(cfg.data)}: no prompts found")
    ids = [prompt_ids(tok, p) for p in prompts]
    return [p for p in ids if len(p) + cfg.max_new_tokens <= cfg.max_length]


def run_ppo(cfg: AlignConfig, progress: bool = True) -> dict[str, Any]:
    from lmforge.train.ppo import reward_model_scorer, train_ppo

    if not cfg.reward_model:
        raise ValueError("ppo needs reward_model: the reward_model folder an `lmforge reward` run wrote")
    rm, rm_tok = load_reward_model(cfg.reward_model)
    model, tok = _load(cfg)
    if rm.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the reward model's vocabulary ({rm.config.vocab_size}) is not the policy's "
                         f"({model.config.vocab_size}): train the reward model on the same tokenizer")  # fmt: skip
    train, held = split(_user_prompts(cfg, tok), cfg.heldout, cfg.seed, cfg.limit)
    if not held:
        raise ValueError("ppo needs heldout > 0: the held-out prompts measure the reward's rise")
    ref = None
    if cfg.method == "full":
        ref, _ = _load(cfg)
        ref.eval().requires_grad_(False)
    _trainable(cfg, model)
    score_train = reward_model_scorer(rm, rm_tok, train)
    score_held = reward_model_scorer(rm, rm_tok, held)

    def evaluate() -> float:  # mean reward of greedy completions to the held-out prompts
        from lmforge.infer.generate import batch_generate_ids
        from lmforge.infer.sampling import SamplingParams

        model.eval()
        outs = batch_generate_ids(model, held, cfg.max_new_tokens, SamplingParams(temperature=0.0), end_ids(tok),
                                  _pad(tok))  # fmt: skip
        model.train()
        return sum(score_held(i, o) for i, o in enumerate(outs)) / len(held)

    log, _ = train_ppo(model, train, score_train, cfg.steps, cfg.prompts_per_step, cfg.max_new_tokens, end_ids(tok),
                       _pad(tok), cfg.temperature, cfg.lr, cfg.kl_coef, missing_eos_penalty=cfg.missing_eos_penalty,
                       ref=ref, evaluate=evaluate, eval_every=_every(cfg, cfg.steps), seed=cfg.seed,
                       progress=progress, ckpt=_ckpt(cfg))  # fmt: skip
    out = Path(cfg.out_dir)
    saved = _save_policy(cfg, model, out)
    write_log(out, log, ["score", "eval", "kl", "kl_seq", "ended"], "PPO-RLHF")
    evals = [r["eval"] for r in log if "eval" in r]
    return _finish(cfg, out, {"train_prompts": len(train), "heldout_prompts": len(held),
                              "heldout_reward_before": evals[0], "heldout_reward_after": evals[-1],
                              "max_kl": max(r["kl"] for r in log if "kl" in r), **saved})  # fmt: skip


# --- distill ------------------------------------------------------------------------------------------


def run_distill(cfg: AlignConfig, progress: bool = True) -> dict[str, Any]:
    import math

    from lmforge.data.chat import read_conversations
    from lmforge.model.export import save_hf
    from lmforge.train.distill import train_distill
    from lmforge.train.sft import SFTLoader, tokenize_all

    if not cfg.teacher:
        raise ValueError("distill needs teacher: the model whose soft targets the student learns")
    if not cfg.data:
        raise ValueError("no data: set data (chat files the teacher is run on)")
    student, tok = _load(cfg)
    teacher, _ = _load(cfg, cfg.teacher)
    teacher.eval().requires_grad_(False)
    convs = [c for path in cfg.data for c in read_conversations(path)]
    train, held = split(convs, cfg.heldout, cfg.seed, cfg.limit)
    train_ex, held_ex = tokenize_all(tok, train, cfg.seq_len), tokenize_all(tok, held, cfg.seq_len)
    loader = SFTLoader(train_ex, cfg.batch_size, cfg.seq_len, cfg.seed, True, _pad(tok))
    val = SFTLoader(held_ex, cfg.batch_size, cfg.seq_len, cfg.seed + 1, True, _pad(tok)) if held_ex else None
    steps = cfg.steps or math.ceil(
        sum(len(e) for e in train_ex) * cfg.epochs / (cfg.batch_size * cfg.seq_len)
    )
    for p in student.parameters():
        p.requires_grad_(True)
    log = train_distill(student, teacher, loader, steps, cfg.lr, cfg.kd_temperature, val_loader=val,
                        eval_every=_every(cfg, steps), progress=progress, ckpt=_ckpt(cfg))  # fmt: skip
    out = Path(cfg.out_dir)
    saved = str(save_hf(student, out / "model"))
    write_log(out, log, ["loss", "val_kd"], "distillation")
    vals = [r["val_kd"] for r in log if "val_kd" in r]
    return _finish(cfg, out, {"steps": steps, "heldout_kd_before": vals[0] if vals else None,
                              "heldout_kd_after": vals[-1] if vals else None, "model": saved})  # fmt: skip
