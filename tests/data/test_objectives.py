"""BERT's masking statistics and T5's span corruption format, on real token ids."""

from __future__ import annotations

import pytest
import torch

from lmforge.data import MaskingInfo, mlm_mask, random_spans_noise_mask, span_corruption
from lmforge.data.objectives import span_corruption_lengths
from lmforge.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def ids(data) -> torch.Tensor:
    """~200k SmolLM2 ids of Shakespeare as (100, 2000), with special ids sprinkled in (every 50th)."""
    tok = load_tokenizer("smollm2-135m-instruct")
    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:700_000]
    ids = torch.tensor(tok.encode(text)[:200_000]).view(100, 2000)
    ids[:, ::50] = torch.arange(17).repeat(100 * 40 // 17 + 1)[: 100 * 40].view(100, 40)  # ids 0..16
    return ids


def test_mlm_statistics(ids):
    info = MaskingInfo(mask_id=49151, vocab_size=49152, special_ids=tuple(range(17)))
    inputs, labels = mlm_mask(ids, info, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == ids.shape and inputs.dtype == labels.dtype == torch.long
    special = ids < 17
    chosen = labels != -100
    # specials: never chosen, never changed; labels are the originals where chosen
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.005
    n = chosen.sum()
    masked = (inputs[chosen] == info.mask_id).sum() / n
    unchanged = (inputs[chosen] == ids[chosen]).sum() / n
    random = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.015 and abs(random - 0.1) < 0.015 and abs(unchanged - 0.1) < 0.015
    replaced = inputs[chosen & (inputs != ids) & (inputs != info.mask_id)]
    assert (replaced >= 17).all() and (replaced < 49151).all()  # random tokens are ordinary tokens
    assert replaced.unique().numel() > 1000  # drawn from the whole vocabulary
    # the generator decides everything
    again = mlm_mask(ids, info, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    assert not torch.equal(mlm_mask(ids, info, generator=torch.Generator().manual_seed(1))[0], inputs)


def test_masking_info_from_bert_tokenizer():
    tok = load_tokenizer("all-minilm-l6-v2")
    info = MaskingInfo.from_tokenizer(tok)
    assert info.mask_id == 103 and info.vocab_size == 30522
    assert {0, 100, 101, 102, 103} <= set(info.special_ids)  # [PAD] [UNK] [CLS] [SEP] [MASK]
    with pytest.raises(ValueError, match="no mask token"):
        MaskingInfo.from_tokenizer(load_tokenizer("smollm2-135m-instruct"))


def reconstruct(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """Put each sentinel's span (from the targets) back in its place in the inputs."""
    spans, k = {}, None
    for t in targets:
        if t in sentinels:
            k = t
            spans[k] = []
        else:
            spans[k].append(t)
    return [x for i in inputs for x in (spans[i] if i in sentinels else [i])]


def test_span_corruption_format_and_round_trip(ids):
    batch = ids[:64, :512]  # (64, 512)
    # T5 appends 100 sentinels after its vocabulary, <extra_id_0> the last id: here 49251, 49250, ...
    sentinels = list(range(49152 + 99, 49152 - 1, -1))
    noise, spans, input_len = span_corruption_lengths(512, 0.15, 3.0)
    assert (noise, spans, input_len) == (77, 26, 461)
    inputs, targets = span_corruption(batch, sentinels, generator=torch.Generator().manual_seed(0), eos_id=2)
    assert inputs.shape == (64, input_len + 1) and targets.shape == (64, noise + spans + 2)
    for row_in, row_t, row in zip(inputs.tolist(), targets.tolist(), batch.tolist(), strict=True):
        assert row_in[-1] == 2 and row_t[-1] == 2  # EOS closes both
        row_in, row_t = row_in[:-1], row_t[:-1]
        # the inputs hold sentinels 0..S-1 in order; the targets start with sentinel 0, list each
        # sentinel followed by its span, and end with sentinel S
        assert [t for t in row_in if t in sentinels] == sentinels[:spans]
        assert [t for t in row_t if t in sentinels] == sentinels[: spans + 1]
        assert row_t[0] == sentinels[0] and row_t[-1] == sentinels[spans]
        assert not any(a in sentinels and b in sentinels for a, b in zip(row_t, row_t[1:]))  # no empty span
        assert reconstruct(row_in, row_t[:-1], sentinels) == row
    # rows differ; the same generator seed gives the same batch; a single sequence stays 1-D
    assert not torch.equal(inputs[0, :100], inputs[1, :100])
    one = span_corruption(batch[0], sentinels, generator=torch.Generator().manual_seed(0))
    assert one[0].dim() == 1 and one[0].numel() == input_len and one[1].numel() == noise + spans + 1


def test_noise_mask_statistics():
    mask = random_spans_noise_mask(2000, 100, 0.15, 3.0, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 15).all()  # exactly round(L · density) noise tokens in every row
    assert not mask[:, 0].any() and mask[:, -1].all()  # non-noise first, noise last (T5's layout)
    starts = mask & ~torch.cat([torch.zeros(2000, 1, dtype=torch.bool), mask[:, :-1]], 1)
    assert (starts.sum(1) == 5).all()  # round(15 / 3) spans, mean length 3
    # away from the ends (the first span is non-noise, the last noise) every position is noise about
    # equally often: the spans are spread uniformly
    freq = mask[:, 10:-10].float().mean(0)
    assert freq.min() > 0.10 and freq.max() < 0.17
    with pytest.raises(ValueError, match="27 spans need 28 sentinel ids"):
        span_corruption(torch.arange(530), list(range(10)))
