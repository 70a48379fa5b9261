"""Reinforcement learning from feedback: the pieces of PPO-RLHF and GRPO, as plain tensor functions.

A response of T tokens is an episode: the state is the prompt plus the tokens so far, the action the next
token. All tensors are (B, T) over the *response* tokens, with a mask (bool or 0/1) that is false on padding;
masked positions never add to a sum, a mean or a recursion, whatever garbage they hold.

PPO-RLHF (Ouyang et al. 2022, InstructGPT, arXiv:2203.02155; Ziegler et al. 2019, arXiv:1909.08593):
  - the reward of token t is −β·KL_t(π ‖ π_ref), and the last token also gets the reward model's score
    (`ppo_rewards`); the per-token KL keeps the policy near the SFT model, where the reward model is valid;
  - a value model V predicts the return; generalised advantage estimation (Schulman et al. 2016,
    arXiv:1506.02438) mixes its n-step estimates (`gae`), and the advantages are whitened (`whiten`);
  - the clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) lets several gradient steps reuse one
    batch of samples without moving far from the policy that drew them (`ppo_policy_loss`, `value_loss`).

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) drops the value model: G responses to the same
prompt are scored, and each one's advantage is its reward standardised within the group
(`grpo_advantages`) — the group mean is the baseline a value model would have learnt. Dr. GRPO (Liu et
al. 2025, arXiv:2503.20783) removes the two normalisations that bias it: the division by the group's std
(`scale=False`) and by each response's length (`loss_type="dr_grpo"`).

The KL estimators follow Schulman's note "Approximating KL Divergence" (2020): with samples from π and
log_ratio = log π − log π_ref, k1 = log_ratio (unbiased, high variance, can be negative), k2 = log_ratio²/2
(biased, low variance), k3 = exp(−log_ratio) − 1 + log_ratio (unbiased, low variance, always ≥ 0).
Formulas and defaults match TRL's PPOTrainer and GRPOTrainer where they exist (noted below).
"""

from __future__ import annotations

import torch

KL_KINDS = ("k1", "k2", "k3")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


