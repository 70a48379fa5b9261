"""Prompt-based PEFT: keep the model frozen and learn a few input vectors, or a few keys and values per layer.

Four methods, two ideas. For SmolLM2-135M (dim 576, 30 layers, 3 KV heads × 64) with 20 virtual tokens
they learn 20 × 576 = 11,520 numbers (a soft prompt) or 30 × 2 × 20 × 192 = 230,400 (prefixes).

Soft prompts: n virtual tokens whose embeddings are learned, prepended to the input's embeddings.
- Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): the
  n × D embeddings are the parameters. Initialised from the embeddings of real tokens (a task
  description, or random vocabulary rows), which the paper found to train better than random vectors.
- P-tuning (Liu et al. 2021, "GPT Understands, Too"): the virtual embeddings are the output of a small
  prompt encoder (an MLP, or a bidirectional LSTM then an MLP) over n learned inputs; the encoder
  couples the virtual tokens, which trains more stably than independent vectors. After training only its
  output is needed (save_prompt stores that).
The virtual embeddings live where Hugging Face's inputs_embeds do, so a prompt means what it means in
PEFT (tested against PEFT on Llama and Gemma 3): after the family's embedding scale (Gemma's √D; what
`token_embeddings` returns), before absolute positions are added (GPT-2's learned ones). They take
positions 0 .. n - 1 and the real tokens n .. n + T - 1, exactly as if n real tokens came first (the tests
check that real tokens' embeddings as a soft prompt give the model's logits on those tokens + the input).
We feed them in with a forward hook on `model.embed` that replaces the first n rows of its output (divided
by the scale the model multiplies by next): everything after the lookup — scaling, positions, masks,
RoPE, the KV cache — is the model's own code, unchanged.

Prefixes: learned keys and values (n, H_kv, head_dim) for every layer, which every real token attends to.
- Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): the
  prefixes are reparameterised during training as an MLP (Linear → tanh → Linear) of a smaller learned
  matrix (n × H_kv·head_dim), since optimising them directly was unstable; afterwards only the MLP's output
  is kept.
- P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
  Across Scales and Tasks"): the raw prefixes, no reparameterisation (Hugging Face PEFT's prefix tuning
  with prefix_projection=False). We initialise them with the keys and values of real tokens (Li & Liang's
  "initialise with real words' activations"), so training starts from a real, if arbitrary, prefix.
The prefixes reach attention through the model's `cache` argument: `PrefixCache.update(layer, k, v)`
returns (cat(prefix_k, k), cat(prefix_v, v)) and its `length` counts the n prefix slots, so the model
places the real tokens at positions n .. n + T - 1 and builds the causal mask with an offset of n —
Hugging Face PEFT's convention (the prefix is a past of n tokens; PEFT's prefixes give the same logits
here, Gemma 3's sliding window included, tested). With the keys and values a real
n-token prefix produces, the logits equal the model's on that prefix + the input (tested). Prefix keys are
stored after RoPE (they have no position of their own); on a sliding-window layer the window counts them
as the n earliest tokens, so late tokens of a long input stop seeing them, as with a real prefix.

    tuned = prompt_tuning(model, n_virtual=20, init_ids=tok.encode("Classify the sentiment:"))
    opt = torch.optim.AdamW(tuned.prompt.parameters(), lr=3e-2)
    logits = tuned(input_ids)          # (B, T, V): the real positions only
    save_prompt(tuned, "prompt.safetensors"); tuned = load_prompt(model, "prompt.safetensors")
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lmforge.infer.kv_cache import KVCache
from lmforge.model.export import _atomic_save_file
from lmforge.model.transformer import Transformer

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")


# ---------------------------------------------------------------------------------------------------
# Soft prompts: what the virtual tokens' embeddings are.


@torch.no_grad()
def token_embeddings(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The embeddings (..., D) of token ids as the first block's input sees them before positions: the
    table's rows times the family's embed_scale (rounded to the model dtype first, as the model does)."""
    h = model.embed(ids.to(model.device))
    scale = model.config.embed_scale
    return h * torch.tensor(scale, dtype=h.dtype) if scale != 1.0 else h


