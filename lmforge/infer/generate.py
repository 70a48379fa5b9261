"""Autoregressive generation: prefill the prompt once, then decode one token at a time from the cache."""

from __future__ import annotations

import torch

from lmforge.infer.kv_cache import KVCache
from lmforge.infer.sampling import SamplingParams, process_logits, sample


@torch.inference_mode()
def generate_ids(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    eos_ids: set[int] | None = None,
) -> torch.Tensor:
    """Continue input_ids (1, T) by up to max_new_tokens; stops after an end-of-sequence token.

    Prefill runs the whole prompt through the model once, filling the KV cache; each decode step feeds
    only the token just chosen. Returns the new token ids (N,).
    """
    params = params or SamplingParams(temperature=0)
    if input_ids.shape[0] != 1:
        raise ValueError("generate_ids takes one prompt (batch of 1)")
    cfg = model.config
    cache = KVCache(cfg, 1, input_ids.shape[1] + max_new_tokens, model.embed.weight.dtype, model.device)
    generator = (
        torch.Generator(device=model.device).manual_seed(params.seed) if params.seed is not None else None
    )
    seen = input_ids
    logits = model(input_ids, cache=cache, logits_to_keep=1)[:, -1]  # prefill
    out = []
    for _ in range(max_new_tokens):
        nxt = sample(process_logits(logits, params, seen), params, generator)  # (1,)
        out.append(int(nxt))
        if eos_ids and out[-1] in eos_ids:
            break
        seen = torch.cat([seen, nxt[:, None]], dim=1)
        logits = model(nxt[:, None], cache=cache)[:, -1]  # decode: one token
    return torch.tensor(out, dtype=torch.long)
