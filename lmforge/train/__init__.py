"""Training: optimizers, learning-rate schedules and losses (the trainer lives in trainer.py).

The names below load on first use (PEP 562), not at import: `lmforge.train.config` is imported by the
CLI's argument parser, and importing this package must not pull in torch for every `lmforge` command.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "lmforge.train.optim": [
        "AdamW",
        "Muon",
        "build_optimizers",
        "clip_grad_norm_",
        "hidden_matrices",
        "newton_schulz",
        "param_groups",
    ],
    "lmforge.train.schedules": [
        "constant_with_warmup",
        "make_schedule",
        "set_lr",
        "warmup_cosine",
        "warmup_stable_decay",
    ],
    "lmforge.train.losses": ["bits_per_byte", "cross_entropy"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lmforge.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