class SoftPrompt(nn.Module):
    """Prompt tuning: the virtual embeddings (n, D) are the parameters themselves."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        # float32 even for a bf16 model: Adam's small steps would round away in bf16 (as LoRA does)
        self.embedding = nn.Parameter(init.detach().float().clone())  # (n, D)

    def forward(self) -> torch.Tensor:
        return self.embedding


class PromptEncoder(nn.Module):
    """P-tuning: virtual embeddings (n, D) = MLP(inputs), or MLP(BiLSTM(inputs)), as in PEFT."""

    def __init__(self, n_virtual: int, dim: int, hidden: int | None = None, kind: str = "mlp"):
        super().__init__()
        if kind not in ("mlp", "lstm"):
            raise ValueError(f"prompt encoder kind must be 'mlp' or 'lstm', got {kind!r}")
        hidden = hidden or dim
        self.inputs = nn.Parameter(torch.randn(n_virtual, dim))  # (n, D): PEFT's nn.Embedding init
        if kind == "lstm":
            self.lstm = nn.LSTM(dim, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        else:
            self.lstm = None
            self.mlp = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, dim),
            )

    def forward(self) -> torch.Tensor:
        x = self.inputs  # (n, D)
        if self.lstm is not None:
            x = self.lstm(x[None])[0][0]  # (n, 2 · hidden): each virtual token sees all the others
        return self.mlp(x)  # (n, D)


class PromptTuned(nn.Module):
    """A frozen model with a soft prompt before every input: forward(input_ids (B, T)) → logits (B, T, V).

    attention_mask (B, T') covers the real tokens only (with a cache: all real tokens so far, T' = past + T);
    the virtual ones are always visible. With a KV cache, the first call (an empty cache) stores the
    virtual tokens too, and later calls run the model as is: the prompt is in the cache already."""

    def __init__(self, model: Transformer, prompt: nn.Module, method: str = "prompt_tuning"):
        super().__init__()
        self.model, self.prompt, self.method = model, prompt, method
        model.requires_grad_(False)
        self.n_virtual = prompt().shape[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        b, t = input_ids.shape
        n = self.n_virtual
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        if cache is not None and cache.length > 0:  # decoding: the virtual tokens are cached already
            return self.model(input_ids, attention_mask, cache=cache, logits_to_keep=logits_to_keep)
        embed = self.model.embed
        prompt = self.prompt().to(embed.weight.dtype).expand(b, n, -1)  # (B, n, D)
        scale = self.model.config.embed_scale
        if scale != 1.0:  # the model multiplies the lookup by the scale next: undo it (to rounding)
            prompt = prompt / torch.tensor(scale, dtype=prompt.dtype)

        def put_prompt(module, args, out):  # out (B, n + T, D): the placeholders' rows → the prompt
            return torch.cat([prompt, out[:, n:]], dim=1)

        ids = torch.cat([input_ids.new_zeros(b, n), input_ids], dim=1)  # (B, n + T): n placeholders first
        handle = embed.register_forward_hook(put_prompt)
        try:
            # keep only the real positions' logits (the last T)
            return self.model(ids, attention_mask, cache=cache, logits_to_keep=logits_to_keep or t)
        finally:
            handle.remove()


# ---------------------------------------------------------------------------------------------------
# Prefixes: per-layer keys and values before the real ones.


class PrefixKV(nn.Module):
    """P-tuning v2: the prefixes (L, 2, H_kv, n, head_dim) are the parameters themselves (2: key, value)."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.kv = nn.Parameter(init.detach().float().clone())  # (L, 2, H_kv, n, hd)

    def forward(self) -> torch.Tensor:
        return self.kv


