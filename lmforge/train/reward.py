"""A Bradley–Terry reward model: a language model's backbone plus one scalar head, trained on preference pairs.

InstructGPT's second stage (Ouyang et al. 2022): the SFT model with its unembedding replaced by a linear
layer to one number, read at the last token of (prompt, response) — the position that has seen the whole
answer. Trained on pairs with −log σ(r(x, y_w) − r(x, y_l)) (``preference.bradley_terry_loss``), it learns a
score whose differences predict which answer people preferred. Only differences are determined (adding a
constant changes nothing), so the scores are centred on the training pairs' mean after training, as
TRL and OpenAI's summarisation work do, which makes a reward of 0 mean "average".

Reported: accuracy (the share of held-out pairs where r_w > r_l) and the mean margin r_w − r_l.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from lmforge.train.checkpoint import LoopCheckpoints, resume_loop, save_loop
from lmforge.train.pairs import TokenizedPair, collate
from lmforge.train.preference import bradley_terry_loss


class RewardModel(nn.Module):
    """backbone (a Transformer) → final norm → hidden state of the last real token → Linear(D, 1)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.score_head = nn.Linear(backbone.config.dim, 1)
        nn.init.normal_(self.score_head.weight, std=1 / (backbone.config.dim + 1) ** 0.5)
        nn.init.zeros_(self.score_head.bias)
        self.register_buffer("offset", torch.zeros(()))  # subtracted after training: rewards centred on 0

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = self.backbone.norm(self.backbone.hidden_states(input_ids))  # (B, T, D)
        h_last = h[torch.arange(len(last), device=h.device), last.to(h.device)]  # (B, D)
        return self.score_head(h_last.to(self.score_head.weight.dtype)).squeeze(-1) - self.offset  # (B,)

    @torch.no_grad()
    def score_pairs(
        self, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen, r_rejected), each (N,)."""
        was = self.training
        self.eval()
        rw, rl = [], []
        dev = self.score_head.weight.device
        for s in range(0, len(pairs), batch_size):
            b = collate(pairs[s : s + batch_size], pad_id)
            r = self(b["input_ids"].to(dev), b["last"])
            n = len(r) // 2
            rw.append(r[:n].float().cpu())
            rl.append(r[n:].float().cpu())
        self.train(was)
        return torch.cat(rw), torch.cat(rl)


def reward_metrics(rm: RewardModel, pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, float]:
    rw, rl = rm.score_pairs(pairs, pad_id)
    return {"accuracy": float((rw > rl).float().mean()), "margin": float((rw - rl).mean()),
            "reward_chosen": float(rw.mean()), "reward_rejected": float(rl.mean())}  # fmt: skip


def train_reward_model(
    rm: RewardModel,
    train: Sequence[TokenizedPair],
    pad_id: int,
    val: Sequence[TokenizedPair] = (),
    epochs: float = 1.0,
    batch_size: int = 8,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    eval_every: int = 0,
    seed: int = 0,
    progress: bool = True,
    ckpt: LoopCheckpoints | None = None,
) -> list[dict[str, float]]:
    """Bradley–Terry training (AdamW, warm-up then linear decay, clipping at 1). Returns the log: per step
    loss / accuracy, and held-out accuracy and margin every eval_every steps and at the end. Trains what
    requires gradients in the backbone (everything, or LoRA's adapters after apply_lora) and the head
    (at its own rate: a fresh head needs a larger one than a pretrained body, as in the cross-encoder)."""
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.schedules import set_lr, warmup_stable_decay
    from lmforge.train.steps import LossBar, optimizer_step

    if not train:
        raise ValueError("no training pairs")
    rnd = random.Random(seed)
    steps: list[list[TokenizedPair]] = []
    while len(steps) < max(1, round(epochs * len(train) / batch_size)):
        order = list(train)
        rnd.shuffle(order)
        steps += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    steps = steps[: max(1, round(epochs * len(train) / batch_size))]
    head = list(rm.score_head.parameters())
    body = param_groups(rm.backbone, 0.0)
    opt = AdamW([*body, {"params": head, "weight_decay": 0.0, "lr_scale": head_lr / lr}], lr=lr)
    total, warm = len(steps), max(1, len(steps) // 10)
    dev = rm.score_head.weight.device
    rm.train()
    start, log = resume_loop(ckpt, total, [rm], opt)
    bar = LossBar(total, "reward model", progress)
    for step in range(start, total):
        chunk = steps[step]
        set_lr(opt, warmup_stable_decay(step, lr, 0.0, warm, total, decay_fraction=1.0))
        b = collate(chunk, pad_id)
        r = rm(b["input_ids"].to(dev), b["last"])
        n = len(r) // 2
        loss, stats = bradley_terry_loss(r[:n], r[n:])
        value = optimizer_step(
            opt, loss, [p for g in opt.param_groups for p in g["params"]], 1.0, "reward loss", step
        )
        rec = {"step": step + 1, "loss": value, "accuracy": float(stats["accuracy"])}
        if val and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == total):
            rec.update({f"val_{k}": v for k, v in reward_metrics(rm, val, pad_id).items()})
        log.append(rec)
        save_loop(ckpt, step + 1, total, log, [rm], opt)
        bar.update(value, **({"val_acc": rec["val_accuracy"]} if "val_accuracy" in rec else {}))
    bar.close()
    with torch.no_grad():  # centre: the training pairs' mean reward becomes 0
        rw, rl = rm.score_pairs(list(train)[:256], pad_id)
        rm.offset += torch.cat([rw, rl]).mean().to(rm.offset)
    rm.eval()
    return log


def fit_reward_head(
    rm: RewardModel,
    train: Sequence[TokenizedPair],
    l2: float = 1.0,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train only the scalar head, on a frozen backbone, in closed form-ish: Bradley–Terry on the last-token
    features is logistic regression on h_chosen − h_rejected without an intercept (lmforge.train.probe).

    Each sequence goes through the backbone once (no backward pass), so on a CPU this is minutes where
    ``train_reward_model`` takes hours. ``features`` = (chosen (N, D), rejected (N, D)) from
    ``last_token_features`` skips that pass. The head's bias is left at 0 and ``offset`` centres the
    training rewards on 0. Returns the training accuracy and L2."""
    from lmforge.train.probe import fit_logistic, last_token_features

    if not train:
        raise ValueError("no training pairs")
    if features is None:
        seqs = [p.chosen.input_ids for p in train] + [p.rejected.input_ids for p in train]
        f = last_token_features(rm.backbone, seqs, progress)
        features = f[: len(train)], f[len(train) :]
    hw, hl = features
    d = hw - hl  # (N, D)
    # both orders, labelled 1 and 0: the same likelihood, and balanced labels for the standardisation
    w, _ = fit_logistic(
        torch.cat([d, -d]), torch.cat([torch.ones(len(d)), torch.zeros(len(d))]), l2, bias=False
    )
    with torch.no_grad():
        rm.score_head.weight.copy_(w[None].to(rm.score_head.weight))
        rm.score_head.bias.zero_()
        rm.offset.fill_(float(torch.cat([hw, hl]).mean(0) @ w))
    rm.eval()
    return {"train_accuracy": float((d @ w > 0).float().mean()), "l2": l2}


def best_of_n(
    model,
    prompts: Sequence[list[int]],
    score,
    n: int = 8,
    max_new_tokens: int = 64,
    eos_ids: set[int] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    pad_id: int = 0,
) -> list[tuple[list[int], float, list[float]]]:
    """Best-of-n / rejection sampling (Nakano et al. 2021, WebGPT; Llama 2's rejection-sampling stage):
    sample n completions per prompt, keep the one ``score(prompt index, completion)`` rates highest.
    Returns per prompt (best completion, its score, all n scores); the best completions are SFT data
    for the next round. Raises on NaN scores."""
    from lmforge.train.grpo import sample_groups

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    comps = sample_groups(model, prompts, n, max_new_tokens, eos_ids or set(), temperature, seed, pad_id)
    out = []
    for i in range(len(prompts)):
        group = comps[i * n : (i + 1) * n]
        scores = [float(score(i, c)) for c in group]
        if any(s != s for s in scores):
            raise ValueError(f"prompt {i}: the scorer returned NaN")
        best = max(range(n), key=lambda j: scores[j])
        out.append((group[best], scores[best], scores))
    return out
