"""Batches for next-token prediction: random windows of the token stream (as nanoGPT samples them).

Each row is T + 1 consecutive tokens from a random offset; x is the first T, y the last T (shifted by
one). Windows cross document boundaries — the EOS separator between documents teaches the model that
what follows is unrelated. The position in the data is the state of one random generator, so
`state_dict()` / `load_state_dict()` restore the exact stream of batches (a resumed run sees what the
uninterrupted one would have). With several processes (rank r of N) every process draws the same N × B
offsets and keeps rows r, r + N, ...: together they cover exactly the rows one process with batch N × B
would, so data parallel training computes the same step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lmforge.data.shards import TokenShards


class RandomWindowLoader:
    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        if shards.num_tokens < seq_len + 2:
            raise ValueError(
                f"the {shards.split} split has {shards.num_tokens} tokens, fewer than one window of "
                f"{seq_len + 1}: use a larger corpus or a shorter seq_len"
            )
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): (B, T) int64 each, y[:, i] = x[:, i + 1] in the text."""
        high = self.shards.num_tokens - self.seq_len - 1
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.gen)
        starts = starts[self.rank :: self.world_size].tolist()
        rows = np.stack([self.shards.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["generator"])
