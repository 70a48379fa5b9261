"""Loaders: windows and best-fit packing, exact state restore, DDP ranks that split one global batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lmforge.data import PackedLoader, RandomWindowLoader, TokenShards, tokenize_corpus
from lmforge.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def shards(data, tmp_path_factory) -> TokenShards:
    """300 C4 pages (~170k SmolLM2 tokens) in shards of ~20k tokens: windows cross shard boundaries."""
    out = tmp_path_factory.mktemp("shards")
    tokenize_corpus(data / "text" / "c4_demo.jsonl", load_tokenizer("smollm2-135m-instruct"), out,
                    val_fraction=0.0, shard_tokens=20_000, workers=1, progress=False)  # fmt: skip
    s = TokenShards(out)
    assert len(s.shards) > 5
    return s


class Digits:
    """Documents of given lengths whose ids say where they come from: document d, token t → 1000·d + t."""

    def __init__(self, lengths: list[int]):
        self.tokens = np.concatenate([1000 * (d + 1) + np.arange(n) for d, n in enumerate(lengths)])
        self.doc_starts = np.cumsum([0] + lengths[:-1]).astype(np.int64)
        self.doc_ends = np.cumsum(lengths).astype(np.int64)
        self.num_documents, self.num_tokens, self.eos_id, self.split = (
            len(lengths),
            len(self.tokens),
            0,
            "train",
        )

    def read(self, start: int, n: int) -> np.ndarray:
        return self.tokens[start : start + n]


def through_torch_save(state):
    """A loader state as a checkpoint stores it (torch.save, then torch.load with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_random_windows(shards):
    loader = RandomWindowLoader(shards, 8, 64, seed=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # the rows are the windows at the generator's offsets, read across shard boundaries where they fall
    starts = torch.randint(0, shards.num_tokens - 64, (8,), generator=torch.Generator().manual_seed(3))
    tokens = torch.from_numpy(shards.tokens.astype(np.int64))
    assert torch.equal(x, torch.stack([tokens[s : s + 64] for s in starts]))
    assert torch.equal(RandomWindowLoader(shards, 8, 64, seed=3).next_batch()[0], x)  # seeded
    assert not torch.equal(RandomWindowLoader(shards, 8, 64, seed=4).next_batch()[0], x)


@pytest.mark.parametrize("kind", [RandomWindowLoader, PackedLoader])
def test_state_restore_is_exact(shards, kind):
    a = kind(shards, 4, 96, seed=7)
    for _ in range(5):
        a.next_batch()
    state = through_torch_save(a.state_dict())
    expected = [a.next_batch() for _ in range(6)]
    b = kind(shards, 4, 96, seed=123)  # another seed: the state decides everything
    b.load_state_dict(state)
    for e, g in zip(expected, [b.next_batch() for _ in range(6)], strict=True):
        assert all(torch.equal(u, v) for u, v in zip(e, g, strict=True))
    other = PackedLoader if kind is RandomWindowLoader else RandomWindowLoader
    with pytest.raises(ValueError, match="cannot restore"):
        other(shards, 4, 96).load_state_dict(state)


@pytest.mark.parametrize("kind", [RandomWindowLoader, PackedLoader])
def test_ranks_split_the_global_batch(shards, kind):
    one = kind(shards, 6, 32, seed=1)
    ranks = [kind(shards, 2, 32, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):  # rank 0's rows, then rank 1's, then rank 2's = one process's rows, step after step
        x, y = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(
            torch.cat([p[1] for p in parts]), y
        )
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        kind(shards, 2, 32, rank=2, world_size=2)


def test_packed_rows_on_real_data(shards):
    T = 256
    loader = PackedLoader(shards, 8, T, seed=0, return_segments=True)
    pad = total = 0
    for _ in range(10):
        x, y, seg, pos = loader.next_batch()
        assert x.shape == y.shape == seg.shape == pos.shape == (8, T) and x.dtype == torch.long
        assert (seg[:, 0] == 0).all() and (pos[:, 0] == 0).all()  # a row starts with a piece
        same = seg[:, 1:] == seg[:, :-1]
        # a target is the next token of the same piece; padding and piece boundaries are -100
        assert torch.equal(y[:, :-1] != -100, same & (seg[:, 1:] >= 0))
        assert torch.equal(y[:, :-1][same], x[:, 1:][same])
        # positions count up inside each piece and restart at the next one
        assert torch.equal(pos[:, 1:][same], pos[:, :-1][same] + 1) and (pos[:, 1:][~same] == 0).all()
        assert (x[seg < 0] == shards.eos_id).all()  # padding is the EOS id by default
        pad, total = pad + int((seg < 0).sum()), total + seg.numel()
    assert pad / total < 0.02  # best fit wastes little (C4 pages are long: most rows are one exact piece)


def test_best_fit_choice():
    # T + 1 = 10 tokens a row. With the buffer frozen after one fill (no new documents come in), each row
    # takes the largest piece that fits, then the largest that fits what is left: [9], [6, 4], [5, 3, 2]
    loader = PackedLoader(Digits([6, 5, 4, 3, 2, 9]), 2, 9, buffer_size=6)
    loader._fill()
    loader.buffer_size = 0
    x, y = loader.next_batch()
    ignore = -100
    assert x[0].tolist() == list(range(6000, 6009)) and y[0].tolist() == list(range(6001, 6009)) + [ignore]
    assert x[1].tolist() == [1000, 1001, 1002, 1003, 1004, 1005, 3000, 3001, 3002]
    assert y[1].tolist() == [1001, 1002, 1003, 1004, 1005, ignore, 3001, 3002, 3003]
    x, y = loader.next_batch()
    assert x[0].tolist() == [2000, 2001, 2002, 2003, 2004, 4000, 4001, 4002, 5000]
    assert y[0].tolist() == [2001, 2002, 2003, 2004, ignore, 4001, 4002, ignore, 5001]


def test_long_documents_are_cut_into_overlapping_pieces():
    # documents longer than T + 1 = 9 become pieces starting every T = 8 tokens (overlapping by one), so
    # every within-document pair (t, t + 1) is a target exactly once an epoch
    lengths = [30, 9, 10, 17, 3, 25, 2, 8, 40, 5]
    corpus = Digits(lengths)
    loader = PackedLoader(corpus, 4, 8, seed=2, buffer_size=4)
    pairs = []
    expected = sum(n - 1 for n in lengths)
    while len(pairs) < 3 * expected:
        x, y = loader.next_batch()
        keep = y != -100
        pairs += list(zip(x[keep].tolist(), y[keep].tolist(), strict=True))
    assert all(b == a + 1 and a // 1000 == b // 1000 for a, b in pairs)  # within one document, in order
    # no pair repeats within the first epoch (up to the pieces that may still wait in the buffer when the
    # next epoch's documents come in: ≤ 8 pieces of ≤ 8 pairs), and three epochs' worth covers every pair
    first = pairs[: expected - 64]
    assert len(set(first)) == len(first)
    every = {
        (1000 * (d + 1) + t, 1000 * (d + 1) + t + 1) for d, n in enumerate(lengths) for t in range(n - 1)
    }
    assert set(pairs) == every and len(every) == expected


def test_loader_errors(shards):
    with pytest.raises(ValueError, match="fewer than one window"):
        RandomWindowLoader(shards, 2, shards.num_tokens)
    with pytest.raises(ValueError, match="no documents to pack"):
        PackedLoader(Empty(), 2, 8)
    with pytest.raises(ValueError, match="must be positive"):
        PackedLoader(shards, 0, 8)


class Empty(Digits):
    def __init__(self):
        super().__init__([1])
        self.num_documents = 0
