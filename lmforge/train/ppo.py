"""PPO-RLHF: the policy samples, a reward model scores, PPO's clipped update pushes up what scored well.

InstructGPT's third stage (Ouyang et al. 2022; the loop of TRL's PPOTrainer and of "The N+ Implementation
Details of RLHF with PPO", Huang et al. 2024). One step:

    prompts ──sample (temperature T)──▶ completions ──reward(·)──▶ score (B,)
    no grad:  log π_old, V_old (the policy and its value head), log π_ref (the LoRA base, adapters off)
    per-token reward: −kl_coef·(log π_old − log π_ref), plus the score on the last token   (rl.ppo_rewards)
    advantages, returns = GAE(rewards, V_old; γ, λ)          (rl.gae), advantages whitened  (rl.whiten)
    ppo_epochs times:  L = clipped policy loss (rl.ppo_policy_loss) + vf_coef·clipped value loss (rl.value_loss)

The KL term is what keeps the policy near the model it started from: without it the policy drifts to
whatever text fools the reward model (reward hacking). The log reports the KL to the reference per step,
so a run can be held below a bound.

The value head is one linear layer on the policy's final hidden states (TRL's AutoModelForCausalLMWithValueHead),
so policy and value share the trunk; with LoRA only the adapters and the head train.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lmforge.train.checkpoint import LoopCheckpoints, resume_loop, save_loop
from lmforge.train.grpo import _batch, sample_groups, token_logprobs
from lmforge.train.rl import gae, masked_mean, ppo_policy_loss, ppo_rewards, value_loss, whiten

Reward = Callable[[int, list[int]], float]  # (prompt index, completion ids) → score


class ValueHead(nn.Module):
    """V(state) from the policy's final (normed) hidden state: one Linear(D, 1), started at zero."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.to(self.linear.weight.dtype)).squeeze(-1)


def policy_and_values(model, head: ValueHead, ids: torch.Tensor, mask: torch.Tensor):
    """Per-token log π of ids[:, 1:] (B, T-1), values of the states that predict them (B, T-1), the mask."""
    h = model.hidden_states(ids)  # (B, T, D)
    values = head(model.norm(h))[:, :-1].float()  # the state at t, which predicts token t+1
    return token_logprobs(model.logits(h), ids), values, mask[:, 1:]


