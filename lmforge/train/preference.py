"""Preference learning: a response's log-probability, the Bradley–Terry reward loss, and DPO with its variants.

Both losses start from pairs (x, y_w, y_l): a prompt, the response people preferred and the one they did
not. The Bradley–Terry model says the preference is a coin flip biased by a hidden reward r:

    P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l))

so a reward model is fitted by maximising the log-likelihood of the observed choices,
−log σ(r_w − r_l) (Ouyang et al. 2022, InstructGPT, arXiv:2203.02155; Llama 2, arXiv:2307.09288, subtracts
a margin m that grows with how strongly the annotator preferred y_w).

DPO (Rafailov et al. 2023, arXiv:2305.18290) skips the reward model. The RLHF objective
max_π E[r] − β KL(π ‖ π_ref) has the closed-form optimum π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β), so the reward
a policy implies is r(x, y) = β log π(y|x)/π_ref(y|x) + β log Z(x); Z(x) cancels in r_w − r_l, and
Bradley–Terry becomes a loss on the policy itself:

    L_DPO = −log σ(β [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])

Variants, with the formulas of TRL's DPOTrainer (its `loss_type` names):
  sigmoid  −(1−ε) log σ(βh) − ε log σ(−βh): DPO, and with label smoothing ε > 0 the conservative DPO of
           Mitchell 2023 (cDPO: each label is assumed flipped with probability ε).
  ipo      (h − 1/(2β))²: IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17, β is their τ). A squared loss
           pulls h to a finite target instead of pushing it to infinity, so it does not overfit
           deterministic preferences. TRL feeds IPO per-token *mean* log-probabilities
           (`sequence_logprobs(..., average=True)`); sums work too but need a far larger β.
  hinge    max(0, 1 − βh): the SLiC-style hinge (Zhao et al. 2023, arXiv:2305.10425).
where h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)).

All losses take sequence log-probabilities (B,): `sequence_logprobs` turns a model's logits into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def shifted(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Align a causal LM's outputs with the tokens they predict: (logits[:, :-1], ids[:, 1:], mask[:, 1:]).

    A causal LM's logits at position t are its guess for token t+1, so the last position predicts nothing
    we have and the first token is never predicted. ``loss_mask`` is aligned with ``input_ids`` (true on
    the response tokens to score) and is shifted like the labels: token t+1 counts iff loss_mask[:, t+1].
    """
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)}")
    mask = None if loss_mask is None else loss_mask[:, 1:]
    return logits[:, :-1], input_ids[:, 1:], mask  # (B, T-1, V), (B, T-1), (B, T-1)


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    average: bool = False,
) -> torch.Tensor:
    """Σ_t log p(labels_t) over the positions where mask is true: log π(y|x) of each row, shape (B,).

    logits (B, T, V) at position t score labels[:, t] — *already aligned*: for a causal LM's raw output
    call ``sequence_logprobs(*shifted(logits, input_ids, loss_mask))``. mask (B, T), bool or 0/1; None means
    ``labels != -100`` (the Hugging Face convention for prompt and padding labels). ``average=True``
    divides by the number of scored tokens (TRL's IPO and SimPO use the per-token mean).

    Computed in float32 whatever the logits' dtype: bf16 has 8 bits of mantissa, and a sum of hundreds of
    log-probabilities in it is off by whole nats. log softmax(z)_y = z_y − logsumexp(z) is taken for the
    label only (gather first, then one logsumexp per position), so no second (B, T, V) tensor of
    log-probabilities is made — the same result as ``log_softmax(z).gather(...)`` with less memory.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    keep = (labels != -100) if mask is None else mask.bool()  # (B, T)
    if keep.shape != labels.shape:
        raise ValueError(f"mask {tuple(keep.shape)} does not match labels {tuple(labels.shape)}")
    z = logits.float()  # (B, T, V)
    safe = torch.where(keep, labels, 0)  # masked labels may be -100: read any valid id, then drop it
    picked = z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    token_logps = picked - torch.logsumexp(z, dim=-1)  # (B, T)
    total = torch.where(keep, token_logps, 0.0).sum(-1)  # (B,)
    if average:
        return total / keep.sum(-1).clamp(min=1)
    return total


def _check_pair(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    """Same shapes, no NaN: a NaN log-probability would train silently into NaN weights."""
    for name, t in zip(names, tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {names[0]} has {tuple(tensors[0].shape)}"
            )
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN: check the model's logits and the masks")


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-model loss −log σ(r_chosen − r_rejected [− margin]), the mean over the batch.

    r_chosen, r_rejected (B,): the reward model's scalar scores of the two responses. ``margin`` (a float
    or (B,)) is Llama 2's: a pair rated "significantly better" must win by more than a pair rated
    "negligibly better". Returns (loss, stats) with stats (detached) ``accuracy``, the fraction with
    r_chosen > r_rejected, and ``margin``, the mean of r_chosen − r_rejected.
    """
    _check_pair(("r_chosen", "r_rejected"), (r_chosen, r_rejected))
    diff = r_chosen.float() - r_rejected.float()  # (B,)
    if margin is not None:
        if torch.is_tensor(margin):
            _check_pair(("r_chosen", "margin"), (r_chosen, margin))
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()  # logsigmoid, not log(sigmoid): exact for large |diff|
    gap = (r_chosen - r_rejected).detach().float()
    return loss, {"accuracy": (gap > 0).float().mean(), "margin": gap.mean()}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss from four (B,) tensors of sequence log-probabilities; returns (mean loss, stats).

    h = (policy_chosen − ref_chosen) − (policy_rejected − ref_rejected): how much more the policy than the
    reference favours the chosen response. loss_type ``"sigmoid"`` is −(1−ε) log σ(βh) − ε log σ(−βh)
    (ε = label_smoothing, 0 for plain DPO), ``"ipo"`` is (h − 1/(2β))², ``"hinge"`` is max(0, 1 − βh) —
    TRL's DPOTrainer formulas. The reference log-probabilities get no gradient.

    stats (detached means): ``chosen_rewards`` and ``rejected_rewards``, DPO's implicit rewards
    β(log π − log π_ref); ``reward_accuracy``, the fraction with chosen reward > rejected reward;
    ``reward_margin``, chosen − rejected reward.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    inputs = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_pair(names, inputs)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: choose one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing only applies to loss_type 'sigmoid', not {loss_type!r}")

    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()
    rc, rr = ref_chosen_logps.float().detach(), ref_rejected_logps.float().detach()
    chosen_logratio = pc - rc  # (B,) log π(y_w)/π_ref(y_w)
    rejected_logratio = pr - rr  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)

    if loss_type == "sigmoid":
        eps = label_smoothing
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2  # β regularises through the target 1/(2β), not a scale on h
    else:
        losses = torch.relu(1 - beta * h)

    chosen_rewards = beta * chosen_logratio.detach()  # (B,)
    rejected_rewards = beta * rejected_logratio.detach()  # (B,)
    stats = {
        "chosen_rewards": chosen_rewards.mean(),
        "rejected_rewards": rejected_rewards.mean(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
    }
    return losses.mean(), stats
