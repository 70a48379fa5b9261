"""The inner step that every small training loop here shares: backward, clip, step, and a loss bar.

The pretraining trainer has its own loop (accumulation, AMP, checkpoints); the fine-tuning loops —
contrastive embedders, cross-encoders, SFT, reward models, DPO — are short and all end each step the same
way. A non-finite loss stops training *before* the optimizer applies it, so the weights are never
overwritten with NaN and the message says what to change.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmforge.train.optim import clip_grad_norm_


def optimizer_step(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.Tensor],
    max_norm: float | None = 1.0,
    what: str = "loss",
    step: int = 0,
) -> float:
    """zero_grad → backward → clip the gradient norm → step; returns the loss as a float."""
    value = loss.item()
    if value != value or value in (float("inf"), float("-inf")):
        raise FloatingPointError(
            f"{what} is {value} at step {step}: lower the learning rate or check the data"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm is not None:
        clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    opt.step()
    return value


class LossBar:
    """A tqdm bar showing the last loss, or nothing when ``enabled`` is False (tests, libraries)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step")

    def update(self, loss: float, **extra: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.3g}" for k, v in extra.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
