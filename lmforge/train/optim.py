"""Optimizers: AdamW, Muon, which parameters get which, and gradient clipping.

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization") is Adam (Kingma & Ba 2015)
with the weight decay taken out of the gradient. Per parameter, at step t with gradient g:

    m = β1·m + (1 − β1)·g             running mean of the gradient (momentum)
    v = β2·v + (1 − β2)·g²            running mean of its square (per-coordinate scale)
    m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)   both start at 0: divide out that bias
    p = p − lr·wd·p                    decoupled decay: shrink the weight itself...
    p = p − lr·m̂ / (√v̂ + ε)            ...then the Adam step, whose size no longer depends on g's scale

Adding wd·p to the gradient instead (L2 regularisation, "Adam" with weight_decay) would divide the decay
by √v̂ too, so weights with large gradients would barely be decayed; decoupling makes the decay the same
relative shrink for every weight. Norm gains, biases and embeddings are not decayed (`param_groups`).

Muon (Keller Jordan 2024, "Muon: An optimizer for hidden layers in neural networks"; nanochat and the
modded-nanogpt speedruns train with it) runs SGD with Nesterov momentum, then replaces each 2-D update
matrix G = U·S·Vᵀ by (approximately) its orthogonal part U·Vᵀ: every direction the update moves in gets
the same step, rather than the few dominant ones that raw gradients of transformer weights favour. The
orthogonalization is a quintic Newton–Schulz iteration, a few matmuls that run fine in bfloat16. Muon is
only for hidden matrices; embeddings, the output head, gains and biases stay on AdamW (`build_optimizers`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

ParamsT = Iterable[torch.Tensor] | Iterable[dict]


# ------------------------------------------------------------------------------------------ AdamW


class AdamW(torch.optim.Optimizer):
    """AdamW written out; equal to torch.optim.AdamW (amsgrad=False) to float32 rounding.

    The state per parameter uses torch's names (step, exp_avg, exp_avg_sq), so a state_dict of torch's
    AdamW loads into ours. (Not the other way round: torch's AdamW is Adam with a group flag
    `decoupled_weight_decay` that our groups lack, and torch fills it in as False: plain L2 Adam.) foreach=True runs the same formula on a whole group at once with
    torch._foreach_* ops (one kernel per op for all tensors instead of one per tensor); None picks it
    when the parameters are on a GPU, where the per-tensor launch overhead is what it saves.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        foreach: bool | None = None,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW needs lr, eps, weight_decay ≥ 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW needs betas in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:  # lazily, so parameters that never get a gradient cost no memory
                    state["step"] = torch.tensor(0.0)  # a tensor, as torch keeps it: state_dicts interchange
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            (_adamw_foreach if foreach else _adamw_readable)(params, self.state, group)
        return loss


def _adamw_readable(params: list[torch.Tensor], states, group: dict) -> None:
    """One tensor at a time: the formula of the module docstring, line by line."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for p in params:
        g, state = p.grad, states[p]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        t = state["step"].item()
        m.lerp_(g, 1 - beta1)  # m = β1·m + (1 − β1)·g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = β2·v + (1 − β2)·g²
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        p.mul_(1 - lr * wd)  # decoupled decay, before the step (as the paper's Algorithm 2 and torch)
        # lr·m̂ / (√v̂ + ε) with m̂ = m / bias1, √v̂ = √v / √bias2; dividing the scalars first saves two
        # full-size temporaries and is exactly how torch orders the float32 operations.
        denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bias1)


def _adamw_foreach(params: list[torch.Tensor], states, group: dict) -> None:
    """The same update with each line applied to the whole list of tensors at once."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    grads = [p.grad for p in params]
    ms = [states[p]["exp_avg"] for p in params]
    vs = [states[p]["exp_avg_sq"] for p in params]
    steps = [states[p]["step"] for p in params]
    torch._foreach_add_(steps, 1)
    ts = [s.item() for s in steps]  # usually all equal, but a parameter may have missed steps
    torch._foreach_lerp_(ms, grads, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in ts])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, ms, denom, [-lr / (1 - beta1**t) for t in ts])


# ------------------------------------------------------------------------------------------ what to decay


def embedding_weights(model: nn.Module) -> set[int]:
    """ids of every nn.Embedding weight, so a tied output head (the same tensor) counts as one too."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: [decayed: ≥2-D weight matrices, not decayed: norms, biases, embeddings].

    Weight decay pulls weights towards 0, which regularises a linear map's matrix. It is the wrong pull
    for a norm's gain (towards erasing the layer's output), a bias (no reason to prefer 0) and an
    embedding row (a token seen rarely would be decayed between its updates until it is near the origin);
    nanoGPT and most LLM recipes exempt them. A tied output head is the embedding matrix, so it is not
    decayed either; an untied head is a linear layer and is. Frozen parameters are left out.
    """
    embeds = embedding_weights(model)
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a shared (tied) tensor once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeds else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# ------------------------------------------------------------------------------------------ Muon

