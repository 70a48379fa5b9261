"""The KV cache: keep every layer's keys and values so each new token costs one token of work.

Without a cache, generating token n re-runs the whole prefix: O(n²) work for n tokens. Keys and
values of past tokens never change (attention is causal), so we store them once, in tensors allocated
up front for the longest sequence (static shapes: no reallocation while decoding), and each step
computes q, k, v for the new token only and attends over the stored keys. With grouped-query attention
the cache holds only the shared KV heads: SmolLM2's 3 instead of 9 query heads, a third of the memory.
"""

from __future__ import annotations

import torch

from lmforge.model.config import ModelConfig


class KVCache:
    """Keys and values of `length` tokens for every layer, in (B, H_kv, max_len, D) buffers."""

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # tokens stored so far (the same for every row)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H_kv, T, D) after the cached ones; return all (B, H_kv, length + T, D)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens do not fit in {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        """Called by the model once every layer has stored its T new tokens."""
        self.length += t

    def reset(self) -> None:
        self.length = 0

    def crop(self, length: int) -> None:
        """Forget every token after the first `length` (speculative decoding drops rejected drafts).
        The stale keys stay in the buffer but lie past `length`, so no step reads them again."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} tokens to {length}")
        self.length = length

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class StaticKVCache:
    """A KV cache whose every shape is fixed, so a decode step can be compiled into one graph.

    KVCache's length is a Python int and its update returns the first `length` slots: shapes that
    change every step, which torch.compile would have to re-trace (or make symbolic). Here `length` is a
    (B,) tensor, new keys are written with index_put at positions held in that tensor, and update
    returns the whole buffer (B, H_kv, max_len, D); the model masks the unwritten slots (it reads
    `max_len` as the key length, see Transformer.hidden_states). Each layer has its own buffers: a
    compiled graph updates them in place, where writes into slices of one big tensor would be copied.
    Rows may hold different lengths (the mask is built per row).
    """

    static = True

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) tokens stored per row
        self.rows = torch.arange(batch, device=device)[:, None]  # (B, 1): row index for index_put

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at each row's positions length .. length + T - 1; return the whole
        buffers (B, H_kv, max_len, D). Writing past max_len raises an IndexError (in eager mode)."""
        pos = self.length[:, None] + torch.arange(k.shape[2], device=k.device)  # (B, T)
        # advanced indices split by a slice go first: the target view is (B, T, H_kv, D)
        self.k[layer][self.rows, :, pos] = k.transpose(1, 2)
        self.v[layer][self.rows, :, pos] = v.transpose(1, 2)
        return self.k[layer], self.v[layer]

    def advance(self, t: int) -> None:
        self.length.add_(t)  # in place: a compiled step's update is visible to the next call

    def reset(self) -> None:
        self.length.zero_()

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.k + self.v)
