"""Batches for the other pretraining objectives: masked language modeling and span corruption.

Masked LM (BERT, Devlin et al. 2019, §3.1). Choose 15% of the (non-special) tokens as prediction targets;
of those, replace 80% by [MASK], 10% by a random token and leave 10% unchanged. The model must predict
the original token at every chosen position (labels elsewhere are -100, ignored by the loss). Never
showing [MASK] alone matters: [MASK] never occurs at fine-tuning time, and the random/unchanged 20% force
the model to keep a good representation of *every* input token, since any of them might be a target.
Each token is chosen independently with probability `prob` (as Hugging Face's collator does), so the 15%
holds on average, not exactly per sequence.

Span corruption (T5, Raffel et al. 2020, §3.1.4). Drop contiguous spans — `noise_density` of the tokens
in spans of mean length `mean_span_length` — and replace each span by one sentinel token in the encoder
input; the decoder target lists each sentinel followed by the tokens it replaced, and ends with one more
sentinel (and EOS, when given):

    original: Thank you for inviting me to your party last week .
    inputs:   Thank you <X> me to your party <Y> week .
    targets:  <X> for inviting <Y> last <Z>

Targets are far shorter than the input (~ 2·0.15 of it), which makes the objective cheap. As in T5's
`random_spans_noise_mask`: num_noise = round(L · noise_density) (kept within [1, L - 1]), num_spans =
max(1, round(num_noise / mean_span_length)); noise and non-noise tokens are each cut into num_spans
non-empty spans uniformly at random, and spans alternate starting with non-noise (so the last span is
noise). Every row of a (B, L) batch has the same counts, so the outputs are rectangular.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class MaskingInfo:
    """What mlm_mask needs from a tokenizer: [MASK]'s id, the vocabulary size (random replacements are
    drawn from it) and the special ids that are never chosen nor drawn ([CLS], [SEP], [PAD], ...)."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_tokenizer(cls, tokenizer, mask_token: str = "[MASK]") -> MaskingInfo:
        mask_id = tokenizer.token_to_id(getattr(tokenizer, "mask_token", None) or mask_token)
        if mask_id is None:
            raise ValueError(f"the tokenizer has no mask token {mask_token!r}: masked LM needs one")
        specials = set(getattr(tokenizer, "special_tokens", {}).values()) | {mask_id}
        return cls(mask_id, int(tokenizer.vocab_size), tuple(sorted(specials)))


def mlm_mask(
    ids: torch.Tensor,
    info: MaskingInfo,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch of ids (any shape) → (inputs, labels), both the shape of ids.

    labels = the original id where the token was chosen, -100 elsewhere; special tokens are never chosen.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    special = torch.isin(ids, torch.tensor(info.special_ids, dtype=torch.long))
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels = torch.where(chosen, ids, IGNORE)
    # one more uniform draw per token decides what a chosen token becomes: [0, .8) mask, [.8, .9) random
    u = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (u < 0.8), info.mask_id, ids)
    # random replacements come from the ordinary tokens only: a random [CLS] or [PAD] would be noise of
    # another kind (and lets the model see specials where the data never has them)
    special_in_vocab = [i for i in info.special_ids if 0 <= i < info.vocab_size]
    ordinary = torch.ones(info.vocab_size, dtype=torch.bool)
    ordinary[torch.tensor(special_in_vocab, dtype=torch.long)] = False
    pool = ordinary.nonzero().squeeze(1)
    drawn = pool[torch.randint(0, len(pool), ids.shape, generator=generator)]
    inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), drawn, inputs)
    return inputs, labels


