"""The language-modelling loss written out: cross-entropy via log-sum-exp, and bits per byte.

For logits z over V tokens and the true next token y, the model's probability is softmax(z)_y, and the
loss is its negative log:

    −log softmax(z)_y = log Σ_j exp(z_j) − z_y = logsumexp(z) − z_y

Computed naively, exp(z_j) overflows float32 once a logit passes ~88 (and bf16 logits do get there);
subtracting the row's maximum m first changes nothing mathematically (logsumexp(z) = m +
log Σ exp(z_j − m)) and keeps every exponent ≤ 0, so the sum lies in [1, V]. The tests check
F.cross_entropy (a fused kernel) equals this reference.

The unembedding and the loss together (`linear_cross_entropy`): with a large vocabulary the logits are
the biggest tensor of a training step — Gemma 3's 262,144 entries per token make 1 GB of float32 for a
batch of 1,024 tokens, and autograd keeps the logits, their log-softmax and their gradient alive at
once. The gradient of the loss with respect to the logits is known in closed form, softmax(z) − onehot(y)
(divided by the number of scored tokens), so it can be computed right where the logits are, a chunk of
rows at a time, and multiplied through the unembedding at once: dh = dz W and dW = dzᵀ h. Only those
(N, D) and (V, D) results outlive the chunk. This is the fused linear cross-entropy of Liger Kernel
(Hsu et al. 2024) and Cut Cross-Entropy (Wijmans et al. 2024): the same numbers, a fraction of the
memory, and fewer passes over the logits. The trainer's `lm_loss` uses it for our decoder's plain head.
"""

from __future__ import annotations

import math

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean of logsumexp(logits) − logits[target] over the positions whose target is not ignore_index.

    logits (..., V), e.g. (B, T, V); targets (...) of token ids. Positions with ignore_index (padding,
    prompt tokens in fine-tuning) neither add to the sum nor to the count; with none left the mean is
    0/0 = nan, as in F.cross_entropy. Computed in float32 whatever the logits' dtype.
    """
    z = logits.float().reshape(-1, logits.shape[-1])  # (N, V)
    y = targets.reshape(-1)  # (N,)
    keep = y != ignore_index
    m = z.max(dim=-1, keepdim=True).values.detach()  # a constant shift: no gradient needed through it
    lse = m.squeeze(-1) + torch.log(torch.exp(z - m).sum(dim=-1))  # (N,)
    target_logit = z.gather(1, torch.where(keep, y, 0)[:, None]).squeeze(1)  # ignored rows read id 0
    nll = torch.where(keep, lse - target_logit, 0.0)
    return nll.sum() / keep.sum()


def _linear_ce_chunks(h, weight, targets, softcap, chunk_rows, need_h, need_w, ignore_index):
    """Σ of the per-token losses of (h Wᵀ) against targets, chunk_rows rows at a time; with need_h / need_w
    also the gradients of that sum with respect to h (N, D) and weight (V, D), else None."""
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    for start in range(0, h.shape[0], chunk_rows):
        hc, yc = h[start : start + chunk_rows], targets[start : start + chunk_rows]  # (n, D), (n,)
        z = (hc @ weight.T).float()  # (n, V): the logits in the model's dtype, the loss in float32
        if softcap is not None:  # Gemma 2's final soft cap c·tanh(z/c)
            tanh = torch.tanh(z.div_(softcap))
            z = tanh * softcap
        keep = yc != ignore_index
        y = torch.where(keep, yc, 0)[:, None]  # ignored rows read id 0 and are zeroed below
        lse = torch.logsumexp(z, dim=-1)  # (n,)
        loss += torch.where(keep, lse - z.gather(1, y).squeeze(1), 0.0).sum()
        if not (need_h or need_w):
            continue
        dz = z.sub_(lse[:, None]).exp_()  # softmax(z), in place of the logits: (n, V)
        dz.scatter_add_(1, y, torch.full_like(y, -1, dtype=dz.dtype))  # − onehot(y)
        dz.mul_(keep[:, None])  # an ignored token contributes no gradient
        if softcap is not None:
            dz.mul_(1 - tanh * tanh)  # d(c·tanh(x/c))/dx = 1 − tanh²
        if need_h:
            grad_h[start : start + chunk_rows] = dz.to(weight.dtype) @ weight  # (n, D)
        if need_w:
            grad_w.addmm_(dz.T, hc.float())  # (V, D)
    return loss, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients (see _linear_ce_chunks); backward only scales them."""

    @staticmethod
    def forward(ctx, h, weight, targets, softcap, chunk_rows, ignore_index):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total, grad_h, grad_w = _linear_ce_chunks(h, weight, targets, softcap, chunk_rows, need_h, need_w,
                                                  ignore_index)  # fmt: skip
        n = (targets != ignore_index).sum()  # the mean's denominator; 0 gives nan, as F.cross_entropy
        ctx.save_for_backward(
            None if grad_h is None else grad_h / n.to(grad_h.dtype),
            None if grad_w is None else (grad_w / n).to(weight.dtype),
        )
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
            None if grad_w is None else grad_w * grad_out.to(grad_w.dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None = None,
    ignore_index: int = -100,
    chunk_bytes: int = 1 << 26,
) -> torch.Tensor:
    """cross_entropy(c·tanh((h Wᵀ)/c) or h Wᵀ, targets) without ever holding the (N, V) logits: h (N, D) the
    normed hidden states, weight (V, D) the unembedding, targets (N,). The logits are made chunk_bytes
    of float32 at a time (64 MB: 64 rows of Gemma's vocabulary, 341 of SmolLM2's); equal to
    F.cross_entropy of the full logits, its gradients included, up to float rounding."""
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or targets.shape != h.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy wants h (N, D), weight (V, D), targets (N,); got {tuple(h.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    chunk_rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, softcap, chunk_rows, ignore_index)
    total, _, _ = _linear_ce_chunks(h, weight, targets, softcap, chunk_rows, False, False, ignore_index)
    return total / (targets != ignore_index).sum()


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Bits per byte: the loss in bits spread over the UTF-8 bytes of the text, not over its tokens.

    The mean loss per token depends on the tokenizer: a larger vocabulary cuts the same text into
    fewer, longer tokens, each harder to predict, so losses of models with different tokenizers are not
    comparable. The total (mean × n_tokens nats) is the code length of the whole text under the model,
    whatever the cutting; divided by ln 2 it is in bits, and divided by the text's byte count it is a
    compression rate of the text itself — comparable across tokenizers, and with byte-level models and
    compressors (gzip manages about 2–3 bits per byte on English).

        bpb = mean_loss_nats · n_tokens / (ln 2 · n_bytes)
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return float(mean_loss_nats) * n_tokens / (math.log(2) * n_bytes)
