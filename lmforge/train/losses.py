"""The language-modelling loss written out: cross-entropy via log-sum-exp, and bits per byte.

For logits z over V tokens and the true next token y, the model's probability is softmax(z)_y, and the
loss is its negative log:

    −log softmax(z)_y = log Σ_j exp(z_j) − z_y = logsumexp(z) − z_y

Computed naively, exp(z_j) overflows float32 once a logit passes ~88 (and bf16 logits do get there);
subtracting the row's maximum m first changes nothing mathematically (logsumexp(z) = m +
log Σ exp(z_j − m)) and keeps every exponent ≤ 0, so the sum lies in [1, V]. The trainer calls
F.cross_entropy (a fused kernel) and the tests check it equals this reference.
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
