"""GRPO training: sample a group of answers per prompt, reward each with a checker, push towards the better ones.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) is PPO without a value model. For each
prompt the policy samples G completions; a verifiable reward (is the number right? does the code pass?)
scores each; the advantage of a completion is its reward relative to its own group,
(r − mean_group) / std_group (``rl.grpo_advantages``), shared by all its tokens; the loss is PPO's clipped
objective on those advantages, optionally plus β·KL to the reference (``rl.grpo_loss``). A group whose
completions all score the same teaches nothing, so the task must be neither always nor never solved.

One step here (TRL's defaults: one gradient step per batch of samples, so π_old = π):

    prompts (P) ──repeat G──▶ sample completions (temperature T)  ──▶ rewards (P·G,)
      ──▶ advantages per group ──▶ log π of each completion token (one forward, with gradients)
      ──▶ grpo_loss (+ β·k3 KL to the reference: the LoRA model with its adapters off) ──▶ AdamW step
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from lmforge.infer.generate import batch_generate_ids
from lmforge.infer.sampling import SamplingParams
from lmforge.train.checkpoint import LoopCheckpoints, resume_loop, save_loop
from lmforge.train.rl import grpo_advantages, grpo_loss

Reward = Callable[[int, list[int]], float]  # (prompt index, completion ids) → reward


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log π(ids[:, t+1] | ids[:, :t+1]) per position (B, T-1), from a causal LM's logits (B, T, V), in
    float32: position t's logits predict token t+1."""
    z = logits[:, :-1].float()  # (B, T-1, V)
    return z.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def completion_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log π of ids[:, 1:] (B, T-1) and the shifted completion mask (B, T-1)."""
    return token_logprobs(model(ids), ids), mask[:, 1:]


def _batch(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int):
    rows = [p + c for p, c in zip(prompts, completions)]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) : len(p) + len(c)] = True
    return ids, mask


def sample_groups(model, prompts: Sequence[list[int]], group_size: int, max_new_tokens: int, eos_ids: set[int],
                  temperature: float, seed: int, pad_id: int) -> list[list[int]]:  # fmt: skip
    """G completions per prompt, adjacent (prompt 0's G, then prompt 1's, ...); a completion that stopped
    on an end token keeps the very token it sampled (<|im_end|>, not some other end id), so the policy is
    also trained on when to stop, on the action it took."""
    was = model.training
    model.eval()
    rep = [list(p) for p in prompts for _ in range(group_size)]
    out = batch_generate_ids(model, rep, max_new_tokens, SamplingParams(temperature=temperature, seed=seed),
                             eos_ids, pad_id, keep_end=True)  # fmt: skip
    model.train(was)
    return out


def train_grpo(
    model,
    prompts: Sequence[list[int]],
    reward: Reward,
    steps: int,
    group_size: int = 8,
    prompts_per_step: int = 4,
    max_new_tokens: int = 32,
    eos_ids: set[int] | None = None,
    pad_id: int = 0,
    temperature: float = 1.0,
    lr: float = 1e-5,
    beta: float = 0.0,
    clip: float = 0.2,
    loss_type: str = "grpo",
    evaluate: Callable[[], float] | None = None,
    eval_every: int = 0,
    seed: int = 0,
    progress: bool = True,
    ckpt: LoopCheckpoints | None = None,
) -> list[dict[str, float]]:
    """GRPO for ``steps`` steps; the log has each step's mean reward, the share of groups with any signal,
    loss, KL and clip fraction, and ``evaluate()`` (e.g. held-out accuracy) at step 0, every eval_every
    steps and at the end. β > 0 needs a LoRA policy (the reference is the base with adapters off)."""
    from lmforge.train.lora import adapters_disabled
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.steps import LossBar, optimizer_step

    if not prompts:
        raise ValueError("no prompts")
    opt = AdamW(param_groups(model, 0.0), lr=lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    rnd = random.Random(seed)
    start, log = resume_loop(ckpt, steps, [model], opt, rnd)
    if evaluate is not None and start == 0:
        log.append({"step": 0, "eval": float(evaluate())})
    bar = LossBar(steps, "grpo", progress)
    dev = next(model.parameters()).device
    model.train()  # one mode for every pass of a step (dropout), whether the run starts fresh or resumes
    for step in range(start, steps):
        idx = [rnd.randrange(len(prompts)) for _ in range(prompts_per_step)]
        chosen = [prompts[i] for i in idx]
        comps = sample_groups(model, chosen, group_size, max_new_tokens, eos_ids or set(), temperature,
                              seed * 100_003 + step, pad_id)  # fmt: skip
        owners = [i for i in idx for _ in range(group_size)]
        rewards = torch.tensor([float(reward(i, c)) for i, c in zip(owners, comps)])
        adv = grpo_advantages(rewards, group_size)
        ids, mask = _batch([prompts[i] for i in owners], comps, pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        ref_lp = None
        if beta > 0:
            with torch.no_grad(), adapters_disabled(model):
                ref_lp, _ = completion_logprobs(model, ids, mask)
        lp, m = completion_logprobs(model, ids, mask)
        loss, stats = grpo_loss(lp, None, ref_lp, adv.to(dev), m, clip=clip, beta=beta, loss_type=loss_type)
        value = optimizer_step(opt, loss, params, 1.0, "GRPO loss", step)
        grouped = rewards.reshape(-1, group_size)
        rec = {"step": step + 1, "reward": float(rewards.mean()), "loss": value,
               "groups_with_signal": float((grouped.std(1) > 0).float().mean()),
               "kl": float(stats["kl"]), "clip_fraction": float(stats["clip_fraction"]),
               "completion_tokens": float(m.sum(1).float().mean())}  # fmt: skip
        if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            rec["eval"] = float(evaluate())
        log.append(rec)
        save_loop(ckpt, step + 1, steps, log, [model], opt, rnd)
        bar.update(value, reward=rec["reward"])
    bar.close()
    model.eval()
    return log
