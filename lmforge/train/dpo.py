"""DPO training: the policy learns from preference pairs directly, against a frozen reference.

The loss (``preference.dpo_loss``, Rafailov et al. 2023) needs four sequence log-probabilities per pair:
the policy's and the reference's, of the chosen and the rejected response. The reference is the model
before training. Two ways to have it:

- the policy is a LoRA model: the reference is the same weights with the adapters switched off
  (``lora.adapters_disabled``, PEFT's ``disable_adapter``) — no second copy in memory;
- any policy: pass ``ref``, a frozen model with the same vocabulary.

The reference never changes, so its log-probabilities are computed once for every pair before training
(TRL's ``precompute_ref_log_probs``), which saves a forward pass per pair per epoch.

Logged, on the training batches and the held-out pairs: the implicit rewards β·(log π − log π_ref) of
the chosen and rejected responses, their margin, the accuracy (the share of pairs where the chosen
response's implicit reward is higher, ties counting half: at step 0, where policy = reference, every implicit
reward is 0 and the accuracy reads 0.5) and the policy's raw
log-probability gap log π(y_w) − log π(y_l).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import torch

from lmforge.train.checkpoint import LoopCheckpoints, resume_loop, save_loop
from lmforge.train.pairs import TokenizedPair, collate
from lmforge.train.preference import dpo_loss, sequence_logprobs, shifted


def pair_logps(
    model, batch: dict[str, torch.Tensor], average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_w|x), log π(y_l|x)), each (B,), from a collated batch of B pairs."""
    dev = next(model.parameters()).device
    ids = batch["input_ids"].to(dev)
    logps = sequence_logprobs(*shifted(model(ids), ids, batch["response_mask"].to(dev)), average=average)
    n = len(logps) // 2
    return logps[:n], logps[n:]


@torch.no_grad()
def reference_logps(model, pairs: Sequence[TokenizedPair], pad_id: int, ref=None, batch_size: int = 8,
                    average: bool = False) -> torch.Tensor:  # fmt: skip
    """(N, 2) reference log-probabilities [chosen, rejected]: ``ref``'s, or model's with its adapters off."""
    from lmforge.train.lora import adapters_disabled

    if ref is not None and ref.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the reference model has a vocabulary of {ref.config.vocab_size}, the policy "
                         f"{model.config.vocab_size}: log-probabilities of the same tokens need the same tokenizer")  # fmt: skip
    scorer = ref if ref is not None else model
    ctx = contextlib.nullcontext() if ref is not None else adapters_disabled(model)
    was = scorer.training
    scorer.eval()
    out = []
    with ctx:
        for s in range(0, len(pairs), batch_size):
            out.append(
                torch.stack(pair_logps(scorer, collate(pairs[s : s + batch_size], pad_id), average), 1)
                .float()
                .cpu()
            )
    scorer.train(was)
    return torch.cat(out)


TIE = 1e-4  # nats: log-ratio differences below this are float noise (policy = reference at step 0)


def dpo_stats(pol_w, pol_l, ref_w, ref_l, beta: float) -> dict[str, float]:
    """Implicit-reward statistics. A tie counts as half a correct pair, so the policy-is-the-reference
    start reads 0.5 (chance), not the 0.0 of a strict ``>`` on exact zeros or the noise of one on floats."""
    rw, rl = beta * (pol_w - ref_w), beta * (pol_l - ref_l)
    d = (pol_w - ref_w) - (pol_l - ref_l)
    acc = (d > TIE).float() + 0.5 * (d.abs() <= TIE).float()
    return {"reward_chosen": float(rw.mean()), "reward_rejected": float(rl.mean()),
            "margin": float((rw - rl).mean()), "accuracy": float(acc.mean()),
            "logp_gap": float((pol_w - pol_l).mean())}  # fmt: skip


@torch.no_grad()
def evaluate_dpo(model, pairs: Sequence[TokenizedPair], ref_logps: torch.Tensor, pad_id: int, beta: float,
                 batch_size: int = 8, average: bool = False) -> dict[str, float]:  # fmt: skip
    was = model.training
    model.eval()
    pw, pl = [], []
    for s in range(0, len(pairs), batch_size):
        w, lo = pair_logps(model, collate(pairs[s : s + batch_size], pad_id), average)
        pw.append(w.float().cpu())
        pl.append(lo.float().cpu())
    model.train(was)
    return dpo_stats(torch.cat(pw), torch.cat(pl), ref_logps[:, 0], ref_logps[:, 1], beta)


def train_dpo(
    model,
    train: Sequence[TokenizedPair],
    pad_id: int,
    val: Sequence[TokenizedPair] = (),
    ref=None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    epochs: float = 1.0,
    batch_size: int = 4,
    lr: float = 5e-5,
    eval_every: int = 0,
    seed: int = 0,
    progress: bool = True,
    ckpt: LoopCheckpoints | None = None,
) -> list[dict[str, float]]:
    """DPO on ``train`` (AdamW, warm-up then linear decay, clipping at 1); returns the log, with held-out
    stats at step 0, every eval_every steps and at the end. IPO uses per-token mean log-probabilities, as
    TRL does."""
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.schedules import set_lr, warmup_stable_decay
    from lmforge.train.steps import LossBar, optimizer_step

    if not train:
        raise ValueError("no training pairs")
    average = loss_type == "ipo"
    ref_train = reference_logps(model, train, pad_id, ref, batch_size, average)
    ref_val = reference_logps(model, val, pad_id, ref, batch_size, average) if val else None
    n_steps = max(1, round(epochs * len(train) / batch_size))
    rnd = random.Random(seed)
    order: list[int] = []
    while len(order) < n_steps * batch_size:
        idx = list(range(len(train)))
        rnd.shuffle(idx)
        order += idx
    opt = AdamW(param_groups(model, 0.0), lr=lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    if not params:
        raise ValueError(
            "the policy has no trainable parameters (apply_lora, or leave the weights trainable)"
        )
    start, log = resume_loop(ckpt, n_steps, [model], opt)
    if val and start == 0:
        log.append(
            {
                "step": 0,
                **{
                    f"val_{k}": v
                    for k, v in evaluate_dpo(model, val, ref_val, pad_id, beta, average=average).items()
                },
            }
        )
    warm = max(1, n_steps // 10)
    model.train()
    bar = LossBar(n_steps, "dpo", progress)
    for step in range(start, n_steps):
        set_lr(opt, warmup_stable_decay(step, lr, 0.0, warm, n_steps, decay_fraction=1.0))
        idx = order[step * batch_size : (step + 1) * batch_size]
        w, lo = pair_logps(model, collate([train[i] for i in idx], pad_id), average)
        ref = ref_train[idx].to(w.device)
        loss, _ = dpo_loss(w, lo, ref[:, 0], ref[:, 1], beta, loss_type, label_smoothing)
        value = optimizer_step(opt, loss, params, 1.0, "DPO loss", step)
        rec = {
            "step": step + 1,
            "loss": value,
            **dpo_stats(w.detach(), lo.detach(), ref[:, 0], ref[:, 1], beta),
        }
        if val and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == n_steps):
            rec.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate_dpo(model, val, ref_val, pad_id, beta, average=average).items()
                }
            )
        log.append(rec)
        save_loop(ckpt, step + 1, n_steps, log, [model], opt)
        bar.update(value, **({"val_acc": rec["val_accuracy"]} if "val_accuracy" in rec else {}))
    bar.close()
    model.eval()
    return log
