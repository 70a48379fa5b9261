"""Learning-rate schedules: lr as a function of the step, and setting it on the optimizers.

Every schedule starts with a linear **warmup**: Adam's second-moment estimate v is an average of a
handful of squared gradients in the first steps, so √v̂ is noisy and often too small, and a full-size
step then can throw the freshly initialised weights into a bad region (and, with post-norm or no
warmup, diverge). Ramping lr from max_lr/warmup up to max_lr over `warmup` steps lets v settle first.

Then:
- **cosine** (Loshchilov & Hutter 2017, SGDR; GPT-3, Chinchilla, nanoGPT): from max_lr down to min_lr
  along half a cosine, reaching min_lr at `total`. The run's length must be fixed in advance: a model
  checkpointed mid-way has not had its decay.
- **warmup–stable–decay** (WSD; Hu et al. 2024, MiniCPM; Hägele et al. 2024): max_lr for most of the
  run, then a short decay to min_lr in the last `decay_fraction` of the steps. The loss drops sharply
  during the decay and the final loss matches cosine's; since the stable phase does not depend on the
  total, one long run can be branched into decays at several lengths (cheap scaling-law sweeps), or
  extended. Our decay is linear by default (MiniCPM's exponential and Hägele et al.'s "1 − sqrt" are
  alternatives; `shape="1-sqrt"` gives the latter, which they found slightly better).
- **constant** after warmup: fine-tuning and debugging.

All of them take the step counted from 0 and stay at their final value past `total`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable

import torch


def _check(max_lr: float, min_lr: float, warmup: int, total: int) -> None:
    if max_lr < 0 or min_lr < 0 or warmup < 0 or total < 0:
        raise ValueError(
            f"schedule needs max_lr, min_lr, warmup, total ≥ 0; got {max_lr}, {min_lr}, {warmup}, {total}"
        )


def _warmup(step: int, max_lr: float, warmup: int) -> float:
    """(step + 1) / warmup of max_lr: the first step already moves (a 0 lr step would be wasted) and
    step warmup − 1 reaches max_lr."""
    return max_lr * (step + 1) / warmup


def warmup_cosine(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup, then half a cosine from max_lr (at step `warmup`) to min_lr (at step `total`)."""
    _check(max_lr, min_lr, warmup, total)
    if step < warmup:
        return _warmup(step, max_lr, warmup)
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 → 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(
    step: int,
    max_lr: float,
    min_lr: float,
    warmup: int,
    total: int,
    decay_fraction: float = 0.2,
    shape: str = "linear",
) -> float:
    """Linear warmup, max_lr until the last `decay_fraction` of `total` steps, then down to min_lr at `total`.

    shape "linear": lr falls linearly; "1-sqrt": max_lr − (max_lr − min_lr)·√progress (fast at first,
    flat at the end; Hägele et al. 2024).
    """
    _check(max_lr, min_lr, warmup, total)
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    if shape not in ("linear", "1-sqrt"):
        raise ValueError(f"unknown decay shape {shape!r}; use 'linear' or '1-sqrt'")
    if step < warmup:
        return _warmup(step, max_lr, warmup)
    if step >= total:
        return min_lr
    decay_start = max(warmup, total - round(decay_fraction * total))  # the decay never eats the warmup
    if step < decay_start:
        return max_lr
    progress = (step - decay_start) / (total - decay_start)  # 0 → 1 (total > decay_start here)
    if shape == "1-sqrt":
        progress = math.sqrt(progress)
    return max_lr + (min_lr - max_lr) * progress


def constant_with_warmup(step: int, max_lr: float, warmup: int) -> float:
    """Linear warmup, then max_lr for ever."""
    _check(max_lr, 0.0, warmup, 0)
    return _warmup(step, max_lr, warmup) if step < warmup else max_lr


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": warmup_cosine,
    "wsd": warmup_stable_decay,
    "constant": constant_with_warmup,
}
ALIASES = {fn.__name__: name for name, fn in SCHEDULES.items()}


def make_schedule(name: str, **kw) -> Callable[[int], float]:
    """The schedule `name` ("cosine", "wsd", "constant" or a function's name) as a function step → lr.

    Keywords a schedule does not use (min_lr and total for "constant") are dropped, so one call site
    can build any of them; a keyword that no schedule knows is an error (a typo should not be ignored).
    """
    fn = SCHEDULES.get(ALIASES.get(name, name))
    if fn is None:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    known = {k for f in SCHEDULES.values() for k in inspect.signature(f).parameters} - {"step"}
    unknown = set(kw) - known
    if unknown:
        raise TypeError(f"make_schedule got unknown keyword(s) {sorted(unknown)}; known: {sorted(known)}")
    takes = inspect.signature(fn).parameters
    schedule = functools.partial(fn, **{k: v for k, v in kw.items() if k in takes})
    schedule(0)  # check the arguments now, not at the first training step
    return schedule


def set_lr(optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer], lr: float) -> None:
    """Give every param group lr · its `lr_scale` (1 if absent): Muon's groups carry lr_muon / lr_adamw,
    so one schedule drives optimizers with different peak rates (see optim.build_optimizers)."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