def span_corruption_lengths(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
                            ) -> tuple[int, int, int]:  # fmt: skip
    """(num_noise_tokens, num_spans, input_length) for a sequence of `length` tokens, as T5 counts them;
    the target length is num_noise_tokens + num_spans + 1 (+ 1 with an EOS)."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    # at least one span, and no more than the non-noise tokens can separate
    num_spans = min(max(1, round(num_noise / mean_span_length)), length - num_noise)
    return num_noise, num_spans, length - num_noise + num_spans


def _random_segmentation(rows: int, items: int, segments: int, generator: torch.Generator | None
                         ) -> torch.Tensor:  # fmt: skip
    """(rows, segments) positive lengths summing to `items`, each composition equally likely: choose
    segments - 1 distinct cut points among the items - 1 gaps."""
    if segments == 1:
        return torch.full((rows, 1), items, dtype=torch.long)
    cuts = torch.rand(rows, items - 1, generator=generator).argsort(dim=1)[:, : segments - 1] + 1
    cuts = cuts.sort(dim=1).values
    edges = torch.cat([torch.zeros(rows, 1, dtype=torch.long), cuts, torch.full((rows, 1), items)], dim=1)
    return edges.diff(dim=1)


def random_spans_noise_mask(rows: int, length: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """(rows, length) bool, True on noise: spans alternate non-noise, noise, ..., starting with non-noise."""
    num_noise, num_spans, _ = span_corruption_lengths(length, noise_density, mean_span_length)
    noise = _random_segmentation(rows, num_noise, num_spans, generator)  # (rows, S)
    keep = _random_segmentation(rows, length - num_noise, num_spans, generator)  # (rows, S)
    spans = torch.stack([keep, noise], dim=2).reshape(rows, 2 * num_spans)  # keep0, noise0, keep1, ...
    kind = torch.arange(2 * num_spans).remainder(2).bool().expand(rows, -1)  # False, True, False, ...
    return torch.stack([kind[r].repeat_interleave(spans[r]) for r in range(rows)])


def span_corruption(
    ids: torch.Tensor,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption of ids (L,) or (B, L) → (encoder_inputs, decoder_targets).

    sentinel_ids[k] stands for the k-th span (T5: <extra_id_k>); num_spans + 1 of them are needed.
    encoder_inputs: (B, L - num_noise + num_spans); decoder_targets: (B, num_noise + num_spans + 1), one
    more column each with eos_id. A 1-D input gives 1-D outputs.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    flat = ids.dim() == 1
    ids = ids.unsqueeze(0) if flat else ids  # (B, L)
    B, L = ids.shape
    num_noise, num_spans, _ = span_corruption_lengths(L, noise_density, mean_span_length)
    if len(sentinel_ids) < num_spans + 1:
        raise ValueError(f"{num_spans} spans need {num_spans + 1} sentinel ids, got {len(sentinel_ids)}")
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=torch.long)
    noise = random_spans_noise_mask(B, L, noise_density, mean_span_length, generator)  # (B, L)
    before = torch.cat([torch.zeros(B, 1, dtype=torch.bool), noise[:, :-1]], dim=1)
    noise_start = noise & ~before  # the first token of each noise span
    keep_start = ~noise & (before | (torch.arange(L) == 0))  # the first token of each non-noise span
    # inputs: non-noise tokens, and sentinel k in place of noise span k (its other tokens dropped)
    span_no = noise_start.cumsum(dim=1) - 1
    inputs = torch.where(noise_start, sentinels[span_no.clamp(min=0)], ids)[~noise | noise_start]
    # targets: noise tokens, each span preceded by its sentinel (which sits where non-noise span k starts:
    # non-noise span k comes right before noise span k), then the closing sentinel
    keep_no = keep_start.cumsum(dim=1) - 1
    targets = torch.where(keep_start, sentinels[keep_no.clamp(min=0)], ids)[noise | keep_start]
    inputs, targets = inputs.view(B, -1), targets.view(B, -1)
    tail = [sentinels[num_spans]] + ([torch.tensor(eos_id)] if eos_id is not None else [])
    targets = torch.cat([targets, torch.stack(tail).expand(B, -1)], dim=1)
    if eos_id is not None:
        inputs = torch.cat([inputs, torch.full((B, 1), eos_id)], dim=1)
    return (inputs[0], targets[0]) if flat else (inputs, targets)