# Keller Jordan's quintic coefficients: chosen to make the slope at 0 as steep as possible (small
# singular values grow fast) while still pulling everything into a band around 1 within 5 steps. The
# price is that the result's singular values land in roughly [0.7, 1.2] rather than exactly at 1, which
# does not hurt training (U·S'·Vᵀ with S' ≈ I is as good an update as U·Vᵀ).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """≈ U·Vᵀ for g = U·S·Vᵀ (the orthogonal polar factor), by the quintic Newton–Schulz iteration.

    X ← a·X + b·(X Xᵀ) X + c·(X Xᵀ)² X maps each singular value σ to p(σ) = aσ + bσ³ + cσ⁵ and leaves
    U and V alone, so iterating p pushes every σ towards the band near 1. It starts from g / ‖g‖_F,
    which puts every σ in [0, 1] (the spectral norm is at most the Frobenius norm), where p converges.
    A wide matrix keeps X Xᵀ small: a tall one is transposed first and back at the end. Computed in
    bfloat16 like the reference: the iteration is self-correcting, so its low precision costs nothing,
    and on GPUs the matmuls run at bf16 speed. Returns bfloat16 of g's shape.
    """
    if g.ndim != 2:
        raise ValueError(f"Newton–Schulz orthogonalizes matrices, got a tensor of shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D hidden weight matrices only.

    Per matrix p with gradient g:

        buf = μ·buf + (1 − μ)·g                          momentum (an average, so its scale is g's)
        u = (1 − μ)·g + μ·buf   if nesterov else buf     Nesterov: look one momentum step ahead
        O = newton_schulz(u)                              ≈ U·Vᵀ: every singular value ≈ 1
        p = p − lr·wd·p − lr·√max(1, rows/cols)·O

    O's entries have RMS √(1/max(rows, cols)); the √max(1, rows/cols) factor gives tall matrices (an MLP's
    down projection seen as out × in) the same per-entry step as wide ones. weight_decay is decoupled as in
    AdamW (0 by default, as in the reference; nanochat and Moonlight decay the Muon matrices).
    The gradient itself is not modified (the reference overwrites it with the Nesterov blend).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or not 0.0 <= momentum < 1.0 or ns_steps < 1:
            raise ValueError(
                f"Muon needs lr ≥ 0, momentum in [0, 1), ns_steps ≥ 1; got {lr}, {momentum}, {ns_steps}"
            )
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon is for 2-D weight matrices; got a parameter of shape {tuple(p.shape)} "
                        "(give embeddings, gains and biases to AdamW: see build_optimizers)"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                o = newton_schulz(update, group["ns_steps"])
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)
        return loss


def hidden_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The 2-D weights Muon should train: every matrix except embeddings and the output head.

    The embedding is a lookup table (each step touches a few rows, and the rows are not a linear map
    to orthogonalize) and the head maps to the vocabulary, whose logits Muon's uniform step sizes do not
    suit; Keller Jordan and nanochat keep both on AdamW. A 1 × n or n × 1 "matrix" (Qwen-MoE's shared
    expert gate) is a vector: orthogonalizing it would just normalize it, so it goes to AdamW too.
    """
    exclude = embedding_weights(model)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module):
        exclude |= {id(p) for p in head.parameters()}
    return [
        p
        for p in model.parameters()
        if p.requires_grad and p.ndim == 2 and min(p.shape) > 1 and id(p) not in exclude
    ]


def build_optimizers(
    model: nn.Module, lr_adamw: float, lr_muon: float, weight_decay: float
) -> list[torch.optim.Optimizer]:
    """[Muon for the hidden matrices, AdamW for the rest], as nanochat trains.

    Both groups carry `lr_scale` (the trainer sets each group's lr to schedule(step) · lr_scale, with
    the schedule's peak at lr_adamw), so Muon runs at lr_muon and AdamW at lr_adamw at the peak and both
    follow the same warmup and decay. The hidden matrices are decayed by Muon with `weight_decay`; in
    AdamW only an untied output head is (embeddings, gains and biases never are: `param_groups`).
    """
    if lr_adamw <= 0:
        raise ValueError(f"lr_adamw must be > 0 (it is the schedule's peak), got {lr_adamw}")
    hidden = hidden_matrices(model)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
    muon = Muon([{"params": hidden, "lr_scale": lr_muon / lr_adamw}], lr=lr_muon, weight_decay=weight_decay)
    embeds = embedding_weights(model)
    decay = [p for p in rest if p.ndim >= 2 and id(p) not in embeds]
    no_decay = [p for p in rest if not (p.ndim >= 2 and id(p) not in embeds)]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    adamw = AdamW([g for g in groups if g["params"]], lr=lr_adamw)
    return [muon, adamw]


# ------------------------------------------------------------------------------------------ clipping


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor] | torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before.

    The norm is over every gradient as one long vector (√Σ‖g‖²), and all of them are scaled by the same
    max_norm / (norm + 1e-6) when that is below 1: the update's direction is kept, only a rare huge step
    (a bad batch, a loss spike) is shortened. Equal to torch.nn.utils.clip_grad_norm_. A non-finite norm
    is returned as is and the gradients are left alone: the trainer decides (skip, stop, lower the loss
    scale). No .item(): on a GPU the check stays on the device, with no wait for the host.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g).to(device) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    coef = torch.where(torch.isfinite(total), coef, torch.ones_like(coef))  # non-finite: do not touch
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total