class PrefixEncoder(nn.Module):
    """Prefix tuning: prefixes = MLP(P'), P' (n, H_kv · hd) learned, MLP = Linear → tanh → Linear (PEFT's
    prefix_projection). The output is laid out as PEFT's: per virtual token, (layer, key/value, head, dim)."""

    def __init__(self, n_prefix: int, n_layers: int, n_kv_heads: int, head_dim: int, hidden: int = 512):
        super().__init__()
        self.shape = (n_prefix, n_layers, 2, n_kv_heads, head_dim)
        kv_dim = n_kv_heads * head_dim
        self.inputs = nn.Parameter(torch.randn(n_prefix, kv_dim))  # (n, H_kv · hd)
        self.mlp = nn.Sequential(
            nn.Linear(kv_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_layers * 2 * kv_dim)
        )

    def forward(self) -> torch.Tensor:
        out = self.mlp(self.inputs).view(self.shape)  # (n, L, 2, H_kv, hd)
        return out.permute(1, 2, 3, 0, 4)  # (L, 2, H_kv, n, hd)


class PrefixCache:
    """A cache for `Transformer(..., cache=)` that puts the prefixes before every layer's keys and values.

    prefix (L, 2, H_kv, n, hd). Alone it serves one forward pass (training); around an inner KVCache, which
    stores the real tokens only, it serves a prefill and decode steps. `length` = n + the real tokens so
    far: the model reads it as the offset, so the real tokens take positions n, n + 1, ..."""

    def __init__(self, prefix: torch.Tensor, inner: KVCache | None = None):
        if inner is not None and (getattr(inner, "static", False) or isinstance(inner.length, torch.Tensor)):
            raise ValueError("PrefixCache wraps a KVCache; static and paged caches are not supported")
        self.prefix, self.inner = prefix, inner
        self.n = prefix.shape[3]
        self.seen = 0  # real tokens of the one forward pass, without an inner cache

    @property
    def length(self) -> int:
        return self.n + (self.inner.length if self.inner is not None else self.seen)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H_kv, T, hd) → (B, H_kv, n + past + T, hd): the prefix, the cached past, the new."""
        if self.inner is not None:
            k, v = self.inner.update(layer, k, v)
        elif self.seen:
            raise ValueError("a PrefixCache without an inner KV cache serves one forward pass")
        b = k.shape[0]
        pk, pv = (p.expand(b, -1, -1, -1) for p in self.prefix[layer].to(k.dtype))  # (B, H_kv, n, hd)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, t: int) -> None:
        if self.inner is not None:
            self.inner.advance(t)
        else:
            self.seen += t


class PrefixTuned(nn.Module):
    """A frozen model with learned prefixes in every layer: forward(input_ids (B, T)) → logits (B, T, V).

    attention_mask (B, T') covers the real tokens only (with a cache: all so far); the prefix is always
    visible. cache: a KVCache for the real tokens, to generate (a fresh PrefixCache wraps it per call)."""

    def __init__(self, model: Transformer, prefix: nn.Module, method: str = "p_tuning_v2"):
        super().__init__()
        self.model, self.prefix, self.method = model, prefix, method
        model.requires_grad_(False)
        self.n_prefix = prefix().shape[3]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        if attention_mask is not None:
            ones = attention_mask.new_ones(input_ids.shape[0], self.n_prefix)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        prefix = PrefixCache(self.prefix(), inner=cache)
        return self.model(input_ids, attention_mask, cache=prefix, logits_to_keep=logits_to_keep)


@torch.no_grad()
def prefix_from_tokens(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The keys and values (L, 2, H_kv, n, hd) that the n tokens ids (n,) leave in a KV cache: a prefix
    that makes the model behave as if the text came first (float32)."""
    cfg = model.config
    cache = KVCache(cfg, 1, len(ids), model.embed.weight.dtype, model.device)
    model(ids[None].to(model.device), cache=cache, logits_to_keep=1)
    return torch.stack([cache.k[:, 0], cache.v[:, 0]], dim=1).float()  # (L, 2, H_kv, n, hd)


# ---------------------------------------------------------------------------------------------------
# The four methods.


def _ids(model: Transformer, n: int, init_ids: torch.Tensor | list[int] | None) -> torch.Tensor:
    """n token ids: init_ids repeated or cut to length n (as PEFT does with its init text), else random."""
    if init_ids is None:
        return torch.randint(0, model.config.vocab_size, (n,))
    ids = torch.as_tensor(init_ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("init_ids is empty")
    return ids.repeat(-(-n // ids.numel()))[:n]


def prompt_tuning(
    model: Transformer, n_virtual: int = 20, init_ids: torch.Tensor | list[int] | None = None
) -> PromptTuned:
    """Lester et al.: n learned embeddings, initialised from the embeddings of init_ids (else random tokens)."""
    ids = _ids(model, n_virtual, init_ids)
    return PromptTuned(model, SoftPrompt(token_embeddings(model, ids)), "prompt_tuning")


def p_tuning(
    model: Transformer, n_virtual: int = 20, hidden: int | None = None, encoder: str = "mlp"
) -> PromptTuned:
    """Liu et al. 2021: the n virtual embeddings from a prompt encoder ("mlp" or "lstm") of width hidden."""
    enc = PromptEncoder(n_virtual, model.config.dim, hidden, encoder).to(model.device)
    return PromptTuned(model, enc, "p_tuning")


def prefix_tuning(model: Transformer, n_prefix: int = 20, hidden: int = 512) -> PrefixTuned:
    """Li & Liang: per-layer prefixes from an MLP of width hidden over a learned (n, H_kv · hd) matrix."""
    cfg = model.config
    enc = PrefixEncoder(n_prefix, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, hidden).to(model.device)
    return PrefixTuned(model, enc, "prefix_tuning")


def p_tuning_v2(
    model: Transformer, n_prefix: int = 20, init_ids: torch.Tensor | list[int] | None = None
) -> PrefixTuned:
    """Liu et al. 2022: raw per-layer prefixes, initialised with the keys and values of init_ids (else of
    random tokens)."""
    prefix = prefix_from_tokens(model, _ids(model, n_prefix, init_ids))
    return PrefixTuned(model, PrefixKV(prefix), "p_tuning_v2")


# ---------------------------------------------------------------------------------------------------
# Saving: only what inference needs (the encoders' outputs), in one safetensors file.


def save_prompt(tuned: PromptTuned | PrefixTuned, path: str | os.PathLike) -> Path:
    """Write the learned prompt (n, D) or prefixes (L, 2, H_kv, n, hd) to path, atomically. A P-tuning or
    prefix-tuning encoder is not saved, only its output: what the model needs at inference."""
    path = Path(path)
    if isinstance(tuned, PromptTuned):
        tensors = {"prompt": tuned.prompt().detach().float().contiguous().cpu()}
    else:
        tensors = {"prefix": tuned.prefix().detach().float().contiguous().cpu()}
    _atomic_save_file(tensors, path, {"format": "pt", "method": tuned.method})
    return path


def load_prompt(model: Transformer, path: str | os.PathLike) -> PromptTuned | PrefixTuned:
    """A saved prompt on model: PromptTuned (SoftPrompt) or PrefixTuned (PrefixKV), ready to run or train."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        method = (f.metadata() or {}).get("method")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if method not in METHODS or len(tensors) != 1:
        raise ValueError(f"{path} is not a saved prompt (method {method!r}, tensors {sorted(tensors)})")
    cfg, device = model.config, model.device
    if "prompt" in tensors:
        prompt = tensors["prompt"]
        if prompt.ndim != 2 or prompt.shape[1] != cfg.dim:
            raise ValueError(
                f"{path}: prompt of shape {tuple(prompt.shape)} does not fit a model of dim {cfg.dim}"
            )
        return PromptTuned(model, SoftPrompt(prompt.to(device)), method)
    prefix = tensors.get("prefix")
    want = (cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
    if prefix is None or prefix.ndim != 5 or prefix.shape[:3] + prefix.shape[4:] != want:
        shape = None if prefix is None else tuple(prefix.shape)
        raise ValueError(
            f"{path}: prefix of shape {shape} does not fit the model's (L, 2, H_kv, n, hd) = {want}"
        )
    return PrefixTuned(model, PrefixKV(prefix.to(device)), method)