def _same_shape(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    for name, t in zip(names, tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {names[0]} has {tuple(tensors[0].shape)}"
            )


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is true (all of them, or along ``dim``); 0 if there are none."""
    m = mask.bool()
    total = torch.where(m, x, 0.0)  # where, not x * mask: a NaN/inf in padding would survive x * 0
    if dim is None:
        return total.sum() / m.sum().clamp(min=1)
    return total.sum(dim) / m.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the valid positions of the whole batch, as TRL's ``masked_whiten``.

    The variance is the unbiased one (Bessel's n/(n−1)), and eps is added to it, not to the std, as in
    TRL. ``shift_mean=False`` adds the mean back: PPO whitens advantages fully, but rewards only in scale,
    since shifting rewards would change which responses are good. Masked positions come back as 0 (TRL
    leaves them as they were; they are never read).
    """
    _same_shape(("x", "mask"), (x, mask))
    m = mask.bool()
    n = m.sum()
    if n < 2:
        raise ValueError(f"whiten needs at least 2 valid positions, got {int(n)}")
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m) * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the sampled tokens' log-probabilities, shape (B, T).

    logprobs are the policy's (the tokens were sampled from it), ref_logprobs the reference model's.
    k1 = log r, k2 = (log r)²/2, k3 = exp(−log r) − 1 + log r, with log r = logprobs − ref_logprobs.
    No masking here: the callers mask.
    """
    _same_shape(("logprobs", "ref_logprobs"), (logprobs, ref_logprobs))
    log_ratio = logprobs.float() - ref_logprobs.float()  # (B, T)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # expm1: no cancellation when π ≈ π_ref
    raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KL_KINDS)}")


def ppo_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> torch.Tensor:
    """InstructGPT's per-token reward (B, T): −kl_coef·KL_t everywhere, plus score at the last valid token.

    score (B,) is the reward model's scalar for each whole response; it is the only signal about quality,
    so it lands on the action that completed the response. TRL uses the k1 estimator here (the default).
    Padding gets 0.
    """
    _same_shape(("logprobs", "ref_logprobs", "mask"), (logprobs, ref_logprobs, mask))
    m = mask.bool()  # (B, T)
    if score.shape != m.shape[:1]:
        raise ValueError(f"score has shape {tuple(score.shape)}, expected ({m.shape[0]},)")
    if torch.isnan(score).any():
        raise ValueError("score contains NaN: check the reward model")
    if not m.any(-1).all():
        raise ValueError("a response has no valid tokens: there is no token to give its score to")
    kl = kl_penalty(logprobs.detach(), ref_logprobs.detach(), kind)  # rewards are data: no gradient
    rewards = torch.where(m, -kl_coef * kl, 0.0)  # (B, T)
    positions = torch.arange(m.shape[1], device=m.device)
    last = torch.where(m, positions, -1).amax(-1)  # (B,) index of the last valid token
    rows = torch.arange(m.shape[0], device=m.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: (advantages, returns), both (B, T) and 0 on masked positions.

    δ_t = r_t + γ V_{t+1} − V_t (the one-step TD error), A_t = δ_t + γλ A_{t+1}, run backwards. λ = 1 gives
    the Monte-Carlo return minus V (unbiased, noisy), λ = 0 the one-step TD error (biased by V, quiet).
    After the last valid token the episode has ended, so V_{T} = 0 and A_{T} = 0. Masked positions are
    skipped, not treated as steps: the recursion carries (V_next, A_next) across them unchanged, so right
    padding gives exactly TRL's PPOTrainer loop and a masked span inside a response (say, a tool's output)
    joins the tokens on either side. returns = advantages + values, the value model's regression target.
    """
    _same_shape(("rewards", "values", "mask"), (rewards, values, mask))
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    m = mask.bool()
    r, v = rewards.float(), values.float().detach()  # (B, T); the value model learns from value_loss only
    next_value = torch.zeros_like(v[:, 0])  # (B,)
    next_adv = torch.zeros_like(v[:, 0])  # (B,)
    advantages = torch.zeros_like(v)  # (B, T)
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = delta + gamma * lam * next_adv
        valid = m[:, t]
        advantages[:, t] = torch.where(valid, adv, 0.0)
        next_adv = torch.where(valid, adv, next_adv)
        next_value = torch.where(valid, v[:, t], next_value)
    returns = torch.where(m, advantages + v, 0.0)
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = π/π_old, averaged over the valid tokens.

    logprobs (B, T) are the current policy's (with gradient), old_logprobs those of the policy that sampled
    the tokens, advantages (B, T) per token. The min makes the objective pessimistic: once ρ has moved
    past 1±ε in the direction the advantage rewards, the gradient stops, so a batch can be reused for
    several steps without the policy running away from the data.

    stats (detached): ``clip_fraction``, the share of valid tokens where the clipped term is the one
    used (TRL's pg_clipfrac), and ``approx_kl``, the k3 estimate (ρ − 1) − log ρ of KL(π_old ‖ π), a
    cue to stop the epoch early when it grows.
    """
    _same_shape(
        ("logprobs", "old_logprobs", "advantages", "mask"), (logprobs, old_logprobs, advantages, mask)
    )
    log_ratio = logprobs.float() - old_logprobs.float().detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    adv = advantages.float().detach()
    unclipped = -adv * ratio  # (B, T), a loss: the negated objective
    clipped = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # max of losses = min of objectives
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ½·max((V − R)², (clip(V, V_old ± ε) − R)²), averaged over the valid tokens.

    values (B, T) are the value model's current predictions (with gradient), old_values those made when
    the batch was collected, returns the GAE targets. Clipping the value the same way as the policy keeps
    one noisy batch from dragging V far (OpenAI baselines; TRL's PPOTrainer, whose ``cliprange_value`` is
    0.2). clip=None gives the plain ½(V − R)². stats: ``clip_fraction`` (TRL's vf_clipfrac).
    """
    _same_shape(("values", "old_values", "returns", "mask"), (values, old_values, returns, mask))
    v = values.float()
    target = returns.float().detach()
    unclipped = (v - target) ** 2  # (B, T)
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), {"clip_fraction": torch.zeros(())}
    old = old_values.float().detach()
    v_clipped = torch.clamp(v, old - clip, old + clip)
    clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (r − mean_group) / (std_group + eps), in the shape of ``rewards``.

    rewards (N·G,) with each prompt's G responses adjacent (as GRPO's sampler lays them out), or (N, G).
    The std is torch's default, the unbiased one (divides by G − 1), and eps = 1e-4 is added to it: TRL's
    GRPOTrainer exactly. A group whose rewards are all equal gets advantage 0 — no signal, and no division
    by zero. ``scale=False`` keeps only r − mean_group: Dr. GRPO, which notes that dividing by the std
    up-weights prompts that are nearly always (or never) solved.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if rewards.dim() == 2 and rewards.shape[1] != group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} are not (N, {group_size})")
    if torch.isnan(rewards).any():
        raise ValueError("rewards contain NaN: check the reward functions")
    grouped = rewards.float().reshape(-1, group_size)  # (N, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    return adv.reshape(rewards.shape)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "grpo",
    clip_high: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss: PPO's clipped per-token term with one advantage per sequence, plus β·k3 KL to π_ref.

    logprobs, old_logprobs, ref_logprobs, mask (B, T); advantages (B,), from `grpo_advantages`.
    old_logprobs=None means one gradient step per batch of samples (TRL's default): π_old = π, detached,
    so the ratio is 1 but its gradient is ∇log π. ref_logprobs may be None when beta = 0 (DAPO and Dr.
    GRPO drop the KL term). ``clip_high`` is DAPO's "clip-higher" upper bound (1 + clip_high), default clip.

    How the per-token losses L (B, T) are reduced, TRL's ``loss_type``:
      "grpo"          mean over each sequence's tokens, then over sequences (the paper's 1/|o_i|);
      "bnpo", "dapo"  sum over all valid tokens / their number (every token weighs the same; DAPO's
                      token-level loss — TRL's "dapo" also divides by the count over all processes);
      "dr_grpo"       sum / (B · max_len), a constant: no length bias (Dr. GRPO). max_len defaults to T;
                      TRL uses its config's max_completion_length — pass it to match.

    stats (detached): ``clip_fraction`` (share of valid tokens where clipping binds) and ``kl`` (mean k3
    over valid tokens; 0 without a reference).
    """
    _same_shape(("logprobs", "mask"), (logprobs, mask))
    if old_logprobs is not None:
        _same_shape(("logprobs", "old_logprobs"), (logprobs, old_logprobs))
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logprobs.shape[0]},), got {tuple(advantages.shape)}")
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: choose one of {', '.join(GRPO_LOSS_TYPES)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (the reference model's log-probabilities)")

    lp = logprobs.float()  # (B, T)
    old = lp.detach() if old_logprobs is None else old_logprobs.float().detach()
    ratio = torch.exp(lp - old)  # (B, T)
    adv = advantages.float().detach().unsqueeze(1)  # (B, 1): every token of a response shares it
    high = clip if clip_high is None else clip_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip, 1 + high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)

    kl = None
    if ref_logprobs is not None:
        kl = kl_penalty(lp, ref_logprobs.detach(), "k3")  # (B, T), gradient flows through lp
        if beta != 0.0:
            per_token = per_token + beta * kl

    m = mask.bool()
    if loss_type == "grpo":
        loss = masked_mean(per_token, m, dim=1).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = masked_mean(per_token, m)
    else:
        denom = m.shape[0] * (m.shape[1] if max_len is None else max_len)
        loss = torch.where(m, per_token, 0.0).sum() / denom

    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), m),
            "kl": torch.zeros(()) if kl is None else masked_mean(kl, m),
        }
    return loss, stats
