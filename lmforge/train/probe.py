"""Linear probes: a logistic-regression head trained on a frozen model's last-token features.

The cheapest fine-tuning there is. The backbone runs once per input (no backward pass, no optimizer
state), and only D + 1 numbers are learnt: a new output row, like the "yes" row of the unembedding, but
fitted to labels instead of pretraining text. Alain & Bengio (2016, "Understanding intermediate layers
using linear classifier probes") use it to ask what a representation already encodes; on a CPU it also
turns a 135M model into a usable classifier in minutes where LoRA takes an hour.

Two uses here:
- a yes/no reader (bench/bench_rag_reader.py): features of "passage + question", label yes/no;
- a reward model with a frozen backbone (lmforge.train.reward.fit_reward_head): Bradley–Terry on
  feature differences, p(chosen ≻ rejected) = σ(w·(h_chosen − h_rejected)), which is logistic
  regression without a bias on h_chosen − h_rejected.

Features are standardised inside the fit (the final RMSNorm leaves a few dimensions hundreds of times
larger than the rest, which would make one L2 penalty mean different things per dimension) and the
scaling is folded back into (w, b), so a caller applies the head to raw features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


@torch.inference_mode()
def last_token_features(model, sequences: Sequence[Sequence[int]], progress: bool = False) -> torch.Tensor:
    """(N, D) float32: the final-norm hidden state of each sequence's last token, one row at a time (rows
    differ in length, and on a CPU a padded batch costs as much as its rows run alone)."""
    if not sequences:
        raise ValueError("no sequences to featurise")
    dev = next(model.parameters()).device
    out = []
    for ids in tqdm(sequences, desc="features", unit="seq", disable=not progress):
        if len(ids) == 0:
            raise ValueError("an empty sequence has no last token")
        h = model.norm(model.hidden_states(torch.tensor([list(ids)], device=dev)))  # (1, T, D)
        out.append(h[0, -1].float().cpu())
    return torch.stack(out)  # (N, D)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, bias: bool = True, max_iter: int = 200
) -> tuple[torch.Tensor, float]:
    """(w (D,), b) minimising mean BCE(x·w + b, y) + l2/2 · |w|² on standardised x, returned for raw x.

    y holds 0/1 labels (N,). With bias=False the features are scaled but not centred, and b = 0 (the
    Bradley–Terry form: a difference of two rewards has no intercept)."""
    x, y = x.double(), y.double()
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"expected x (N, D) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    mu = x.mean(0) if bias else torch.zeros(x.shape[1], dtype=x.dtype)
    sd = x.std(0).clamp_min(1e-8) if len(x) > 1 else torch.ones(x.shape[1], dtype=x.dtype)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=bias)
    params = [w, b] if bias else [w]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw.float(), float(b.detach() - (mu / sd) @ w.detach())


def group_folds(groups: Sequence, k: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index per row, rows of one group (e.g. questions sharing a passage) in the same fold."""
    uniq = list(dict.fromkeys(groups))
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} groups cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[g]: i % k for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def cross_val_scores(
    x: torch.Tensor,
    y: torch.Tensor,
    folds: np.ndarray,
    l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold logits (N,) and the L2 chosen for each fold.

    For each fold, L2 is picked by an inner cross-validation on the other folds only (log-loss), then the
    head is refitted on all of them: the held-out fold never informs any choice, so the out-of-fold
    accuracy is an honest estimate."""
    scores = np.zeros(len(x), np.float64)
    chosen = []
    for f in np.unique(folds):
        train = folds != f
        inner = folds[train]
        xt, yt = x[train], y[train]
        best, best_loss = l2_grid[0], float("inf")
        for l2 in l2_grid:
            loss = 0.0
            for g in np.unique(inner):
                w, b = fit_logistic(xt[inner != g], yt[inner != g], l2)
                s = xt[inner == g] @ w + b
                loss += float(F.binary_cross_entropy_with_logits(s, yt[inner == g].float(), reduction="sum"))
            if loss < best_loss:
                best, best_loss = l2, loss
        w, b = fit_logistic(xt, yt, best)
        scores[~train] = (x[~train] @ w + b).numpy()
        chosen.append(best)
    return scores, chosen
