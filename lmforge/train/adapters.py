"""Bottleneck adapters and layer freezing: fine-tune a small part of a frozen model.

Adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): a small bottleneck MLP
with its own skip connection, inserted on a sublayer's output before the block's residual add:

    a(z) = z + W_up · act(W_down · z)        W_down (b, D), W_up (D, b), bottleneck b ≪ D
    h = h + attn(norm(h))   becomes   h = h + a(attn(norm(h)))        (and the same for the FFN)

Houlsby et al. put one after attention and one after the FFN, and trained the layer norms too; Pfeiffer et
al. 2021 ("AdapterFusion") found one after the FFN does about as well at half the cost, our default
(where=("ffn",)). W_up and its bias start at zero, so a(z) = z and the adapted model is exactly the
pretrained one at step 0 (W_down's first gradient is then 0 too; W_up's is not, and the two get going after
one step, as LoRA's A and B do). Each adapter has 2·D·b + b + D parameters; unlike LoRA it cannot be merged
into the weights (the non-linearity is in the way), so it costs a little at inference.

How it is inserted: the adapter is registered as a child of the sublayer (`layers.3.ffn.adapter`) and a
forward hook passes the sublayer's output through it. Wrapping the sublayer in a new module would do the
same, but would rename every pretrained weight under it (layers.3.ffn.up_proj → layers.3.ffn.inner.up_proj,
which checkpoints, LoRA targets and export match on) and hide what it is (`isinstance(block.ffn, MoE)`,
which the load-balancing loss relies on; `block.attn.sliding`). With the hook, all of that is unchanged.

Layer freezing: train only the last N blocks (and the final norm), or the modules some regexes name; the
rest is frozen. The lower layers of a language model hold general features and the upper ones the
task-specific ones, so the last few blocks are the cheapest place to adapt, and backward stops at the
first trained layer (less compute than LoRA, which backpropagates through every layer).

    names = add_adapters(model, bottleneck=64, where=("attn", "ffn"))   # everything else frozen
    names = freeze_layers(model, train_last=2)                           # layers.28.*, layers.29.*, norm.*
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from lmforge.model.layers import RMSNorm, activation

SUBLAYERS = ("attn", "ffn")


class Adapter(nn.Module):
    """Houlsby's adapter layer: z + up(act(down(z))), identity at initialisation. z (..., D) → (..., D)."""

    def __init__(self, dim: int, bottleneck: int = 64, act: str = "relu"):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be ≥ 1, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.up.bias)
        self.act_name, self.act = act, activation(act)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # the adapter stays float32 in a bf16 model (Adam's small steps would round away in bf16)
        h = self.act(self.down(z.to(self.down.weight.dtype)))  # (..., b)
        return z + self.up(h).to(z.dtype)  # (..., D)

    def extra_repr(self) -> str:
        return f"act={self.act_name}"


def _through_adapter(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """The forward hook: the sublayer's output → its adapter. A module-level function rather than a closure,
    so a deep copy of the model calls the copy's adapter, not the original's."""
    return module.adapter(output)


def add_adapters(
    model: nn.Module,
    bottleneck: int = 64,
    where: Sequence[str] = ("ffn",),
    act: str = "relu",
    train_norms: bool = False,
) -> list[str]:
    """Freeze model and add an adapter after the given sublayers ("attn", "ffn") of every block, in place.

    train_norms: also train every norm's gain (and bias), as Houlsby et al. did. Returns the names of the
    new adapter modules ("layers.0.ffn.adapter", ...)."""
    unknown = set(where) - set(SUBLAYERS)
    if unknown or not where:
        raise ValueError(f"where={tuple(where)!r}: give one or both of {SUBLAYERS}")
    model.requires_grad_(False)
    if train_norms:
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.requires_grad_(True)
    dim, names = model.config.dim, []
    for i, block in enumerate(model.layers):
        for sub in where:
            module = getattr(block, sub)
            if hasattr(module, "adapter"):
                raise ValueError(f"layers.{i}.{sub} has an adapter already")
            device = next(module.parameters()).device
            module.adapter = Adapter(dim, bottleneck, act).to(device)
            module.register_forward_hook(_through_adapter)
            names.append(f"layers.{i}.{sub}.adapter")
    return names


def _collapse(names: Sequence[str]) -> str:
    """layers.0.attn, layers.1.attn, ... → layers.*.attn: a readable list of module names."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names))


def freeze_layers(
    model: nn.Module,
    train_last: int | None = None,
    patterns: str | Sequence[str] = (),
    train_norm: bool = True,
) -> list[str]:
    """Freeze model but its last train_last blocks (+ the final norm if train_norm) and the modules that
    patterns name; returns the names of the parameters that train.

    patterns: regexes, each matched against whole module names (re.fullmatch: "layers\\.(10|11)",
    "layers\\.\\d+\\.ffn", "lm_head"); every parameter under a matched module trains. A pattern that
    matches no module is a ValueError that lists the model's modules."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if train_last is None and not patterns:
        raise ValueError("give train_last (the number of last blocks to train) or patterns (module regexes)")
    n_layers = len(model.layers)
    if train_last is not None and not 0 <= train_last <= n_layers:
        raise ValueError(f"train_last={train_last}: the model has {n_layers} blocks")
    model.requires_grad_(False)
    if train_last:
        for block in model.layers[n_layers - train_last :]:
            block.requires_grad_(True)
    if train_last is not None and train_norm:
        model.norm.requires_grad_(True)
    modules = dict(model.named_modules())
    for pattern in patterns:
        matched = [name for name in modules if name and re.fullmatch(pattern, name)]
        if not matched:
            names = [n for n in modules if n]
            raise ValueError(f"pattern {pattern!r} matches no module; the modules are: {_collapse(names)}")
        for name in matched:
            modules[name].requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]