def train_ppo(
    model,
    prompts: Sequence[list[int]],
    reward: Reward,
    steps: int,
    prompts_per_step: int = 8,
    max_new_tokens: int = 32,
    eos_ids: set[int] | None = None,
    pad_id: int = 0,
    temperature: float = 1.0,
    lr: float = 1e-5,
    kl_coef: float = 0.05,
    clip: float = 0.2,
    vf_coef: float = 0.1,
    gamma: float = 1.0,
    lam: float = 0.95,
    ppo_epochs: int = 2,
    missing_eos_penalty: float = 0.0,
    ref=None,
    evaluate: Callable[[], float] | None = None,
    eval_every: int = 0,
    seed: int = 0,
    progress: bool = True,
    ckpt: LoopCheckpoints | None = None,
) -> tuple[list[dict[str, float]], ValueHead]:
    """PPO for ``steps`` rollouts; returns (log, value head). The reference is ``ref``, or the LoRA policy
    with its adapters off. ``missing_eos_penalty`` is subtracted from the score of a completion that ran
    out of tokens without an end token (TRL's option, one of Huang et al. 2024's details): otherwise the
    budget rewards rambling whose end the reward model never sees. Logged per step: the mean score (before
    the penalty), the share of completions that ended, the KL to the reference (mean over completion
    tokens of log π_old − log π_ref, summed per sequence as ``kl_seq``), the losses and clip fractions."""
    import contextlib

    from lmforge.train.lora import adapters_disabled
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.steps import LossBar, optimizer_step

    if not prompts:
        raise ValueError("no prompts")
    dev = next(model.parameters()).device
    head = ValueHead(model.config.dim).to(dev)
    groups = [g for g in param_groups(model, 0.0) if g["params"]]
    if not groups:
        raise ValueError("the policy has no trainable parameters")
    opt = AdamW([*groups, {"params": list(head.parameters()), "weight_decay": 0.0}], lr=lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    reference = ref if ref is not None else model
    rnd = random.Random(seed)
    start, log = resume_loop(ckpt, steps, [model, head], opt, rnd)
    if evaluate is not None and start == 0:
        log.append({"step": 0, "eval": float(evaluate())})
    bar = LossBar(steps, "ppo", progress)
    model.train()  # one mode for every pass of a step (dropout), whether the run starts fresh or resumes
    for step in range(start, steps):
        idx = [rnd.randrange(len(prompts)) for _ in range(prompts_per_step)]
        comps = sample_groups(model, [prompts[i] for i in idx], 1, max_new_tokens, eos_ids or set(), temperature,
                              seed * 100_003 + step, pad_id)  # fmt: skip
        score = torch.tensor([float(reward(i, c)) for i, c in zip(idx, comps)])
        if torch.isnan(score).any():
            raise ValueError("the reward is NaN for some completions: check the reward model / function")
        ended = torch.tensor([bool(c) and c[-1] in (eos_ids or set()) for c in comps])
        shaped = score - missing_eos_penalty * (~ended).float()
        ids, mask = _batch([prompts[i] for i in idx], comps, pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.no_grad():
            old_lp, old_v, m = policy_and_values(model, head, ids, mask)
            ctx = contextlib.nullcontext() if ref is not None else adapters_disabled(model)
            with ctx:
                ref_lp, _, _ = policy_and_values(reference, head, ids, mask)
            rewards = ppo_rewards(shaped.to(dev), old_lp, ref_lp, m, kl_coef)
            adv, returns = gae(rewards, old_v, m, gamma, lam)
            adv = whiten(adv, m)
        model.train()
        for _ in range(ppo_epochs):
            lp, v, _ = policy_and_values(model, head, ids, mask)
            pl, pstats = ppo_policy_loss(lp, old_lp, adv, m, clip)
            vl, vstats = value_loss(v, old_v, returns, m, clip)
            value = optimizer_step(opt, pl + vf_coef * vl, params, 1.0, "PPO loss", step)
        kl_tok = old_lp - ref_lp
        rec = {"step": step + 1, "score": float(score.mean()), "ended": float(ended.float().mean()), "loss": value,
               "kl": float(masked_mean(kl_tok, m)), "kl_seq": float((kl_tok * m).sum(1).mean()),
               "policy_loss": float(pl.detach()), "value_loss": float(vl.detach()),
               "clip_fraction": float(pstats.get("clip_fraction", 0.0))}  # fmt: skip
        if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            rec["eval"] = float(evaluate())
        log.append(rec)
        save_loop(ckpt, step + 1, steps, log, [model, head], opt, rnd)
        bar.update(value, score=rec["score"], kl=rec["kl"])
    bar.close()
    model.eval()
    return log, head


def reply_closing(tokenizer) -> list[int]:
    """The ids the chat template writes after an assistant reply, from its end marker on (SmolLM2:
    ``<|im_end|>`` and a newline). A reward model trained on rendered pairs read its score at the last of
    them, so a sampled reply must be closed the same way before it is scored: read anywhere else (after a
    bare ``<|endoftext|>``, or mid-sentence) the score comes from states the head never saw. Empty when the
    template marks no end."""
    from lmforge.infer.generate import end_ids
    from lmforge.train.sft import IGNORE, tokenize_chat

    ex = tokenize_chat(
        tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    )
    ends = end_ids(tokenizer)
    at = next(
        (i for i, (t, lab) in enumerate(zip(ex.input_ids, ex.labels)) if lab != IGNORE and t in ends), None
    )
    return [] if at is None else ex.input_ids[at:]


def reward_model_scorer(rm, tokenizer, prompt_ids: Sequence[list[int]]) -> Reward:
    """A Reward that scores (prompt, completion) with a trained RewardModel, the completion rendered as
    the reward model's training rows were: its end token (if it stopped) replaced by the template's
    closing (``reply_closing``). A reply cut off by the token budget is closed the same way, so it is
    judged as the answer it is; ``train_ppo(missing_eos_penalty=…)`` is where not stopping costs."""
    from lmforge.infer.generate import end_ids

    ends, closing = end_ids(tokenizer), reply_closing(tokenizer)

    @torch.no_grad()
    def score(i: int, completion: list[int]) -> float:
        body = list(completion[:-1]) if completion and completion[-1] in ends else list(completion)
        ids = list(prompt_ids[i]) + body + closing
        dev = rm.score_head.weight.device
        return float(rm(torch.tensor([ids], device=dev), torch.tensor([len(ids) - 1]))[0])

    return score
