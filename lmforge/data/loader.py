"""Batches for next-token prediction: (x, y) LongTensors of shape (B, T), y = x shifted left by one.

Two ways to cut a token stream into rows of T + 1 tokens (x = row[:-1], y = row[1:]):

- `RandomWindowLoader` (nanoGPT): each row starts at a uniformly random offset of the split. Windows
  cross document boundaries; the EOS between documents tells the model that what follows is unrelated.
  No padding, no bookkeeping, and every offset is equally likely: the simplest unbiased sampler.
- `PackedLoader` (best-fit packing, as in nanochat and "Fewer Truncations Improve Language Modeling",
  Ding et al. 2024): whole documents are placed into rows so that a row starts at a document start, and
  no document is cut at a random place. Documents longer than T + 1 are split into pieces of T + 1
  tokens that overlap by one (piece k starts at k·T), so every next-token pair of the document is a
  target exactly once. Each row takes the largest buffered piece that fits the space left, then the
  largest that fits what remains, ...; the space no piece fits is padded (`pad_id`) and its targets are
  -100 (ignored by the loss), as is the target at each piece's last token (it would be the next piece's
  first token: unrelated text). With `return_segments=True` the loader also returns each token's piece
  number in its row (-1 on padding) and its position inside the piece, from which attention can be
  restricted to the token's own document and positions restarted at each document.

Exact resume. A loader's position is its `state_dict()` (plain ints and tensors, fit for
`torch.load(weights_only=True)`): the random generator's state for windows; the epoch, the cursor in the
epoch's document order and the buffer of waiting pieces for packing. A loader restored with
`load_state_dict` yields exactly the batches the uninterrupted one would have.

Ranks (data parallel). Every rank computes the same global batch of world_size × B rows and keeps rows
[rank·B, (rank + 1)·B): concatenated rank 0, 1, ..., the ranks' rows are exactly the rows one process with
batch world_size × B gets, in the same order, so N processes × B/N compute the same update as one × B.
Drawing the offsets (or laying out the pieces) for all rows is cheap; each rank reads only its own rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.data.shards import TokenShards

IGNORE = -100  # the target value cross-entropy skips (torch's ignore_index default)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


class RandomWindowLoader:
    """Random windows of T + 1 tokens (nanoGPT); `next_batch()` → (x, y), both (B, T) int64."""

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        _check_rank(rank, world_size)
        if shards.num_tokens < seq_len + 1:
            raise ValueError(
                f"the {shards.split} split has {shards.num_tokens} tokens, fewer than one window of "
                f"{seq_len + 1}: use a larger corpus or a shorter seq_len"
            )
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): (B, T) int64 each, y[:, i] = x[:, i + 1] in the text."""
        B, T = self.batch_size, self.seq_len
        # offsets for the whole global batch (every rank draws the same ones), then this rank's block
        starts = torch.randint(0, self.shards.num_tokens - T, (B * self.world_size,), generator=self.gen)
        mine = starts[self.rank * B : (self.rank + 1) * B].tolist()
        rows = torch.from_numpy(np.stack([self.shards.read(s, T + 1) for s in mine]).astype(np.int64))
        return rows[:, :-1], rows[:, 1:]  # (B, T), (B, T)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"loader": "random", "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("loader", "random") != "random":
            raise ValueError(f"a {state['loader']!r} loader's state cannot restore a random-window loader")
        self.gen.set_state(state["generator"])


