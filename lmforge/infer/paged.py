"""A paged KV cache: keys and values live in fixed-size blocks, and each sequence keeps a block table.

PagedAttention (Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", vLLM) borrows virtual memory's idea. A static cache (kv_cache.py) gives every sequence
one contiguous max_len buffer, so a batch of short answers wastes most of it and a new sequence needs a
whole free buffer. Here the memory is one pool of `num_blocks` blocks of `block_size` tokens per layer;
a sequence owns a list of block ids (its block table), token i of it lives in block table[i //
block_size] at slot i % block_size, and blocks come from and go back to a free list. So:
  - no fragmentation: any free block serves any sequence, whatever its length (at most one partly
    filled block per sequence is unused);
  - memory is bounded by the pool, whose size is chosen once, up front:
        bytes = 2 (k and v) × n_layers × H_kv × D × block_size × num_blocks × dtype size
    (SmolLM2-135M in float32: 2 × 30 × 3 × 64 × 4 bytes = 46 KB per token);
  - the block table is the indirection: a sequence's keys need not be contiguous, and sequences of
    different lengths share one batch.

`PagedKVCache.view(seq_ids)` is what a forward pass gets as `cache=`: `.length` is each row's length,
`.update` writes the new tokens into their blocks and gathers every row's keys back into one padded
(B, H_kv, S, D) tensor through a padded block-table tensor (one indexing op, no loop over rows; the
attention mask built from per-row lengths hides the padding), `.advance` moves the lengths on. vLLM's
kernel reads the blocks inside attention; in plain PyTorch one gather per layer does it. Sliding-window
layers keep every token here too: the mask does the windowing.
"""

from __future__ import annotations

import torch

from lmforge.model.config import ModelConfig


class PagedKVCache:
    """A pool of KV blocks, (n_layers, num_blocks, H_kv, block_size, D) for k and for v, with block tables."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        shape = (cfg.n_layers, num_blocks, cfg.n_kv_heads, block_size, cfg.head_dim)
        # Zeros, not empty: padded rows read unused or stale blocks, and the mask only hides them if they
        # hold finite numbers (0 × NaN is still NaN). Stale keys of freed blocks are finite: no clearing.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.device = self.k.device
        self.n_kv_heads = cfg.n_kv_heads
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() hands out low ids first
        self.tables: dict[int, list[int]] = {}  # seq_id -> its block ids, in token order
        self.lengths: dict[int, int] = {}  # seq_id -> tokens stored

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks that hold n_tokens (a partly filled last block counts whole)."""
        return -(-n_tokens // self.block_size)

    def allocate(self, seq_id: int, n_tokens: int) -> bool:
        """Make seq_id own blocks for n_tokens tokens in all (a new sequence, or more room for one that
        has some). False, with nothing taken, when too few blocks are free."""
        table = self.tables.get(seq_id, [])
        need = self.blocks_for(n_tokens) - len(table)
        if need > len(self._free):
            return False
        self.tables[seq_id] = table + [self._free.pop() for _ in range(max(need, 0))]
        self.lengths.setdefault(seq_id, 0)
        return True

    def free(self, seq_id: int) -> None:
        """Give seq_id's blocks back (unknown ids are ignored, so freeing twice is harmless)."""
        self._free.extend(reversed(self.tables.pop(seq_id, [])))
        self.lengths.pop(seq_id, None)

    def capacity(self, seq_id: int) -> int:
        """Tokens seq_id's blocks can hold."""
        return len(self.tables[seq_id]) * self.block_size

    def view(self, seq_ids: list[int]) -> PagedView:
        """The cache= object for one forward pass over these sequences, one row each, in this order."""
        missing = [s for s in seq_ids if s not in self.tables]
        if missing or not seq_ids:
            raise ValueError(f"cannot view sequences {missing or seq_ids}: allocate them first")
        return PagedView(self, list(seq_ids))

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class PagedView:
    """Some sequences of a PagedKVCache as the rows of one forward pass: the interface Transformer expects."""

    def __init__(self, cache: PagedKVCache, seq_ids: list[int]):
        self.cache, self.seq_ids = cache, seq_ids
        self._lengths = [cache.lengths[s] for s in seq_ids]  # Python ints: sizes without device syncs
        self._capacity = [cache.capacity(s) for s in seq_ids]
        self.length = torch.tensor(self._lengths, dtype=torch.long, device=cache.device)  # (B,)
        tables = [cache.tables[s] for s in seq_ids]
        width = max(len(t) for t in tables)
        # Padded with block 0: whatever it holds lies past the row's end, where the mask hides it.
        padded = [t + [0] * (width - len(t)) for t in tables]
        self.table = torch.tensor(padded, dtype=torch.long, device=cache.device)  # (B, max blocks)
        self._heads = torch.arange(cache.n_kv_heads, device=cache.device)[None, :, None]  # (1, H_kv, 1)
        self._checked_t = -1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, H_kv, T, D) at each row's positions length_b .. length_b + T - 1;
        return every row's keys and values (B, H_kv, max(length) + T, D), short rows padded."""
        c, (b, _, t, _) = self.cache, k.shape
        if t != self._checked_t:  # once per forward, not once per layer
            if b != len(self.seq_ids):
                raise ValueError(f"the view holds {len(self.seq_ids)} sequences, the step has {b} rows")
            for s, n, cap in zip(self.seq_ids, self._lengths, self._capacity):
                if n + t > cap:
                    raise ValueError(f"sequence {s} needs {n + t} tokens but its blocks hold {cap}")
            self._checked_t = t
        pos = self.length[:, None] + torch.arange(t, device=k.device)  # (B, T)
        block = self.table.gather(1, pos // c.block_size)  # (B, T): each new token's block
        slot = pos % c.block_size
        k_pool, v_pool = c.k[layer], c.v[layer]  # (N, H_kv, bs, D)
        # Two advanced indices around a slice put their (B, T) dims first: the target is (B, T, H_kv, D).
        k_pool[block, :, slot] = k.transpose(1, 2).to(k_pool.dtype)
        v_pool[block, :, slot] = v.transpose(1, 2).to(v_pool.dtype)
        s = max(self._lengths) + t
        if s == t:  # every row starts empty (a prefill): the keys are exactly this step's, skip the gather
            return k, v
        # One gather for all rows: (B, 1, n) block ids × (1, H_kv, 1) heads index the pool's first two
        # dims → (B, H_kv, n, bs, D), already in attention's order, so flattening is free.
        idx = self.table[:, None, : c.blocks_for(s)]
        keys = k_pool[idx, self._heads].flatten(2, 3)[:, :, :s]  # (B, H_kv, S, D)
        values = v_pool[idx, self._heads].flatten(2, 3)[:, :, :s]
        return keys, values

    def advance(self, t: int) -> None:
        """Called by the model once every layer has stored its T new tokens."""
        self._lengths = [n + t for n in self._lengths]
        self.length = self.length + t
        for s, n in zip(self.seq_ids, self._lengths):
            self.cache.lengths[s] = n
        self._checked_t = -1
