"""Sampling: turning the model's next-token logits into a choice.

The model gives a score (logit) per vocabulary entry; softmax turns scores into probabilities. Greedy
decoding takes the argmax, which is repetitive and bland; sampling draws from the distribution, after
reshaping it:
  - temperature T divides the logits: T < 1 sharpens towards the argmax, T > 1 flattens;
  - top-k keeps the k best tokens (Fan et al. 2018);
  - top-p / nucleus keeps the smallest set whose probability reaches p (Holtzman et al. 2020);
  - min-p keeps tokens with at least min_p × the best token's probability (Nguyen et al. 2024);
  - the repetition penalty (Keskar et al. 2019, CTRL) divides positive / multiplies negative logits of
    tokens already seen; OpenAI's frequency and presence penalties subtract per occurrence / once;
  - logit bias adds a fixed amount to chosen tokens (−100 bans one).
`process_logits` applies them in transformers' order, so a seed gives the same choices as its
LogitsProcessors do (tests compare each step with them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NEG_INF = float("-inf")


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V), seen (B, S) token ids: seen tokens' logits shrink towards (or below) zero."""
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def frequency_presence_penalty(
    logits: torch.Tensor, seen: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's penalties: minus frequency × (times seen) and minus presence once if seen at all."""
    counts = torch.zeros_like(logits).scatter_add_(1, seen, torch.ones_like(seen, dtype=logits.dtype))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits per row (ties with the k-th are kept), the rest to -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - p  # the low tail whose mass stays within 1 - p
    remove[..., -min_keep:] = False
    return logits.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.max(dim=-1, keepdim=True).values
    order = torch.argsort(logits, descending=True)
    remove_sorted = remove.gather(1, order)
    remove_sorted[..., :min_keep] = False
    return logits.masked_fill(remove_sorted.scatter(1, order, remove_sorted), NEG_INF)


def process_logits(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply penalties, bias, temperature and the filters, in transformers' order. logits (B, V) float."""
    logits = logits.float()
    if seen is not None and seen.numel():
        if params.repetition_penalty != 1.0:
            logits = repetition_penalty(logits, seen, params.repetition_penalty)
        if params.frequency_penalty or params.presence_penalty:
            logits = frequency_presence_penalty(
                logits, seen, params.frequency_penalty, params.presence_penalty
            )
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        bias = torch.tensor(list(params.logit_bias.values()), device=logits.device, dtype=logits.dtype)
        logits = logits.index_add(1, ids, bias.expand(logits.shape[0], -1))
    if params.temperature == 0:
        return logits  # greedy: the filters cannot change the argmax
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    if params.min_p > 0.0:
        logits = min_p_filter(logits, params.min_p)
    return logits


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose one token per row (B,) from processed logits: argmax when greedy, else a draw."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