class PackedLoader:
    """Whole documents packed into rows by best fit; `next_batch()` → (x, y) (B, T) int64, y = -100 where
    there is nothing to predict, or (x, y, segments, positions) with `return_segments=True`.

    buffer_size: pieces kept to choose from (more: fuller rows, at the cost of mixing documents from
    further apart in the shuffled order). pad_id: the filler of empty space (default: the shards' EOS).
    Documents are visited in a fresh random order each epoch (a permutation seeded by (seed, epoch)).
    """

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad_id: int | None = None, buffer_size: int = 1000,
                 return_segments: bool = False) -> None:  # fmt: skip
        _check_rank(rank, world_size)
        if shards.num_documents == 0:
            raise ValueError(f"the {shards.split} split has no documents to pack")
        if seq_len < 1 or batch_size < 1 or buffer_size < 1:
            raise ValueError("batch_size, seq_len and buffer_size must be positive")
        self.shards, self.batch_size, self.seq_len, self.seed = shards, batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.pad_id = shards.eos_id if pad_id is None else pad_id
        self.buffer_size, self.return_segments = buffer_size, return_segments
        self.epoch, self.cursor = 0, 0  # the next document is order(epoch)[cursor]
        self._order = self._permutation(0)
        self.serial = 0  # pieces ever buffered: a tie-break that makes equal lengths leave first-in first-out
        self._keys: list[tuple[int, int]] = []  # (length, -serial), sorted: bisect finds the best fit
        self._pieces: dict[int, tuple[int, int]] = {}  # serial → (start, length) in the split's token stream

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.shards.num_documents)

    def _push(self, start: int, length: int) -> None:
        self.serial += 1
        bisect.insort(self._keys, (length, -self.serial))
        self._pieces[self.serial] = (start, length)

    def _fill(self) -> None:
        """Top the buffer up with the next documents of the shuffled order, cut into pieces of ≤ T + 1."""
        T = self.seq_len
        while len(self._keys) < self.buffer_size:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            d = int(self._order[self.cursor])
            self.cursor += 1
            start, end = int(self.shards.doc_starts[d]), int(self.shards.doc_ends[d])
            # pieces overlap by one token (piece k starts at k·T): each pair (t, t+1) is inside one piece
            for s in range(start, max(end - 1, start + 1), T):
                self._push(s, min(T + 1, end - s))

    def _row(self) -> list[tuple[int, int]]:
        """The pieces (start, length) of one row: largest fitting piece first, until none fits."""
        self._fill()
        space, row = self.seq_len + 1, []
        while True:
            i = bisect.bisect_right(self._keys, (space, 0)) - 1  # the largest length ≤ space
            if i < 0:
                return row
            _, neg_serial = self._keys.pop(i)
            start, length = self._pieces.pop(-neg_serial)
            row.append((start, length))
            space -= length
            if space == 0:
                return row

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        B, T = self.batch_size, self.seq_len
        rows = [self._row() for _ in range(B * self.world_size)][self.rank * B : (self.rank + 1) * B]
        tokens = np.full((B, T + 1), self.pad_id, dtype=np.int64)
        segments = np.full((B, T + 1), -1, dtype=np.int64)
        positions = np.zeros((B, T + 1), dtype=np.int64)
        for b, row in enumerate(rows):
            at = 0
            for k, (start, length) in enumerate(row):
                tokens[b, at : at + length] = self.shards.read(start, length)
                segments[b, at : at + length] = k
                positions[b, at : at + length] = np.arange(length)
                at += length
        x, y = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:].copy())
        # a target counts only when it is the next token of the same piece (not padding, not a new piece)
        y[torch.from_numpy((segments[:, 1:] != segments[:, :-1]) | (segments[:, 1:] < 0))] = IGNORE
        if self.return_segments:
            return x, y, torch.from_numpy(segments[:, :-1]), torch.from_numpy(positions[:, :-1])
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        serials = sorted(self._pieces)
        buffer = torch.tensor([[s, *self._pieces[s]] for s in serials], dtype=torch.int64).reshape(-1, 3)
        return {"loader": "packed", "epoch": self.epoch, "cursor": self.cursor, "serial": self.serial,
                "buffer": buffer}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("loader") != "packed":
            raise ValueError(f"a {state.get('loader')!r} loader's state cannot restore a packed loader")
        self.epoch, self.cursor, self.serial = int(state["epoch"]), int(state["cursor"]), int(state["serial"])
        self._order = self._permutation(self.epoch)
        self._pieces = {int(s): (int(a), int(n)) for s, a, n in state["buffer"].tolist()}
        self._keys = sorted((n, -s) for s, (_, n) in self._pieces.items())
